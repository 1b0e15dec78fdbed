#!/usr/bin/env bash
# tests/gpu/check.sh -- build the CUDA backend and tests/gpu/check with nvcc,
# then run it (op-by-op checks against a CPU reference, then benchmarks).
#
#   bash tests/gpu/check.sh               build for the GPU found, check, bench
#   bash tests/gpu/check.sh --quick       checks only, no benchmarks
#   bash tests/gpu/check.sh --build-only  build for sm_80 and sm_90a, no GPU needed
#
# Output goes to tests/gpu/build/ (override with AMPR_GPU_BUILD). Exit status: that
# of the check (0 all PASS, 1 some FAIL, 2 no usable GPU), or of the build.
set -euo pipefail
cd "$(dirname "$0")/../.."

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "check.sh: nvcc not found (set NVCC)"; exit 3; }
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
OUT=${AMPR_GPU_BUILD:-tests/gpu/build}
mkdir -p "$OUT/obj"

build_only=0
args=()
for a in "$@"; do
    case "$a" in
    --build-only) build_only=1 ;;
    *) args+=("$a") ;;
    esac
done

# Target: sm_90a on Hopper, sm_80 otherwise (sm_80 code runs on later GPUs
# too); both when only building.
cc=""
if [ "$build_only" = 0 ] && command -v nvidia-smi >/dev/null 2>&1; then
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
fi
if [ "$build_only" = 1 ]; then
    GENCODE="-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a"
elif [ "$cc" = "90" ]; then
    GENCODE="-gencode=arch=compute_90a,code=sm_90a"
else
    GENCODE="-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_80,code=compute_80"
fi

NCCL_DEF=""
NCCL_LIB=""
if { [ -f "$CUDA_HOME/include/nccl.h" ] || [ -f /usr/include/nccl.h ]; } &&
   { compgen -G "$CUDA_HOME/lib64/libnccl.so*" >/dev/null ||
     compgen -G "/usr/lib/x86_64-linux-gnu/libnccl.so*" >/dev/null; }; then
    NCCL_DEF="-DAMPR_HAVE_NCCL"
    NCCL_LIB="-lnccl"
fi

NVFLAGS="-std=c++17 -O3 -Iinclude -Ilib -Icuda $GENCODE $NCCL_DEF \
  -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra -Werror all-warnings"
CFLAGS="-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -Wno-unused-parameter -fPIC -Iinclude -Ilib"

# lib/common needs jansson; without it a shim supplies the few functions used.
if echo '#include <jansson.h>' | gcc -E -x c - >/dev/null 2>&1; then
    C_SRCS="lib/common/common.c lib/common/status.c"
    C_LIBS="-ljansson"
else
    C_SRCS="tests/gpu/shim.c"
    C_LIBS=""
fi

echo "check.sh: nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), $GENCODE ${NCCL_DEF:+(NCCL)}"
objs=()
pids=()
for src in cuda/*.cu tests/gpu/check.cu; do
    obj="$OUT/obj/$(basename "$src" .cu).o"
    objs+=("$obj")
    "$NVCC" $NVFLAGS -Itests/gpu -c "$src" -o "$obj" &
    pids+=($!)
done
for src in $C_SRCS; do
    obj="$OUT/obj/$(basename "$src" .c).o"
    objs+=("$obj")
    gcc $CFLAGS -c "$src" -o "$obj" &
    pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || { echo "check.sh: build failed"; exit 3; }
"$NVCC" $GENCODE -o "$OUT/check" "${objs[@]}" -L"$CUDA_HOME/lib64" -lcublasLt $NCCL_LIB $C_LIBS -lm
echo "check.sh: built $OUT/check"
[ "$build_only" = 1 ] && exit 0

export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$OUT/check" "${args[@]+"${args[@]}"}"
