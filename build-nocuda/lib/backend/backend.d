build-nocuda/lib/backend/backend.o: lib/backend/backend.c \
 lib/backend/backend.h lib/backend/../engine.h \
 lib/backend/../common/common.h include/ampr.h \
 lib/backend/../common/pool.h lib/backend/../common/common.h \
 lib/backend/../fallback/fallback.h \
 lib/backend/../fallback/../common/common.h lib/backend/../forward/tp.h \
 lib/model/model.h lib/model/../common/common.h \
 lib/model/../tokenizer/tokenizer.h \
 lib/model/../tokenizer/../common/common.h lib/backend/../kv/kv.h \
 lib/backend/../kv/../common/common.h lib/backend/../metrics/metrics.h \
 lib/backend/../metrics/../common/common.h lib/backend/../model/model.h \
 lib/backend/../quant/quant.h lib/backend/../quant/../common/common.h \
 lib/backend/../quant/../common/pool.h lib/backend/../router/router.h \
 lib/backend/../router/../common/common.h
lib/backend/backend.h:
lib/backend/../engine.h:
lib/backend/../common/common.h:
include/ampr.h:
lib/backend/../common/pool.h:
lib/backend/../common/common.h:
lib/backend/../fallback/fallback.h:
lib/backend/../fallback/../common/common.h:
lib/backend/../forward/tp.h:
lib/model/model.h:
lib/model/../common/common.h:
lib/model/../tokenizer/tokenizer.h:
lib/model/../tokenizer/../common/common.h:
lib/backend/../kv/kv.h:
lib/backend/../kv/../common/common.h:
lib/backend/../metrics/metrics.h:
lib/backend/../metrics/../common/common.h:
lib/backend/../model/model.h:
lib/backend/../quant/quant.h:
lib/backend/../quant/../common/common.h:
lib/backend/../quant/../common/pool.h:
lib/backend/../router/router.h:
lib/backend/../router/../common/common.h:
