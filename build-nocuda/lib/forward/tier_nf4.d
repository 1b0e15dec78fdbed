build-nocuda/lib/forward/tier_nf4.o: lib/forward/tier_nf4.c \
 lib/forward/../engine.h lib/forward/../common/common.h include/ampr.h \
 lib/forward/../common/pool.h lib/forward/../common/common.h \
 lib/forward/../fallback/fallback.h \
 lib/forward/../fallback/../common/common.h lib/forward/../forward/tp.h \
 lib/model/model.h lib/model/../common/common.h \
 lib/model/../tokenizer/tokenizer.h \
 lib/model/../tokenizer/../common/common.h lib/forward/../kv/kv.h \
 lib/forward/../kv/../common/common.h lib/forward/../metrics/metrics.h \
 lib/forward/../metrics/../common/common.h lib/forward/../model/model.h \
 lib/forward/../quant/quant.h lib/forward/../quant/../common/common.h \
 lib/forward/../quant/../common/pool.h lib/forward/../router/router.h \
 lib/forward/../router/../common/common.h
lib/forward/../engine.h:
lib/forward/../common/common.h:
include/ampr.h:
lib/forward/../common/pool.h:
lib/forward/../common/common.h:
lib/forward/../fallback/fallback.h:
lib/forward/../fallback/../common/common.h:
lib/forward/../forward/tp.h:
lib/model/model.h:
lib/model/../common/common.h:
lib/model/../tokenizer/tokenizer.h:
lib/model/../tokenizer/../common/common.h:
lib/forward/../kv/kv.h:
lib/forward/../kv/../common/common.h:
lib/forward/../metrics/metrics.h:
lib/forward/../metrics/../common/common.h:
lib/forward/../model/model.h:
lib/forward/../quant/quant.h:
lib/forward/../quant/../common/common.h:
lib/forward/../quant/../common/pool.h:
lib/forward/../router/router.h:
lib/forward/../router/../common/common.h:
