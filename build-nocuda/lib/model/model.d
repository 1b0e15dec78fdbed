build-nocuda/lib/model/model.o: lib/model/model.c lib/model/model_int.h \
 lib/model/model.h lib/model/../common/common.h include/ampr.h \
 lib/model/../tokenizer/tokenizer.h \
 lib/model/../tokenizer/../common/common.h lib/model/../quant/quant.h \
 lib/model/../quant/../common/common.h \
 lib/model/../quant/../common/pool.h \
 lib/model/../quant/../common/common.h
lib/model/model_int.h:
lib/model/model.h:
lib/model/../common/common.h:
include/ampr.h:
lib/model/../tokenizer/tokenizer.h:
lib/model/../tokenizer/../common/common.h:
lib/model/../quant/quant.h:
lib/model/../quant/../common/common.h:
lib/model/../quant/../common/pool.h:
lib/model/../quant/../common/common.h:
