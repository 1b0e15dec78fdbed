build-nocuda/lib/common/half.o: lib/common/half.c lib/common/common.h \
 include/ampr.h
lib/common/common.h:
include/ampr.h:
