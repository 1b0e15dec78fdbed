build-nocuda/lib/quant/kern_avx512bf16.o: lib/quant/kern_avx512bf16.c \
 lib/quant/quant_impl.h lib/quant/quant.h lib/quant/../common/common.h \
 include/ampr.h lib/quant/../common/pool.h lib/quant/../common/common.h
lib/quant/quant_impl.h:
lib/quant/quant.h:
lib/quant/../common/common.h:
include/ampr.h:
lib/quant/../common/pool.h:
lib/quant/../common/common.h:
