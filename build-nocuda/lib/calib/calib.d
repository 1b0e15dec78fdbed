build-nocuda/lib/calib/calib.o: lib/calib/calib.c lib/calib/calib.h \
 lib/calib/../engine.h lib/calib/../common/common.h include/ampr.h \
 lib/calib/../common/pool.h lib/calib/../common/common.h \
 lib/calib/../fallback/fallback.h \
 lib/calib/../fallback/../common/common.h lib/calib/../forward/tp.h \
 lib/model/model.h lib/model/../common/common.h \
 lib/model/../tokenizer/tokenizer.h \
 lib/model/../tokenizer/../common/common.h lib/calib/../kv/kv.h \
 lib/calib/../kv/../common/common.h lib/calib/../metrics/metrics.h \
 lib/calib/../metrics/../common/common.h lib/calib/../model/model.h \
 lib/calib/../quant/quant.h lib/calib/../quant/../common/common.h \
 lib/calib/../quant/../common/pool.h lib/calib/../router/router.h \
 lib/calib/../router/../common/common.h
lib/calib/calib.h:
lib/calib/../engine.h:
lib/calib/../common/common.h:
include/ampr.h:
lib/calib/../common/pool.h:
lib/calib/../common/common.h:
lib/calib/../fallback/fallback.h:
lib/calib/../fallback/../common/common.h:
lib/calib/../forward/tp.h:
lib/model/model.h:
lib/model/../common/common.h:
lib/model/../tokenizer/tokenizer.h:
lib/model/../tokenizer/../common/common.h:
lib/calib/../kv/kv.h:
lib/calib/../kv/../common/common.h:
lib/calib/../metrics/metrics.h:
lib/calib/../metrics/../common/common.h:
lib/calib/../model/model.h:
lib/calib/../quant/quant.h:
lib/calib/../quant/../common/common.h:
lib/calib/../quant/../common/pool.h:
lib/calib/../router/router.h:
lib/calib/../router/../common/common.h:
