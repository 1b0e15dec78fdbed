build-nocuda/lib/common/status.o: lib/common/status.c include/ampr.h \
 lib/common/status.h
include/ampr.h:
lib/common/status.h:
