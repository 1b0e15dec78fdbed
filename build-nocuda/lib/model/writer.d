build-nocuda/lib/model/writer.o: lib/model/writer.c lib/model/model_int.h \
 lib/model/model.h lib/model/../common/common.h include/ampr.h \
 lib/model/../tokenizer/tokenizer.h \
 lib/model/../tokenizer/../common/common.h lib/model/../common/pool.h \
 lib/model/../common/common.h
lib/model/model_int.h:
lib/model/model.h:
lib/model/../common/common.h:
include/ampr.h:
lib/model/../tokenizer/tokenizer.h:
lib/model/../tokenizer/../common/common.h:
lib/model/../common/pool.h:
lib/model/../common/common.h:
