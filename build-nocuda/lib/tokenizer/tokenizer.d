build-nocuda/lib/tokenizer/tokenizer.o: lib/tokenizer/tokenizer.c \
 lib/tokenizer/tok_internal.h lib/tokenizer/tokenizer.h \
 lib/tokenizer/../common/common.h include/ampr.h
lib/tokenizer/tok_internal.h:
lib/tokenizer/tokenizer.h:
lib/tokenizer/../common/common.h:
include/ampr.h:
