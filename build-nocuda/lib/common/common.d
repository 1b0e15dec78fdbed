build-nocuda/lib/common/common.o: lib/common/common.c lib/common/common.h \
 include/ampr.h
lib/common/common.h:
include/ampr.h:
