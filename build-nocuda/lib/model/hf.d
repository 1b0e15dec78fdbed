build-nocuda/lib/model/hf.o: lib/model/hf.c lib/model/model_int.h \
 lib/model/model.h lib/model/../common/common.h include/ampr.h \
 lib/model/../tokenizer/tokenizer.h \
 lib/model/../tokenizer/../common/common.h
lib/model/model_int.h:
lib/model/model.h:
lib/model/../common/common.h:
include/ampr.h:
lib/model/../tokenizer/tokenizer.h:
lib/model/../tokenizer/../common/common.h:
