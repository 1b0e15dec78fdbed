build-nocuda/lib/config.o: lib/config.c lib/engine.h lib/common/common.h \
 include/ampr.h lib/common/pool.h lib/common/common.h \
 lib/fallback/fallback.h lib/fallback/../common/common.h lib/forward/tp.h \
 lib/model/model.h lib/model/../common/common.h \
 lib/model/../tokenizer/tokenizer.h \
 lib/model/../tokenizer/../common/common.h lib/kv/kv.h \
 lib/kv/../common/common.h lib/metrics/metrics.h \
 lib/metrics/../common/common.h lib/model/model.h lib/quant/quant.h \
 lib/quant/../common/common.h lib/quant/../common/pool.h \
 lib/router/router.h lib/router/../common/common.h
lib/engine.h:
lib/common/common.h:
include/ampr.h:
lib/common/pool.h:
lib/common/common.h:
lib/fallback/fallback.h:
lib/fallback/../common/common.h:
lib/forward/tp.h:
lib/model/model.h:
lib/model/../common/common.h:
lib/model/../tokenizer/tokenizer.h:
lib/model/../tokenizer/../common/common.h:
lib/kv/kv.h:
lib/kv/../common/common.h:
lib/metrics/metrics.h:
lib/metrics/../common/common.h:
lib/model/model.h:
lib/quant/quant.h:
lib/quant/../common/common.h:
lib/quant/../common/pool.h:
lib/router/router.h:
lib/router/../common/common.h:
