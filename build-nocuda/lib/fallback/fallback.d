build-nocuda/lib/fallback/fallback.o: lib/fallback/fallback.c \
 lib/fallback/fallback.h lib/fallback/../common/common.h include/ampr.h \
 lib/fallback/logits.h
lib/fallback/fallback.h:
lib/fallback/../common/common.h:
include/ampr.h:
lib/fallback/logits.h:
