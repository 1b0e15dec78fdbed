build-nocuda/lib/model/gguf.o: lib/model/gguf.c lib/model/model_int.h \
 lib/model/model.h lib/model/../common/common.h include/ampr.h \
 lib/model/../tokenizer/tokenizer.h \
 lib/model/../tokenizer/../common/common.h
lib/model/model_int.h:
lib/model/model.h:
lib/model/../common/common.h:
include/ampr.h:
lib/model/../tokenizer/tokenizer.h:
lib/model/../tokenizer/../common/common.h:
