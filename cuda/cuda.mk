# cuda/cuda.mk -- the CUDA backend, included by the top-level Makefile when
# nvcc is found (CUDA=1). Uses $(B) and $(NVCC) from there.
#
# Objects: $(CUDA_OBJS) (add them to the library); link flags: $(CUDA_LIBS).
# Machine code for sm_80 (A100) and sm_90a (H100/H200), plus compute_90 PTX
# so newer GPUs can JIT it. NCCL is used when its header is found.

CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_GENCODE ?= -gencode=arch=compute_80,code=sm_80 \
                -gencode=arch=compute_90a,code=sm_90a \
                -gencode=arch=compute_90,code=compute_90
# NCCL: CUDA's or the system's, or NCCL_HOME=DIR with include/nccl.h and
# lib/libnccl.so.2 (e.g. the nvidia-nccl Python wheel's nvidia/nccl folder).
NCCL_HOME ?=
comma := ,
NCCL_HOME_OK := $(if $(NCCL_HOME),$(if $(wildcard $(NCCL_HOME)/include/nccl.h),$(if $(wildcard $(NCCL_HOME)/lib/libnccl.so.2),$(NCCL_HOME))))
CUDA_HAVE_NCCL := $(if $(NCCL_HOME_OK)$(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h),1,0)
NCCL_LINK := $(if $(NCCL_HOME_OK),$(NCCL_HOME_OK)/lib/libnccl.so.2 -Wl$(comma)-rpath$(comma)$(NCCL_HOME_OK)/lib,-lnccl)
NVCC_FLAGS := -std=c++17 -O3 -g -Iinclude -Ilib -Icuda $(CUDA_GENCODE) \
              -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra -Werror all-warnings \
              $(if $(filter 1,$(CUDA_HAVE_NCCL)),-DAMPR_HAVE_NCCL $(if $(NCCL_HOME_OK),-I$(NCCL_HOME_OK)/include))

CUDA_SRCS := $(sort $(wildcard cuda/*.cu))
CUDA_OBJS := $(patsubst %.cu,$(B)/%.o,$(CUDA_SRCS))

# every header cuda/ includes from lib/ (ampr_cuda.h, cuda_err.h): structs and
# constants there are shared with the C side
CUDA_HDRS := cuda/ampr_cuda.h cuda/cuda_err.h include/ampr.h lib/common/common.h lib/quant/quant.h \
             lib/sampler/sampler.h lib/fallback/logits.h lib/forward/tp.h lib/model/model.h

ifeq ($(CUDA_EMU),1)
# CUDA_EMU=1 (`make check-emu`): the same sources run on the CPU. tests/emu/lower.py
# rewrites the launches, the host C++ compiler builds the result against
# tests/emu/include/ (the runtime, cuBLASLt and NCCL of tests/emu/cuda_emu.cc).
# No FMA contraction (the host reference's rule); no strict aliasing (CUDA code
# reinterprets registers through pointer casts, as nvcc allows).
CXX ?= g++
EMU_HDRS := $(wildcard tests/emu/*.h tests/emu/include/*.h) tests/emu/lower.py
EMU_CXXFLAGS := -std=c++17 -g $(OPT) -fPIC -fvisibility=hidden -ffp-contract=off -fno-strict-aliasing -pthread \
                -Wall -Wextra -Werror -Wno-unused-parameter -Wno-unused-function -Wno-unknown-pragmas \
                -Itests/emu/include -Iinclude -Ilib -Icuda -DAMPR_HAVE_NCCL $(SAN)
CUDA_OBJS += $(B)/tests/emu/cuda_emu.o
CUDA_LIBS := -lstdc++

$(B)/cuda/%.o: cuda/%.cu $(CUDA_HDRS) $(EMU_HDRS)
	@mkdir -p $(dir $@)
	python3 tests/emu/lower.py $< $(B)/cuda/$*.cc
	$(CXX) $(EMU_CXXFLAGS) -c $(B)/cuda/$*.cc -o $@

$(B)/tests/emu/cuda_emu.o: tests/emu/cuda_emu.cc $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

# tests/gpu/check.cu, emulated
$(B)/tests/emu/check: tests/gpu/check.cu $(B)/libampr.a $(EMU_HDRS)
	@mkdir -p $(dir $@)
	python3 tests/emu/lower.py $< $(B)/tests/emu/check.cc
	$(CXX) $(EMU_CXXFLAGS) -o $@ $(B)/tests/emu/check.cc $(B)/libampr.a $(LIBS)
else
# nvcc host code needs the C++ runtime (static-init guards, personality)
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart -lcublasLt $(if $(filter 1,$(CUDA_HAVE_NCCL)),$(NCCL_LINK)) -lstdc++

$(B)/cuda/%.o: cuda/%.cu $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@
endif
