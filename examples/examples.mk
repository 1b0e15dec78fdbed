# examples/examples.mk -- the adoption-layer rules, included by the top-level
# Makefile (after its variables are set):
#
#     include examples/examples.mk
#
#   make examples      C/C++ examples in $(B)/examples, linked the way an outside
#                      program links: public header only, -lampr against the
#                      shared library of the same build (so only exported
#                      symbols are reachable), rpath $ORIGIN/.. to find it.
#   make abi-baseline  rewrite abi/libampr.abi from the built library. Do this
#                      only when AMPR_VERSION_MAJOR has been bumped (an ABI
#                      break); tests/test_abi.sh fails on an incompatible
#                      change against the baseline while the major is unchanged.
#
# It uses the parent's B, CC, SAN, LDFLAGS_SAN, SHARED and VERSION, so
# `make B=build-asan SAN=... examples` builds sanitised examples too.

CXX ?= c++
EXAMPLE_CFLAGS := -std=c11 -D_POSIX_C_SOURCE=200809L -g -O2 -Wall -Wextra -Werror -Wshadow \
                  -Wstrict-prototypes -Wmissing-prototypes -pthread -Iinclude $(SAN)
EXAMPLE_CXXFLAGS := -std=c++17 -g -O2 -Wall -Wextra -Werror -Wshadow -pthread -Iinclude $(SAN)
EXAMPLE_LDFLAGS := -L$(B) -lampr -Wl,-rpath,'$$ORIGIN/..' $(LDFLAGS_SAN)
EXAMPLE_BINS := $(patsubst examples/%.c,$(B)/examples/%,$(wildcard examples/*.c)) \
                $(patsubst examples/%.cpp,$(B)/examples/%,$(wildcard examples/*.cpp))

.PHONY: examples abi-baseline
examples: $(EXAMPLE_BINS)

$(B)/examples/%: examples/%.c examples/common.h include/ampr.h $(SHARED)
	@mkdir -p $(dir $@)
	$(CC) $(EXAMPLE_CFLAGS) -o $@ $< $(EXAMPLE_LDFLAGS)

$(B)/examples/%: examples/%.cpp examples/common.h include/ampr.h $(SHARED)
	@mkdir -p $(dir $@)
	$(CXX) $(EXAMPLE_CXXFLAGS) -o $@ $< $(EXAMPLE_LDFLAGS)

# Only the types reachable from include/ (--headers-dir), no build paths, so
# the file is reproducible across machines and worktrees.
abi-baseline: $(SHARED)
	@mkdir -p abi
	abidw --headers-dir include --drop-private-types --no-corpus-path --no-comp-dir-path --short-locs \
	  --out-file abi/libampr.abi $(SHARED)
	@echo "abi/libampr.abi written for $(SONAME); commit it with the major bump"
