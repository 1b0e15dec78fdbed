build-nocuda/lib/kv/kv.o: lib/kv/kv.c lib/kv/kv.h \
 lib/kv/../common/common.h include/ampr.h
lib/kv/kv.h:
lib/kv/../common/common.h:
include/ampr.h:
