build-nocuda/lib/fallback/logits.o: lib/fallback/logits.c \
 lib/fallback/logits.h lib/fallback/../common/common.h include/ampr.h \
 lib/fallback/fallback.h lib/fallback/../quant/quant.h \
 lib/fallback/../quant/../common/common.h \
 lib/fallback/../quant/../common/pool.h \
 lib/fallback/../quant/../common/common.h
lib/fallback/logits.h:
lib/fallback/../common/common.h:
include/ampr.h:
lib/fallback/fallback.h:
lib/fallback/../quant/quant.h:
lib/fallback/../quant/../common/common.h:
lib/fallback/../quant/../common/pool.h:
lib/fallback/../quant/../common/common.h:
