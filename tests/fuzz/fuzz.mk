# tests/fuzz/fuzz.mk -- libFuzzer targets and the ThreadSanitizer run.
# Included from the top-level Makefile (at its end):  include tests/fuzz/fuzz.mk
# (or used as  make -f Makefile -f tests/fuzz/fuzz.mk fuzz).
#
#   make fuzz                       build every tests/fuzz/fuzz_*.c into build-fuzz/fuzz/
#                                   (library with -fsanitize=fuzzer-no-link,address,undefined, clang)
#   make fuzz-run FUZZ_SECONDS=60   run each target for FUZZ_SECONDS (-max_total_time)
#   make fuzz-ci                    the short pass for CI (FUZZ_SECONDS=20)
#   make check-tsan                 test_stress and test_api under ThreadSanitizer (build-tsan/)
#
# Seeds: tests/fuzz/corpus/<target>/ (small, committed) plus large real files from
# $(AMPR_SHARED) copied into the working corpus build-fuzz/corpus/<target>/ at run time.
# Crash, leak, timeout and OOM inputs are written to build-fuzz/crash/<target>/ and fail
# the run (slow units are only reported).

ifndef AMPR_FUZZ_MK
AMPR_FUZZ_MK := 1

FUZZ_CC ?= clang
FUZZ_B ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_SAN := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_MAKE := $(MAKE) -f $(firstword $(MAKEFILE_LIST)) -f tests/fuzz/fuzz.mk
FUZZ_SHARED ?= $(abspath $(or $(AMPR_SHARED),../shared))
# allocator_may_return_null: a failed huge allocation is an input the library must
# answer with AMPR_ERR_NOMEM, not a crash of the harness.
FUZZ_ENV := AMPR_SHARED=$(FUZZ_SHARED) ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# Large seeds taken from the shared data by path (not copied into the repository).
FUZZ_BIG_fuzz_gguf := models/stories260K/stories260K.gguf tokenizers/llama2/ggml-vocab-llama-spm.gguf
FUZZ_BIG_fuzz_tokenizer_json := tokenizers/phi3-mini-llama2-vocab/tokenizer.json tokenizers/gpt2/tokenizer.json

# -max_len per target (inputs beyond it are cut by libFuzzer).
FUZZ_MAXLEN_fuzz_gguf := 2000000
FUZZ_MAXLEN_fuzz_tokenizer_json := 2000000
FUZZ_MAXLEN_fuzz_safetensors := 200000
FUZZ_MAXLEN_fuzz_llama2c_tok := 20000

.PHONY: fuzz fuzz-bins fuzz-run fuzz-ci check-tsan clean-fuzz

fuzz:
	+$(FUZZ_MAKE) CUDA=0 CC=$(FUZZ_CC) B=$(FUZZ_B) OPT=-O1 SAN="$(FUZZ_SAN)" fuzz-bins

fuzz-bins: $(patsubst %,$(B)/fuzz/%,$(FUZZ_TARGETS))

$(B)/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz_util.h $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS_BASE) -fsanitize=fuzzer -Wno-missing-prototypes -Wno-unused-function \
	  -o $@ $< $(STATIC) $(LIBS) $(LDFLAGS_SAN)

# One target: fresh working corpus = committed seeds + big shared seeds, then fuzz.
fuzz-run: fuzz
	@set -e; for t in $(FUZZ_TARGETS); do \
	  if [ $$t = fuzz_tok_encode ] && [ ! -f $(FUZZ_SHARED)/models/stories260K/stories260K.gguf ]; then \
	    echo "== $$t skipped: no $(FUZZ_SHARED)/models/stories260K"; continue; fi; \
	  w=$(FUZZ_B)/corpus/$$t; c=$(FUZZ_B)/crash/$$t; mkdir -p $$w $$c; \
	  for s in $$(case $$t in fuzz_gguf) echo "$(FUZZ_BIG_fuzz_gguf)";; \
	      fuzz_tokenizer_json) echo "$(FUZZ_BIG_fuzz_tokenizer_json)";; \
	      esac); do \
	    if [ -f $(FUZZ_SHARED)/$$s ]; then cp -f $(FUZZ_SHARED)/$$s $$w/big-$$(echo $$s | tr / _); fi; \
	  done; \
	  case $$t in fuzz_gguf) ml=$(FUZZ_MAXLEN_fuzz_gguf);; fuzz_tokenizer_json) ml=$(FUZZ_MAXLEN_fuzz_tokenizer_json);; \
	    fuzz_safetensors) ml=$(FUZZ_MAXLEN_fuzz_safetensors);; fuzz_llama2c_tok) ml=$(FUZZ_MAXLEN_fuzz_llama2c_tok);; \
	    *) ml=8192;; esac; \
	  echo "== $$t ($(FUZZ_SECONDS) s)"; \
	  d=; if [ -f tests/fuzz/$$t.dict ]; then d=-dict=tests/fuzz/$$t.dict; fi; \
	  $(FUZZ_ENV) $(FUZZ_B)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=$$ml $$d \
	    -rss_limit_mb=3072 -timeout=20 -print_final_stats=1 -artifact_prefix=$$c/ \
	    $$w tests/fuzz/corpus/$$t 2>&1 | grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==ERROR|SUMMARY|Done)' || true; \
	  if ls $$c | grep -qE '^(crash|leak|timeout|oom)-'; then \
	    echo "$$t: failing inputs in $$c"; exit 1; fi; \
	done

fuzz-ci:
	$(FUZZ_MAKE) fuzz-run FUZZ_SECONDS=20

TSAN_B ?= build-tsan
TSAN_TESTS := test_stress test_api
check-tsan:
	+$(MAKE) -f $(firstword $(MAKEFILE_LIST)) CUDA=0 B=$(TSAN_B) OPT=-O1 \
	  SAN="-fsanitize=thread -fno-omit-frame-pointer" $(patsubst %,$(TSAN_B)/tests/%,$(TSAN_TESTS))
	@mkdir -p $(TSAN_B)/tmp
	AMPR_SHARED=$(FUZZ_SHARED) AMPR_TMP=$(abspath $(TSAN_B))/tmp AMPR_STRESS_SCALE=tsan \
	  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
	  tests/run_tests.sh $(patsubst %,$(TSAN_B)/tests/%,$(TSAN_TESTS))

clean-fuzz:
	rm -rf $(FUZZ_B) $(TSAN_B)

endif
