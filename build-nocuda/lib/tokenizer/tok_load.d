build-nocuda/lib/tokenizer/tok_load.o: lib/tokenizer/tok_load.c \
 lib/tokenizer/tok_internal.h lib/tokenizer/tokenizer.h \
 lib/tokenizer/../common/common.h include/ampr.h
lib/tokenizer/tok_internal.h:
lib/tokenizer/tokenizer.h:
lib/tokenizer/../common/common.h:
include/ampr.h:
