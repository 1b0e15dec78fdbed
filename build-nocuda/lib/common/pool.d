build-nocuda/lib/common/pool.o: lib/common/pool.c lib/common/pool.h \
 lib/common/common.h include/ampr.h
lib/common/pool.h:
lib/common/common.h:
include/ampr.h:
