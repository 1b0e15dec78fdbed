build-nocuda/lib/metrics/metrics.o: lib/metrics/metrics.c \
 lib/metrics/metrics.h lib/metrics/../common/common.h include/ampr.h
lib/metrics/metrics.h:
lib/metrics/../common/common.h:
include/ampr.h:
