build-nocuda/lib/sampler/sampler.o: lib/sampler/sampler.c \
 lib/sampler/sampler.h lib/sampler/../common/common.h include/ampr.h \
 lib/sampler/../fallback/logits.h \
 lib/sampler/../fallback/../common/common.h
lib/sampler/sampler.h:
lib/sampler/../common/common.h:
include/ampr.h:
lib/sampler/../fallback/logits.h:
lib/sampler/../fallback/../common/common.h:
