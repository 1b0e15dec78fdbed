build-nocuda/lib/quant/float.o: lib/quant/float.c lib/quant/quant_impl.h \
 lib/quant/quant.h lib/quant/../common/common.h include/ampr.h \
 lib/quant/../common/pool.h lib/quant/../common/common.h
lib/quant/quant_impl.h:
lib/quant/quant.h:
lib/quant/../common/common.h:
include/ampr.h:
lib/quant/../common/pool.h:
lib/quant/../common/common.h:
