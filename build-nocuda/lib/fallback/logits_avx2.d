build-nocuda/lib/fallback/logits_avx2.o: lib/fallback/logits_avx2.c \
 lib/fallback/logits.h lib/fallback/../common/common.h include/ampr.h
lib/fallback/logits.h:
lib/fallback/../common/common.h:
include/ampr.h:
