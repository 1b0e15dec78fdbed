# libampr -- build, test, install.
#
#   make              libampr.a, libampr.so, the `ampr` CLI (build/)
#   make test         cmocka unit and end-to-end tests, then check-promtool
#   make check-promtool  `ampr run --metrics` through `promtool check metrics`
#                     (skips when promtool, Debian package prometheus, is absent)
#   make check-asan   the tests under AddressSanitizer + UBSan (build-asan/)
#   make check-valgrind  the tests under valgrind memcheck
#   make check-emu    the CUDA backend on the CPU emulation of CUDA (tests/emu): the GPU
#                     op checks, the end-to-end runs of tests/gpu/check.sh, device
#                     failure injection, the unit tests with the emulated GPU present,
#                     and the op checks again with each block's threads run in the
#                     other order and every off-by-default kernel switch on, and
#                     the GPU check's benchmarks (--bench, --gemv) on small shapes
#                     (build-emu/); check-emu-asan: the device tests and
#                     the failure injection on it under ASan + UBSan (build-emu-asan/)
#   make run          install missing packages, build, generate from the default model
#   make bench        side-by-side tier benchmark
#   make install      PREFIX=/usr/local DESTDIR=
#
# CUDA code in cuda/ is compiled when nvcc is found (override with CUDA=0/1).

VERSION_MAJOR := $(shell sed -n 's/^\#define AMPR_VERSION_MAJOR \([0-9]*\).*/\1/p' include/ampr.h)
VERSION_MINOR := $(shell sed -n 's/^\#define AMPR_VERSION_MINOR \([0-9]*\).*/\1/p' include/ampr.h)
VERSION_PATCH := $(shell sed -n 's/^\#define AMPR_VERSION_PATCH \([0-9]*\).*/\1/p' include/ampr.h)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
DESTDIR ?=

CC ?= cc
V ?= 0
Q := $(if $(filter 1,$(V)),,@)
B ?= build
OPT ?= -O2
SAN ?=
WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wno-unused-parameter -Wvla -Wformat=2
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) -fPIC -fvisibility=hidden \
               -pthread -Iinclude -Ilib $(SAN)
LIBS := -ljansson -lpcre2-8 -lpthread -lm
LDFLAGS_SAN := $(SAN)

# SIMD kernels live in files named *_avx2.c / *_avx512.c and are only called
# after a runtime CPU check (lib/quant/dispatch).
AVX2_FLAGS := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c

NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(origin CUDA),undefined)
  CUDA := $(if $(NVCC),1,0)
endif

LIB_SRCS := $(sort $(wildcard lib/*.c lib/*/*.c))
LIB_OBJS := $(patsubst %.c,$(B)/%.o,$(LIB_SRCS))
CFLAGS_BASE += -DAMPR_HAVE_CUDA=$(CUDA)

# `make` alone builds the library and the CLI (the stamp rule below comes first).
.DEFAULT_GOAL := all

# Switching CUDA=0/1 in one build folder rebuilds everything (the flag changes code).
CONFIG_STAMP := $(B)/.config-cuda$(CUDA)
$(CONFIG_STAMP):
	@mkdir -p $(B)
	@rm -f $(B)/.config-cuda*
	@touch $@
$(LIB_OBJS): $(CONFIG_STAMP)

# The CUDA backend (cuda/cuda.mk sets CUDA_OBJS and CUDA_LIBS).
ifeq ($(CUDA),1)
include cuda/cuda.mk
LIB_OBJS += $(CUDA_OBJS)
LIBS += $(CUDA_LIBS)
endif
TEST_SRCS := $(sort $(wildcard tests/test_*.c))
TEST_BINS := $(patsubst tests/%.c,$(B)/tests/%,$(TEST_SRCS))
TEST_SUPPORT := tests/testutil.c
TOOL_SRCS := $(sort $(wildcard tools/*.c))

STATIC := $(B)/libampr.a
SONAME := libampr.so.$(VERSION_MAJOR)
SHARED := $(B)/libampr.so.$(VERSION)
CLI := $(B)/ampr

.PHONY: all lib test check-promtool check-asan check-valgrind check-emu check-emu-asan run bench install uninstall clean examples

all: lib $(CLI)
lib: $(STATIC) $(SHARED) $(B)/ampr.pc

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS_BASE) $(if $(findstring _avx512,$<),$(AVX512_FLAGS) $(if $(findstring _avx512bf16,$<),-mavx512bf16),$(if $(findstring _avx2,$<),$(AVX2_FLAGS))) -MMD -MP -c $< -o $@

$(STATIC): $(LIB_OBJS)
	@rm -f $@
	@$(if $(Q),echo "  AR      $@")
	$(Q)ar rcs $@ $^

$(SHARED): $(LIB_OBJS) lib/ampr.map
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/ampr.map -Wl,--no-undefined \
	  $(LDFLAGS_SAN) -o $@ $(LIB_OBJS) $(LIBS)
	ln -sf libampr.so.$(VERSION) $(B)/$(SONAME)
	ln -sf $(SONAME) $(B)/libampr.so

$(B)/ampr.pc: pkgconfig/ampr.pc.in include/ampr.h
	@mkdir -p $(B)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@LIBS_PRIVATE@|$(CUDA_LIBS)|g' $< > $@

$(CLI): $(TOOL_SRCS) tools/tools.h $(STATIC)
	@mkdir -p $(B)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS_BASE) -Itools -o $@ $(TOOL_SRCS) $(STATIC) $(LIBS) $(LDFLAGS_SAN)

$(B)/tests/%: tests/%.c $(TEST_SUPPORT) tests/testutil.h $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS_BASE) -Wno-missing-prototypes -o $@ $< $(TEST_SUPPORT) $(STATIC) -lcmocka $(LIBS) $(LDFLAGS_SAN)

# Tests find ../shared (real models, goldens) through AMPR_SHARED; tests that
# need it skip themselves when it is absent.
AMPR_SHARED ?= $(abspath ../shared)
TEST_ENV := AMPR_SHARED=$(AMPR_SHARED) AMPR_CLI=$(abspath $(CLI)) AMPR_TMP=$(abspath $(B))/tmp \
            AMPR_BUILD=$(abspath $(B))
# Shell tests (examples, pkg-config consumers, ABI, docs, Python, promtool)
# run after the cmocka binaries; run_tests.sh adds up both.
TEST_SCRIPTS := $(sort $(wildcard tests/test_*.sh))
test: $(TEST_BINS) $(CLI) lib examples
	@mkdir -p $(B)/tmp
	@$(TEST_ENV) tests/run_tests.sh "$(TEST_RUNNER)" $(TEST_BINS) $(TEST_SCRIPTS)

check-promtool: $(CLI)
	@mkdir -p $(B)/tmp
	@$(TEST_ENV) tests/test_promtool.sh

# The sanitizer and valgrind runs build the CPU library only (CUDA code cannot run here).
check-asan:
	$(MAKE) CUDA=0 B=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

check-valgrind:
	AMPR_TEST_SERIALIZED=1 $(MAKE) CUDA=0 B=build-vg OPT=-O1 TEST_RUNNER="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect -q" test

EMU_MODEL := $(AMPR_SHARED)/models/stories260K/stories260K.gguf
# $(call emu_inject,BUILD,MODES): tests/emu/oom.sh's runs on BUILD/ampr
EMU_INJECT := "alloc" "handle" "alloc tp" "handle tp"
emu_inject = if [ -f $(EMU_MODEL) ]; then for m in $(2); do \
	   bash tests/emu/oom.sh $(1)/ampr $(EMU_MODEL) $$m || exit 1; done; \
	 else echo "no $(EMU_MODEL): device failure injection skipped"; fi
check-emu:
	bash tests/gpu/check.sh --emu
	@$(call emu_inject,build-emu,$(EMU_INJECT) "alloc procs" "handle procs")
	$(MAKE) CUDA=1 CUDA_EMU=1 B=build-emu test
	AMPR_EMU_DEVICES=2 AMPR_SHARED=$(AMPR_SHARED) build-emu/tests/test_device # one rank per process: 2 GPUs
	AMPR_EMU_ORDER=reverse bash tests/gpu/check.sh --emu --quick --switches
	AMPR_CHECK_BENCH_SMALL=1 build-emu/tests/emu/check --bench
	AMPR_CHECK_BENCH_SMALL=1 build-emu/tests/emu/check --gemv

# The same emulation under ASan + UBSan (+ LSan): test_device with its device
# allocation failures, and the failure injection (not in CI; the op checks,
# ~10 minutes under ASan, run there by hand: tests/emu/README.md)
EMU_SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
check-emu-asan:
	$(MAKE) CUDA=1 CUDA_EMU=1 B=build-emu-asan OPT=-O1 SAN="$(EMU_SAN)" all build-emu-asan/tests/test_device
	AMPR_EMU_DEVICES=2 AMPR_SHARED=$(AMPR_SHARED) build-emu-asan/tests/test_device
	@$(call emu_inject,build-emu-asan,$(EMU_INJECT)) # not "procs": its python loads the library

run:
	@tools/install-deps.sh
	$(MAKE) all
	@tools/run_default.sh $(CLI)

$(B)/bench_quant: tests/bench/bench_quant.c $(STATIC)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS_BASE) -O2 -Wno-missing-prototypes -o $@ $< $(STATIC) $(LIBS)

# Side-by-side tier benchmark (BENCH_SHAPE=tiny|small|1b) and the kernel microbenchmark.
BENCH_SHAPE ?= small
bench: all $(B)/bench_quant
	$(CLI) bench --shape $(BENCH_SHAPE)
	$(B)/bench_quant
	$(B)/bench_quant logits

install: lib $(CLI)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 644 include/ampr.h $(DESTDIR)$(INCLUDEDIR)/ampr.h
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/libampr.a
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/libampr.so.$(VERSION)
	ln -sf libampr.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libampr.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@LIBS_PRIVATE@|$(CUDA_LIBS)|g' pkgconfig/ampr.pc.in \
	    > $(DESTDIR)$(LIBDIR)/pkgconfig/ampr.pc
	chmod 644 $(DESTDIR)$(LIBDIR)/pkgconfig/ampr.pc
	install -m 755 $(CLI) $(DESTDIR)$(BINDIR)/ampr

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/ampr.h $(DESTDIR)$(LIBDIR)/libampr.* \
	  $(DESTDIR)$(LIBDIR)/pkgconfig/ampr.pc $(DESTDIR)$(BINDIR)/ampr

clean:
	rm -rf build build-asan build-vg build-fuzz build-tsan build-prebuild build-emu build-emu-asan

include examples/examples.mk
include tests/fuzz/fuzz.mk
-include $(LIB_OBJS:.o=.d)
