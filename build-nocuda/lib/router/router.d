build-nocuda/lib/router/router.o: lib/router/router.c lib/router/router.h \
 lib/router/../common/common.h include/ampr.h
lib/router/router.h:
lib/router/../common/common.h:
include/ampr.h:
