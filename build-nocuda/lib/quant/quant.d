build-nocuda/lib/quant/quant.o: lib/quant/quant.c lib/quant/quant_impl.h \
 lib/quant/quant.h lib/quant/../common/common.h include/ampr.h \
 lib/quant/../common/pool.h lib/quant/../common/common.h
lib/quant/quant_impl.h:
lib/quant/quant.h:
lib/quant/../common/common.h:
include/ampr.h:
lib/quant/../common/pool.h:
lib/quant/../common/common.h:
