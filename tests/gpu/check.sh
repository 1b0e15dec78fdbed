#!/usr/bin/env bash
# tests/gpu/check.sh -- build the CUDA backend and tests/gpu/check with nvcc,
# then run it (op-by-op checks against a CPU reference, then benchmarks).
#
#   bash tests/gpu/check.sh               build for the GPU found, check, bench
#   bash tests/gpu/check.sh --quick       checks only, no benchmarks
#   bash tests/gpu/check.sh --bench       the kernel benchmark only (no checks, no end to end):
#                                         the baseline of an A/B run (cuda/NOTES.md)
#   bash tests/gpu/check.sh --build-only  build for sm_80 and sm_90a, no GPU needed
#   bash tests/gpu/check.sh --bench-8b    only `ampr bench --shape 8b` on the GPU (a separate
#                                         device call: writing, quantizing and uploading the
#                                         ~16 GB model takes minutes; needs ~30 GB of GPU memory)
#   bash tests/gpu/check.sh --prebuild    (here, no GPU needed) build .gpu/ampr: the CLI with
#                                         CUDA, jansson and pcre2 linked statically, no NCCL,
#                                         for a GPU machine that lacks those libraries
#   bash tests/gpu/check.sh --emu         (no GPU needed; `make check-emu`) the same checks and
#                                         end-to-end runs on the CPU emulation of CUDA
#                                         (tests/emu/README.md): build-emu/, no benchmarks;
#                                         with --quick the op checks only
#   bash tests/gpu/check.sh --switches    (with any of the above) every switch that is off by
#                                         default on, for the whole run (all_switches below)
#
# End to end (after the op checks, unless --quick): with the model
# ${AMPR_GPU_MODEL:-.gpu/stories260K.gguf} present, `ampr run` on every tier
# with "device": "cuda" vs "device": "cpu" (greedy), then `ampr bench` of a
# generated 1b-shape model on the GPU (skip with AMPR_GPU_NO_BENCH=1). The CLI
# is built here with make (B=$OUT/lib) or, failing that, .gpu/ampr is used.
#
# AMPR_CHECK_OPS=1: the kernel benchmark also times each op of a layer alone (decode
# and prefill) with cuBLASLt alone on each prefill GEMM shape; tests/gpu/profile.sh
# then runs Nsight Compute on the GEMV and attention kernels.
# Output goes to tests/gpu/build/ (override with AMPR_GPU_BUILD). Exit status: that
# of the check (0 all PASS, 1 some FAIL, 2 no usable GPU), or of the build.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The kernel switches that are off by default (cuda/ampr_cuda.h, ampr__cuda_switch;
# NF4_MMA, NF4_BATCH, ATT_MMA, ATT_DEC, PDL and TP_GRAPHS are on unless set to 0)
all_switches="AMPR_CUDA_FUSE=1 AMPR_CUDA_PREFETCH=1 AMPR_CUDA_FUSE_TAIL=1 AMPR_CUDA_NF4_RING=1"
all_switches="$all_switches AMPR_CUDA_DQ_WIDE=1 AMPR_CUDA_DQ_PIPE=1 AMPR_CUDA_I8_ONCE=1"
build_only=0
prebuild=0
emu=0
bench8b=0
quick=0
bench_only=0
args=()
for a in "$@"; do
    case "$a" in
    --build-only) build_only=1 ;;
    --prebuild) prebuild=1 ;;
    --emu) emu=1 ;;
    --bench-8b) bench8b=1 ;;
    --quick) quick=1; args+=("$a") ;;
    --bench) bench_only=1; args+=("$a") ;;
    --switches) for s in $all_switches; do export "${s?}"; done ;;
    *) args+=("$a") ;;
    esac
done

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
OUT=${AMPR_GPU_BUILD:-tests/gpu/build}
if [ "$emu" = 1 ]; then
    # CUDA on the CPU (tests/emu): the library and tests/gpu/check.cu built by make
    # with CUDA_EMU=1; then the op checks and the end-to-end part below, without
    # benchmarks (their times would be the emulator's)
    B=${AMPR_EMU_BUILD:-build-emu}
    mkdir -p "$B"
    make -j"$(nproc)" CUDA=1 CUDA_EMU=1 B="$B" all "$B/tests/emu/check" >"$B/emu-make.log" 2>&1 ||
        { echo "check.sh: make failed (last lines of $B/emu-make.log):"; tail -15 "$B/emu-make.log"; exit 3; }
    echo "check.sh: built $B (CUDA on the CPU: tests/emu)"
    export AMPR_GPU_NO_BENCH=1 AMPR_EMU_DEVICES=${AMPR_EMU_DEVICES:-2}
    shared=${AMPR_SHARED:-../shared}
    [ -f "${AMPR_GPU_MODEL:-}" ] || AMPR_GPU_MODEL=$shared/models/stories260K/stories260K.gguf
    export AMPR_GPU_MODEL
    : "${AMPR_GPU_CHECK_TIMEOUT:=900}" "${AMPR_GPU_RUN_TIMEOUT:=120}" "${AMPR_GPU_DEADLINE:=100000}"
    export AMPR_GPU_CHECK_TIMEOUT AMPR_GPU_RUN_TIMEOUT AMPR_GPU_DEADLINE
    OUT=$B/gpu-check
    mkdir -p "$OUT"
    ln -sfn .. "$OUT/lib"                  # the CLI and library: $OUT/lib/ampr, as below
    ln -sfn ../tests/emu/check "$OUT/check"
    [ "$quick" = 1 ] || args+=(--quick) # the op checks; never check.cu's benchmarks
fi
[ "$emu" = 1 ] || [ -x "$NVCC" ] || { echo "check.sh: nvcc not found (set NVCC)"; exit 3; }
[ "$emu" = 1 ] || mkdir -p "$OUT/obj"

# what .gpu/ampr was built from (the device machine's copy has no .git)
src_files() {
    find include lib cuda tools -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' \) |
        LC_ALL=C sort | xargs sha1sum
}
src_hash() { src_files | sha1sum | cut -c1-16; }

if [ "$prebuild" = 1 ]; then
    mkdir -p .gpu
    make -j"$(nproc)" CUDA=1 CUDA_HAVE_NCCL=0 B=build-prebuild \
        LIBS="-Wl,-Bstatic -ljansson -lpcre2-8 -Wl,-Bdynamic -lpthread -lm -L$CUDA_HOME/lib64 -lcudart -lcublasLt -lstdc++" \
        build-prebuild/ampr
    cp build-prebuild/ampr .gpu/ampr
    src_hash > .gpu/ampr.src
    src_files > .gpu/ampr.files
    echo "check.sh: built .gpu/ampr"; ldd .gpu/ampr || true
    exit 0
fi

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

if [ "$bench8b" = 1 ]; then
    export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    AMPR=.gpu/ampr
    if make -j"$(nproc)" CUDA=1 B="$OUT/lib" CUDA_GENCODE="$GENCODE" "$OUT/lib/ampr" >"$OUT/make.log" 2>&1; then
        AMPR="$OUT/lib/ampr"
    else
        echo "check.sh: make failed (last lines of $OUT/make.log):"; tail -5 "$OUT/make.log"
    fi
    [ -x "$AMPR" ] || { echo "FAIL: no ampr CLI"; exit 1; }
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    t8=${AMPR_GPU_8B_TIMEOUT:-$(( ${AMPR_GPU_DEADLINE:-520} - SECONDS ))}
    echo "== ampr bench --shape 8b --device cuda (timeout $t8 s) =="
    rc8=0
    TMPDIR=${TMPDIR:-/tmp} timeout -k 10 "$t8" stdbuf -oL "$AMPR" bench --shape 8b --device cuda \
        --tiers fp16,int8,nf4 --prompt 128 --gen 32 --concurrent 4 || rc8=$?
    echo "check.sh: exit $rc8"
    exit "$rc8"
fi

if [ "$emu" = 0 ]; then
NCCL_DEF=""
NCCL_LIB=""
NCCL_HOME=${NCCL_HOME:-}
if { [ -f "$CUDA_HOME/include/nccl.h" ] || [ -f /usr/include/nccl.h ]; } &&
   { compgen -G "$CUDA_HOME/lib64/libnccl.so*" >/dev/null ||
     compgen -G "/usr/lib/x86_64-linux-gnu/libnccl.so*" >/dev/null; }; then
    NCCL_DEF="-DAMPR_HAVE_NCCL"
    NCCL_LIB="-lnccl"
    NCCL_HOME=""
else
    # the GPU machines' image carries NCCL only in Python's nvidia-nccl wheel
    [ -n "$NCCL_HOME" ] || NCCL_HOME=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null || true)
    if [ -n "$NCCL_HOME" ] && [ -f "$NCCL_HOME/include/nccl.h" ] && [ -f "$NCCL_HOME/lib/libnccl.so.2" ]; then
        NCCL_DEF="-DAMPR_HAVE_NCCL -I$NCCL_HOME/include"
        NCCL_LIB="-Xlinker $NCCL_HOME/lib/libnccl.so.2 -Xlinker -rpath=$NCCL_HOME/lib"
    else
        NCCL_HOME=""
    fi
fi
export NCCL_HOME # for the make of the CLI (cuda/cuda.mk)

# Warnings are errors where we build without a GPU (here and in CI); on the
# device machine, whose compilers may be newer, a new warning must not cost
# the run.
WERROR_NV="-Werror all-warnings" WERROR_C="-Werror"
if [ "$build_only" = 0 ]; then WERROR_NV="" WERROR_C=""; fi
NVFLAGS="-std=c++17 -O3 -Iinclude -Ilib -Icuda $GENCODE $NCCL_DEF \
  -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra $WERROR_NV"
CFLAGS="-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra $WERROR_C -Wno-unused-parameter -fPIC -Iinclude -Ilib"

# lib/common needs jansson; without it a shim supplies the few functions used
# (AMPR_GPU_SHIM=1 takes that branch anyway, to check it builds).
if [ "${AMPR_GPU_SHIM:-0}" != 1 ] && echo '#include <jansson.h>' | gcc -E -x c - >/dev/null 2>&1; then
    C_SRCS="lib/common/common.c lib/common/status.c"
    C_LIBS="-ljansson"
else
    C_SRCS="tests/gpu/shim.c"
    C_LIBS=""
fi
# the CPU formats come from the library itself (check.cu quantizes with them;
# ampr__quantize can split the work over a pool)
Q_SRCS="lib/quant/float.c lib/quant/int8.c lib/quant/nf4.c lib/quant/quant.c lib/common/pool.c lib/common/half.c
        lib/sampler/sampler.c lib/fallback/logits.c"
Q_AVX2="lib/quant/kern_avx2.c lib/fallback/logits_avx2.c"
Q_AVX512="lib/quant/kern_avx512.c lib/quant/kern_avx512bf16.c"

echo "check.sh: nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), $GENCODE ${NCCL_DEF:+(NCCL)}"
objs=()
pids=()
for src in cuda/*.cu tests/gpu/check.cu; do
    obj="$OUT/obj/$(basename "$src" .cu).o"
    objs+=("$obj")
    "$NVCC" $NVFLAGS -Itests/gpu -c "$src" -o "$obj" &
    pids+=($!)
done
for src in $C_SRCS $Q_SRCS $Q_AVX2 $Q_AVX512; do
    obj="$OUT/obj/$(basename "$src" .c).o"
    objs+=("$obj")
    extra=""
    case "$src" in
    *_avx2.c) extra="-mavx2 -mfma -mf16c" ;;
    *_avx512.c) extra="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c" ;;
    *_avx512bf16.c) extra="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx2 -mfma -mf16c" ;;
    esac
    gcc $CFLAGS $extra -pthread -c "$src" -o "$obj" &
    pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || { echo "check.sh: build failed"; exit 3; }
"$NVCC" $GENCODE -o "$OUT/check" "${objs[@]}" -L"$CUDA_HOME/lib64" -lcublasLt $NCCL_LIB $C_LIBS -lm -lpthread ||
    { echo "check.sh: link failed"; exit 3; }
echo "check.sh: built $OUT/check"
[ "$build_only" = 1 ] && exit 0
fi # emu = 0

export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The CLI for the end-to-end part, built in the background while the op checks run.
MODEL=${AMPR_GPU_MODEL:-.gpu/stories260K.gguf}
e2e=0
[ "$quick" = 0 ] && [ "$bench_only" = 0 ] && [ -f "$MODEL" ] && e2e=1
no_model=0
if [ "$emu" = 1 ] && [ "$quick" = 0 ] && [ ! -f "$MODEL" ]; then
    echo "check.sh: no model at $MODEL (AMPR_SHARED or AMPR_GPU_MODEL): the end-to-end part is skipped"
elif [ "$quick" = 0 ] && [ "$bench_only" = 0 ] && [ ! -f "$MODEL" ]; then
    echo "FAIL: no model at $MODEL (copy stories260K.gguf to .gpu/ and carry .gpu): end-to-end part and benchmarks skipped"
    no_model=1
fi
DEADLINE=${AMPR_GPU_DEADLINE:-520} # seconds from the start; the device call allows ~540
make_pid=""
if [ "$e2e" = 1 ] && [ "$emu" = 1 ]; then
    true & # built above
    make_pid=$!
elif [ "$e2e" = 1 ]; then
    # the CLI's library gets NCCL exactly when the check does
    make -j8 CUDA=1 B="$OUT/lib" CUDA_GENCODE="$GENCODE" CUDA_HAVE_NCCL="$([ -n "$NCCL_DEF" ] && echo 1 || echo 0)" \
        lib "$OUT/lib/ampr" >"$OUT/make.log" 2>&1 &
    make_pid=$!
fi

rc=0
# line-buffered (a crash or a timeout must not swallow the lines printed so far) and bounded.
# A whole run is two processes, the op checks (--quick) and then the kernel
# benchmark (--bench): a kernel that faults in an op check leaves the CUDA
# context unusable, and would otherwise take the benchmark's lines with it
whole=0
if [ "${#args[@]}" = 0 ]; then whole=1; args=(--quick); fi
timeout -k 10 "${AMPR_GPU_CHECK_TIMEOUT:-240}" stdbuf -oL "$OUT/check" "${args[@]}" 2>&1 |
    tee "$OUT/check.out" || rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "FAIL: the op checks timed out (${AMPR_GPU_CHECK_TIMEOUT:-240} s)"
if [ "$whole" = 1 ] && [ "$rc" != 2 ]; then
    brc=0
    timeout -k 10 "${AMPR_GPU_CHECK_TIMEOUT:-240}" stdbuf -oL "$OUT/check" --bench 2>&1 |
        tee -a "$OUT/check.out" || brc=${PIPESTATUS[0]}
    [ "$brc" = 124 ] && echo "FAIL: the kernel benchmark timed out (${AMPR_GPU_CHECK_TIMEOUT:-240} s)"
    [ "$rc" != 0 ] || rc=$brc
fi
summary() {
    echo
    echo "check.sh: op checks: exit $rc, $(grep -cE 'FAIL|FATAL' "$OUT/check.out" || true) FAIL/FATAL line(s)"
    grep -E 'FAIL|FATAL' "$OUT/check.out" | head -20 || true
}
[ "$no_model" = 0 ] || { summary; echo "check.sh: exit 1"; exit 1; }
if [ "$e2e" != 1 ]; then summary; echo "check.sh: exit $rc"; exit "$rc"; fi
if [ "$rc" = 2 ]; then summary; echo "check.sh: no usable GPU: end-to-end part skipped"; exit 2; fi

AMPR=""
if wait "$make_pid" && "$OUT/lib/ampr" version >/dev/null 2>&1; then
    AMPR="$OUT/lib/ampr"
    echo "check.sh: built $AMPR"
else
    echo "check.sh: make failed (last lines of $OUT/make.log):"; tail -5 "$OUT/make.log"
    if [ -x .gpu/ampr ] && .gpu/ampr version >/dev/null 2>&1; then
        AMPR=.gpu/ampr
        echo "check.sh: using the prebuilt .gpu/ampr"
        [ "$(cat .gpu/ampr.src 2>/dev/null)" = "$(src_hash)" ] ||
            { echo "check.sh: WARNING: .gpu/ampr was built from other sources than these (rerun --prebuild):"
              src_files | diff .gpu/ampr.files - | head -6; }
    elif [ -e .gpu/ampr ]; then
        echo "check.sh: .gpu/ampr does not run here:"; .gpu/ampr version 2>&1 | tail -2 || true
    fi
fi
if [ -z "$AMPR" ]; then echo "FAIL: no ampr CLI for the end-to-end part"; exit 1; fi

echo
echo "== end to end: $MODEL, greedy, device cuda vs cpu =="
PROMPT="Once upon a time"
e2e_fail=0
cuda_hung=0 # after one CUDA run that timed out, the others are not started
run_tier() { # device tier n -> text on stdout
    if [ "$1" = cuda ] && [ "$cuda_hung" = 1 ]; then echo "(skipped: an earlier CUDA run hung)" >"$OUT/e2e-$1-$2-$3.err"; return 1; fi
    local r=0
    timeout -k 5 "${AMPR_GPU_RUN_TIMEOUT:-45}" "$AMPR" run -m "$MODEL" --config "{\"device\":\"$1\",\"tiers\":[\"fp16\",\"int8\",\"nf4\"]}" \
        --tier "$2" -p "$PROMPT" -n "$3" --temp 0 --quiet 2>"$OUT/e2e-$1-$2-$3.err" || r=$?
    [ "$r" = 124 ] && [ "$1" = cuda ] && echo "timed out" >>"$OUT/e2e-$1-$2-$3.err"
    return "$r"
}
declare -A gpu60=()
for tier in fp16 int8 nf4; do
    for n in 20 60; do
        cpu=$(run_tier cpu "$tier" "$n") || { echo "FAIL: cpu run $tier -n $n: $(tail -2 "$OUT/e2e-cpu-$tier-$n.err")"; e2e_fail=1; continue; }
        gpu=$(run_tier cuda "$tier" "$n") || { tail -1 "$OUT/e2e-cuda-$tier-$n.err" | grep -q 'timed out' && cuda_hung=1; echo "FAIL: cuda run $tier -n $n: $(tail -2 "$OUT/e2e-cuda-$tier-$n.err")"; e2e_fail=1; continue; }
        [ "$n" = 60 ] && gpu60[$tier]=$gpu
        if [ "$cpu" = "$gpu" ]; then
            echo "e2e $tier -n $n: identical text (${#gpu} chars)  PASS"
        else
            pos=$(python3 -c 'import sys; a,b=sys.argv[1],sys.argv[2]; print(next((i for i in range(min(len(a),len(b))) if a[i]!=b[i]), min(len(a),len(b))))' "$cpu" "$gpu" 2>/dev/null || echo "?")
            if [ "$tier" = fp16 ] && [ "$n" = 20 ]; then
                echo "e2e $tier -n $n: texts differ at char $pos  FAIL"; e2e_fail=1
            else
                echo "e2e $tier -n $n: texts differ at char $pos (reported, not a failure)"
            fi
            printf '  cpu : %s\n  cuda: %s\n' "$cpu" "$gpu"
        fi
    done
done
# SwiGLU fused into the gate/up GEMV (AMPR_CUDA_FUSE=1), and the residual add
# and RMSNorm, and RoPE and the KV store, into the matmul before them
# (AMPR_CUDA_FUSE_TAIL=1), give the same floats as the kernels they replace,
# so the same text on every tier; so does NF4's tensor-core GEMV with its
# weights through the cp.async ring (AMPR_CUDA_NF4_RING=1)
for fz in AMPR_CUDA_FUSE=1 AMPR_CUDA_FUSE_TAIL=1 AMPR_CUDA_NF4_RING=1; do
    for tier in fp16 int8 nf4; do
        [ "$cuda_hung" = 1 ] && break
        [ "$fz" = AMPR_CUDA_NF4_RING=1 ] && [ "$tier" != nf4 ] && continue
        [ -n "${gpu60[$tier]:-}" ] || continue
        f=$(export "${fz?}"; run_tier cuda "$tier" 60) || { echo "FAIL: cuda run $tier with $fz: $(tail -2 "$OUT/e2e-cuda-$tier-60.err")"; e2e_fail=1; continue; }
        if [ "$f" = "${gpu60[$tier]}" ]; then echo "e2e $tier -n 60 with $fz: identical to the default (${#f} chars)  PASS"
        else echo "e2e $tier -n 60 with $fz: differs from the default  FAIL"; printf '  with it: %s\n  default: %s\n' "$f" "${gpu60[$tier]}"; e2e_fail=1; fi
    done
done
# NF4's decode GEMV in fp32 (AMPR_CUDA_NF4_MMA=0; the default rounds codes and
# x to fp16 on tensor cores): its text against the CPU's, reported like the
# lower tiers above
if [ "$cuda_hung" = 0 ]; then
    cpu=$(run_tier cpu nf4 60) && gpu=$(AMPR_CUDA_NF4_MMA=0 run_tier cuda nf4 60) && {
        if [ "$cpu" = "$gpu" ]; then echo "e2e nf4 -n 60 with AMPR_CUDA_NF4_MMA=0: identical text (${#gpu} chars)  PASS"
        else echo "e2e nf4 -n 60 with AMPR_CUDA_NF4_MMA=0: texts differ (reported, not a failure)"; printf '  cpu : %s\n  cuda: %s\n' "$cpu" "$gpu"; fi
    } || { echo "FAIL: nf4 run with AMPR_CUDA_NF4_MMA=0: $(tail -2 "$OUT/e2e-cuda-nf4-60.err")"; e2e_fail=1; }
fi
timeout -k 5 60 "$AMPR" info -m "$MODEL" --config '{"device":"cuda","tiers":["fp16","int8","nf4"]}' 2>&1 | grep -i device || true
# The streamed open's fallback: "auto" with a tier the GPU cannot take (f32)
# uploads fp16, fails on f32, closes the GPU and builds both again for the
# CPU; the context must then say so and generate like a CPU one.
dev=$(timeout -k 5 60 "$AMPR" info -m "$MODEL" --config '{"device":"auto","tiers":["fp16","f32"]}' 2>&1 | grep -i '^device' || true)
fb=$(timeout -k 5 60 "$AMPR" run -m "$MODEL" --config '{"device":"auto","tiers":["fp16","f32"]}' --tier fp16 \
    -p "$PROMPT" -n 20 --temp 0 --quiet 2>"$OUT/e2e-auto-fallback.err" || echo "(run failed)")
cpu20=$(run_tier cpu fp16 20 || echo "(cpu run failed)")
case "$dev" in
*"cpu (auto:"*f32*) if [ "$fb" = "$cpu20" ]; then echo "auto with an f32 tier falls back to the CPU after an upload: $dev  PASS"
                    else echo "auto fallback after an upload: text differs from the CPU's  FAIL"; e2e_fail=1; fi ;;
*) echo "auto with an f32 tier: expected a CPU fallback naming f32, got: $dev  FAIL"; e2e_fail=1 ;;
esac

# Decode passes replay CUDA graphs (captured on a shape's second pass); with
# AMPR_CUDA_GRAPHS=0 they run eagerly. The same kernels either way: the texts
# must be identical.
for tier in fp16 int8 nf4; do
    [ -n "${gpu60[$tier]+x}" ] || continue # its cuda run failed above
    g1=${gpu60[$tier]}
    g0=$(AMPR_CUDA_GRAPHS=0 run_tier cuda "$tier" 60) ||
        { echo "FAIL: cuda run $tier without graphs: $(tail -2 "$OUT/e2e-cuda-$tier-60.err")"; e2e_fail=1; continue; }
    if [ "$g1" = "$g0" ]; then echo "e2e $tier -n 60: graphs == eager (${#g1} chars)  PASS"
    else echo "e2e $tier -n 60: graphs != eager  FAIL"; printf '  graph: %s\n  eager: %s\n' "$g1" "$g0"; e2e_fail=1; fi
done

# Sampled decoding (top-k 40, top-p 0.95, T 0.8, a seed; checks off so every
# tier samples from what its decode steps bring back): the device's candidate
# lists (greedy: its argmax) must give the tokens the whole rows give
# (AMPR_FULL_LOGITS=1), on the same device; also under a repetition penalty
# (applied on the device for the lists and the argmax, then taken back), for
# temperature alone (the device walks the row to the draw's number), and for
# a nucleus without top-k (a 256-long list and the row's mass; stories260K's
# 512 tokens: p 0.9 nuclei often run past the list and bring the row).
run_sampled() { # tier extra-flags... -> text on stdout
    local tier=$1
    shift
    timeout -k 5 "${AMPR_GPU_RUN_TIMEOUT:-45}" "$AMPR" run -m "$MODEL" \
        --config '{"device":"cuda","tiers":["fp16","int8","nf4"],"fallback":{"enabled":false}}' \
        --tier "$tier" -p "$PROMPT" -n 60 --top-k 40 --top-p 0.95 --seed 7 --quiet "$@" \
        2>>"$OUT/e2e-sampled-$tier.err"
}
for tier in fp16 int8 nf4; do
    flag_sets=("--temp 0.8")
    [ "$tier" = nf4 ] && flag_sets+=("--temp 0.8 --repeat-penalty 1.3" "--temp 0 --repeat-penalty 1.3" \
        "--temp 1.0 --top-k 0 --top-p 1.0" "--temp 0.9 --top-k 0 --top-p 1.0 --repeat-penalty 1.2" \
        "--temp 0.8 --top-k 0 --top-p 0.6" "--temp 1.0 --top-k 0 --top-p 0.9 --repeat-penalty 1.2")
    for flags in "${flag_sets[@]}"; do
        [ "$cuda_hung" = 1 ] && break
        # shellcheck disable=SC2086 # the flags are words
        s1=$(run_sampled "$tier" $flags) || { echo "FAIL: sampled cuda run $tier $flags: $(tail -2 "$OUT/e2e-sampled-$tier.err")"; e2e_fail=1; continue; }
        # shellcheck disable=SC2086
        s0=$(AMPR_FULL_LOGITS=1 run_sampled "$tier" $flags) ||
            { echo "FAIL: sampled cuda run $tier $flags (full rows): $(tail -2 "$OUT/e2e-sampled-$tier.err")"; e2e_fail=1; continue; }
        if [ "$s1" = "$s0" ]; then echo "e2e $tier $flags -n 60: candidate lists == full rows (${#s1} chars)  PASS"
        else echo "e2e $tier $flags -n 60: candidate lists != full rows  FAIL"; printf '  lists: %s\n  rows : %s\n' "$s1" "$s0"; e2e_fail=1; fi
    done
done

# The fallback's monitor on the device: a lower tier under tight checks (a
# window of 8 every 4 tokens, longer than the spacing) keeps its rows in a
# device ring and measures entropy and KL there; no row comes back. The CPU
# decides from its own logits: the same escalation is expected, but reported,
# not failed, when the texts before it differ (as for int8 / nf4 above).
# check.cu's "monitor:" line is the strict comparison.
run_checked() { # device tier -> the run's tier summary on stdout
    timeout -k 5 "${AMPR_GPU_RUN_TIMEOUT:-45}" "$AMPR" run -m "$MODEL" \
        --config "{\"device\":\"$1\",\"tiers\":[\"fp16\",\"int8\",\"nf4\"],\"fallback\":{\"check_every\":4,\"check_window\":8,\"kl_max\":0.1,\"entropy_max\":0,\"repeat_ngram\":0}}" \
        --tier "$2" -p "$PROMPT" -n 60 --temp 0 2>&1 >/dev/null | tr '\r' '\n' | grep '^ampr: tier' | sed 's/ | prompt.*//'
}
# ... and escalations that must happen on the GPU as on the CPU: a check
# that any KL fails (kl_max 0) at its first check, and an entropy bound no
# row meets at min_tokens.
must_escalate() { # tier fallback-json expected-prefix
    local got
    got=$(timeout -k 5 "${AMPR_GPU_RUN_TIMEOUT:-45}" "$AMPR" run -m "$MODEL" \
        --config "{\"device\":\"cuda\",\"tiers\":[\"fp16\",\"int8\",\"nf4\"],\"fallback\":$2}" \
        --tier "$1" -p "$PROMPT" -n 30 --temp 0 2>&1 >/dev/null | tr '\r' '\n' | grep '^ampr: tier' | sed 's/ | prompt.*//')
    case "$got" in
    "ampr: tier $1 -> fp16 at token $3"*) echo "e2e $1 on the GPU escalates: $got  PASS" ;;
    *) echo "e2e $1 on the GPU: expected an escalation at token $3, got '$got'  FAIL"; e2e_fail=1 ;;
    esac
}
if [ "$cuda_hung" != 1 ]; then
    must_escalate nf4 '{"check_every":4,"check_window":8,"kl_max":0,"entropy_max":0,"repeat_ngram":0}' "4 (kl-check"
    must_escalate int8 '{"check_every":0,"entropy_max":0.0001,"min_tokens":5,"repeat_ngram":0}' "5 (entropy"
fi
for tier in int8 nf4; do
    [ "$cuda_hung" = 1 ] && break
    c0=$(run_checked cpu "$tier")
    c1=$(run_checked cuda "$tier")
    if [ -z "$c1" ]; then echo "FAIL: checked cuda run $tier gave no summary"; e2e_fail=1
    elif [ "$c0" = "$c1" ]; then echo "e2e $tier under checks (device monitor): $c1  PASS"
    else echo "e2e $tier under checks: cpu '$c0', cuda '$c1' (reported, not a failure)"; fi
done

# Tensor parallelism: the GPU ranks against the CPU's simulated ranks (same
# shards; the copy all-reduce sums in the CPU's rank order). On one GPU the
# ranks share it; with two or more, NCCL ranks in one process and one rank per
# process (tests/gpu/tp_procs.py) too.
echo
echo "== end to end: tensor parallelism, device cuda vs the CPU's ranks =="
# GPUs this process can use (CUDA_VISIBLE_DEVICES narrows what nvidia-smi lists)
n_gpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "$emu" = 1 ] && n_gpu=$AMPR_EMU_DEVICES
if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
    n_vis=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true)
    [ "$n_vis" -lt "$n_gpu" ] && n_gpu=$n_vis
fi
# NCCL cases need a CLI built here with NCCL (the prebuilt .gpu/ampr has none):
# ask the library that was built
have_nccl=0
if [ "$AMPR" != .gpu/ampr ] &&
   PYTHONPATH=python python3 -c 'import sys, ampr; ampr.tp_id_new(sys.argv[1])' "$OUT/lib/libampr.so" 2>/dev/null; then
    have_nccl=1
fi
run_tp() { # device tp extra-json tier n tag -> text on stdout
    if [ "$1" = cuda ] && [ "$cuda_hung" = 1 ]; then echo "(skipped: an earlier CUDA run hung)" >"$OUT/e2e-tp-$6-$4.err"; return 1; fi
    local r=0
    timeout -k 5 "${AMPR_GPU_RUN_TIMEOUT:-45}" "$AMPR" run -m "$MODEL" \
        --config "{\"device\":\"$1\",\"tp_size\":$2,\"tiers\":[\"fp16\",\"int8\",\"nf4\"]$3}" \
        --tier "$4" -p "$PROMPT" -n "$5" --temp 0 --quiet 2>"$OUT/e2e-tp-$6-$4.err" || r=$?
    [ "$r" = 124 ] && [ "$1" = cuda ] && echo "timed out" >>"$OUT/e2e-tp-$6-$4.err"
    return "$r"
}
compare_tp() { # label tier cpu-text gpu-text
    if [ "$3" = "$4" ]; then
        echo "e2e $1 $2 -n 20: identical text (${#4} chars)  PASS"
    elif [ "$2" = fp16 ]; then
        echo "e2e $1 $2 -n 20: texts differ  FAIL"; e2e_fail=1
        printf '  cpu : %s\n  cuda: %s\n' "$3" "$4"
    else
        echo "e2e $1 $2 -n 20: texts differ (reported, not a failure)"
        printf '  cpu : %s\n  cuda: %s\n' "$3" "$4"
    fi
}
tp_cases=("2|,\"gpus\":[0,0]|tp2-gpu0x2" "4|,\"gpus\":[0,0,0,0]|tp4-gpu0x4")
[ "${n_gpu:-0}" -ge 2 ] && [ "$have_nccl" = 1 ] && tp_cases+=("2|,\"gpus\":[0,1],\"tp_allreduce\":\"nccl\"|tp2-nccl")
for case in "${tp_cases[@]}"; do
    IFS='|' read -r tp extra tag <<<"$case"
    for tier in fp16 int8 nf4; do
        cpu=$(run_tp cpu "$tp" "" "$tier" 20 "cpu$tp") || { echo "FAIL: cpu tp $tp $tier: $(tail -2 "$OUT/e2e-tp-cpu$tp-$tier.err")"; e2e_fail=1; continue; }
        gpu=$(run_tp cuda "$tp" "$extra" "$tier" 20 "$tag") || { tail -1 "$OUT/e2e-tp-$tag-$tier.err" | grep -q 'timed out' && cuda_hung=1; echo "FAIL: cuda $tag $tier: $(tail -2 "$OUT/e2e-tp-$tag-$tier.err")"; e2e_fail=1; continue; }
        compare_tp "$tag" "$tier" "$cpu" "$gpu"
        # eager (AMPR_CUDA_TP_GRAPHS=0) against the ranks' segments replayed
        # from CUDA graphs (the default): the same kernels, so the same text
        tpg=$gpu
        gpu=$(AMPR_CUDA_TP_GRAPHS=0 run_tp cuda "$tp" "$extra" "$tier" 20 "$tag-eager") ||
            { echo "FAIL: cuda $tag $tier with AMPR_CUDA_TP_GRAPHS=0: $(tail -2 "$OUT/e2e-tp-$tag-eager-$tier.err")"; e2e_fail=1; continue; }
        if [ "$tpg" = "$gpu" ]; then echo "e2e $tag $tier -n 20: TP graphs == eager (${#gpu} chars)  PASS"
        else echo "e2e $tag $tier -n 20: TP graphs != eager  FAIL"; printf '  graphs: %s\n  eager : %s\n' "$tpg" "$gpu"; e2e_fail=1; fi
    done
done
timeout -k 5 60 "$AMPR" info -m "$MODEL" --config '{"device":"cuda","tp_size":2,"gpus":[0,0],"tiers":["fp16"]}' 2>&1 | grep -i device || true
# One rank per process (tests/gpu/tp_procs.py; in the emulation, its NCCL's
# communicators across processes meet in shared memory: tests/emu/README.md)
if [ "${n_gpu:-0}" -ge 2 ] && [ "$have_nccl" = 1 ]; then
    cpu=$(run_tp cpu 2 "" fp16 20 cpu2) || cpu="(cpu run failed)"
    if AMPR_LIBRARY="$OUT/lib/libampr.so" timeout 180 python3 tests/gpu/tp_procs.py "$AMPR" "$OUT/lib" \
        "$MODEL" "$PROMPT" 2 "$OUT" 2>"$OUT/e2e-tp-procs.err"; then
        for r in 0 1; do compare_tp "tp2-process-rank$r" fp16 "$cpu" "$(cat "$OUT/tp-rank-$r.txt")"; done
    else
        echo "FAIL: one rank per process: $(tail -3 "$OUT/e2e-tp-procs.err")"; e2e_fail=1
    fi
fi
if [ "$have_nccl" = 1 ]; then # one GPU is enough: the missing rank never starts
    if msg=$(AMPR_LIBRARY="$OUT/lib/libampr.so" timeout 90 python3 tests/gpu/tp_procs.py "$AMPR" "$OUT/lib" \
        "$MODEL" "$PROMPT" 2 "$OUT" --alone 2>"$OUT/e2e-tp-alone.err"); then
        echo "tp_rank 0 of 2 alone gives up: $msg  PASS"
    else
        echo "FAIL: tp_rank 0 of 2 alone: $(tail -3 "$OUT/e2e-tp-alone.err")"; e2e_fail=1
    fi
fi
# A rank that fails its open after the group met (its 20th device allocation),
# or whose process ends in the middle of generating (at its 40th all-reduce):
# every rank must end by itself with an error, the others' naming the group.
# The emulation's hooks (tests/emu/README.md); a GPU has none.
if [ "$emu" = 1 ] && [ "$have_nccl" = 1 ]; then
    for case in "1|AMPR_EMU_FAIL_ALLOC=20|0|another rank of the tensor-parallel group failed to open" \
                "0|AMPR_EMU_FAIL_ALLOC=20|1|another rank of the tensor-parallel group failed to open" \
                "1|AMPR_EMU_NCCL_EXIT_AT=40|0|another rank of the group failed or was lost" \
                "0|AMPR_EMU_NCCL_EXIT_AT=40|1|another rank of the group failed or was lost"; do
        IFS='|' read -r bad hook other msg <<<"$case"
        if AMPR_LIBRARY="$OUT/lib/libampr.so" AMPR_TP_PROCS_TIMEOUT=60 timeout 90 python3 tests/gpu/tp_procs.py \
            "$AMPR" "$OUT/lib" "$MODEL" "$PROMPT" 2 "$OUT" --env "$bad" "$hook" --expect-fail "$other" "$msg" \
            >"$OUT/e2e-tp-procs-fail.out" 2>&1; then
            echo "tp2 one rank per process, rank $bad with $hook: every rank ends; rank $other: \"$msg\"  PASS"
        else
            echo "FAIL: tp2 one rank per process, rank $bad with $hook: $(tail -4 "$OUT/e2e-tp-procs-fail.out")"; e2e_fail=1
        fi
    done
fi

left() { # seconds left before the deadline, at most $1
    local l=$(( DEADLINE - SECONDS ))
    [ "$l" -lt "$1" ] && echo "$l" || echo "$1"
}
if [ "${AMPR_GPU_NO_BENCH:-0}" != 1 ]; then
    t=$(left 200)
    if [ "$t" -lt 60 ]; then
        echo "(the 1b benchmarks are skipped: $SECONDS s used so far)"
    else
        echo
        echo "== ampr bench --shape 1b --device cuda (timeout $t s) =="
        { timeout -k 10 "$t" stdbuf -oL "$AMPR" bench --shape 1b --device cuda --tiers fp16,int8,nf4 --prompt 128 \
            --gen 32 --concurrent 4 || echo "bench: exit $? (not a failure of the check)"; } | tee "$OUT/bench-1b.txt"
        # the tiers' host copies are freed as they are uploaded: a GPU context
        # keeps far less than the FP16 tier alone (2.1 GiB at this shape)
        anon=$(sed -n 's/^host memory after open: \([0-9]*\) MiB anonymous.*/\1/p' "$OUT/bench-1b.txt")
        if [ -n "$anon" ] && [ "$anon" -gt 1536 ]; then
            echo "host memory after open: $anon MiB anonymous, over 1536  FAIL"; e2e_fail=1
        elif [ -n "$anon" ]; then
            echo "host memory after open: $anon MiB anonymous (tiers 3.7 GiB)  PASS"
        else
            echo "host memory after open: not printed (the bench failed before it)"
        fi
        # decode batches of up to 8 requests on the FP16 and INT8 GEMVs of
        # several tokens (gemvn_kernel)
        t=$(left 100)
        if [ "$t" -lt 45 ]; then
            echo "(the 1b bench with 8 concurrent requests is skipped: $SECONDS s used so far)"
        else
            echo
            echo "== the same, fp16 and int8 with 8 concurrent requests (timeout $t s) =="
            timeout -k 10 "$t" stdbuf -oL "$AMPR" bench --shape 1b --device cuda --tiers fp16,int8 \
                --prompt 128 --gen 32 --concurrent 8 || echo "bench: exit $? (not a failure of the check)"
        fi
        # a bench as it is, then with switches flipped (the
        # assignments in $2), side by side: label, assignments, bench args...
        bench_ab() {
            local label=$1 sw=$2 run t
            shift 2
            for run in default switched; do
                t=$(left 100)
                if [ "$t" -lt 45 ]; then
                    echo "(the bench of $label ($run) is skipped: $SECONDS s used so far)"
                    continue
                fi
                local envs=()
                [ "$run" = switched ] && read -r -a envs <<<"$sw"
                echo
                echo "== $label, $([ "$run" = switched ] && echo "with $sw" || echo "as it is") (timeout $t s) =="
                env "${envs[@]}" timeout -k 10 "$t" stdbuf -oL "$AMPR" bench "$@" ||
                    echo "bench: exit $? (not a failure of the check)"
            done
        }
        # 8 concurrent requests: decode batches of up to 8 tokens, on tensor
        # cores, where a token more costs next to nothing, or
        # (AMPR_CUDA_NF4_BATCH=0) on the fp32 GEMV
        bench_ab "NF4, 8 concurrent requests" "AMPR_CUDA_NF4_BATCH=0" \
            --shape 1b --device cuda --tiers nf4 --prompt 128 --gen 32 --concurrent 8
        # two ranks on GPU 0 (copy all-reduce): their segments from graphs
        # (on) or not
        bench_ab "NF4, TP 2 on GPU 0" "AMPR_CUDA_TP_GRAPHS=0" \
            --shape 1b --device cuda --tiers nf4 --tp 2 --gpus 0,0 --prompt 128 --gen 32
        t=$(left 100)
        if [ "$t" -lt 45 ]; then
            echo "(the NF4 bench without CUDA graphs is skipped: $SECONDS s used so far)"
        else
            echo
            echo "== the same, NF4 only, without CUDA graphs (AMPR_CUDA_GRAPHS=0; timeout $t s) =="
            AMPR_CUDA_GRAPHS=0 timeout -k 10 "$t" stdbuf -oL "$AMPR" bench --shape 1b --device cuda --tiers nf4 \
                --prompt 128 --gen 32 --concurrent 4 || echo "bench: exit $? (not a failure of the check)"
        fi
    fi
fi
# The switches that are off by default: every op check again with all on
# (on a GPU, where a kernel reading before its PDL wait could race), then the
# kernel benchmark without programmatic dependent launch (on by default since
# 2026-11-28), to set beside the default's above
if [ "$emu" = 0 ]; then
    t=$(left 150)
    if [ "$t" -lt 60 ]; then
        echo "(the op checks with the switches on are skipped: $SECONDS s used so far)"
    else
        echo
        echo "== op checks with $all_switches (timeout $t s) =="
        sw_rc=0
        # shellcheck disable=SC2086 # the assignments are words
        env $all_switches timeout -k 10 "$t" stdbuf -oL "$OUT/check" --quick >"$OUT/check-switches.out" 2>&1 ||
            sw_rc=$?
        echo "op checks with the switches on: exit $sw_rc, $(grep -c PASS "$OUT/check-switches.out" || true) PASS, $(grep -cE 'FAIL|FATAL' "$OUT/check-switches.out" || true) FAIL/FATAL line(s)"
        grep -E 'FAIL|FATAL' "$OUT/check-switches.out" | head -20 || true
        [ "$sw_rc" = 0 ] || e2e_fail=1
    fi
fi
if [ "${AMPR_GPU_NO_BENCH:-0}" != 1 ] && [ "${AMPR_CUDA_PDL:-}" != 0 ]; then
    t=$(left 120)
    if [ "$t" -lt 60 ]; then
        echo "(the kernel benchmark with AMPR_CUDA_PDL=0 is skipped: $SECONDS s used so far)"
    else
        echo
        echo "== the kernel benchmark without programmatic dependent launch (AMPR_CUDA_PDL=0; timeout $t s) =="
        AMPR_CUDA_PDL=0 timeout -k 10 "$t" stdbuf -oL "$OUT/check" --bench 2>&1 | tee "$OUT/check-pdl.out" ||
            echo "check --bench without PDL: exit $? (not a failure of the check)"
    fi
fi
# Each format's matmuls of 1..32 tokens on the 8B shape's matrices, every NF4
# path side by side (check --gemv): where the weights, not the launches, set
# the time
if [ "$emu" = 0 ] && [ "${AMPR_GPU_NO_BENCH:-0}" != 1 ]; then
    t=$(left 90)
    if [ "$t" -lt 45 ]; then
        echo "(check --gemv is skipped: $SECONDS s used so far)"
    else
        echo
        echo "== the matmuls of the 8B shape (check --gemv; timeout $t s) =="
        timeout -k 10 "$t" stdbuf -oL "$OUT/check" --gemv 2>&1 | tee "$OUT/check-gemv.out" ||
            echo "check --gemv: exit $? (not a failure of the check)"
    fi
fi
# The 8B shape in the same call when everything passed and the deadline
# leaves it time (a device call starts a machine: minutes of a session's
# device time; after a FAIL the time is kept for a rerun): what
# `check.sh --bench-8b` runs, bounded by what is left (AMPR_GPU_NO_8B=1: not)
if [ "$emu" = 0 ] && [ "${AMPR_GPU_NO_BENCH:-0}" != 1 ] && [ "${AMPR_GPU_NO_8B:-0}" != 1 ]; then
    t=$(left 400)
    if [ "$rc" != 0 ] || [ "$e2e_fail" != 0 ]; then
        echo "(the 8b bench is skipped: a check failed)"
    elif [ "$t" -lt 150 ]; then
        echo "(the 8b bench is skipped: $SECONDS s used so far; check.sh --bench-8b runs it alone)"
    else
        echo
        echo "== ampr bench --shape 8b --device cuda (timeout $t s) =="
        TMPDIR=${TMPDIR:-/tmp} timeout -k 10 "$t" stdbuf -oL "$AMPR" bench --shape 8b --device cuda \
            --tiers fp16,int8,nf4 --prompt 128 --gen 32 --concurrent 4 2>&1 | tee "$OUT/bench-8b.txt" ||
            echo "8b bench: exit $? (not a failure of the check)"
        # NF4 again with its tensor-core GEMV's weights through the cp.async
        # ring (AMPR_CUDA_NF4_RING=1: decode) and prefill's dequantization in
        # chunks for 4 waves of cuBLASLt tiles (AMPR_CUDA_DQ_WIDE=1: prefill),
        # both off until measured, beside the above
        t=$(left 150)
        if [ "$t" -lt 90 ]; then
            echo "(the 8b NF4 bench with AMPR_CUDA_NF4_RING=1 AMPR_CUDA_DQ_WIDE=1 is skipped: $SECONDS s used so far)"
        else
            echo
            echo "== the same, NF4 only, with AMPR_CUDA_NF4_RING=1 AMPR_CUDA_DQ_WIDE=1 (timeout $t s) =="
            AMPR_CUDA_NF4_RING=1 AMPR_CUDA_DQ_WIDE=1 TMPDIR=${TMPDIR:-/tmp} timeout -k 10 "$t" stdbuf -oL "$AMPR" \
                bench --shape 8b --device cuda --tiers nf4 --prompt 128 --gen 32 2>&1 | tee "$OUT/bench-8b-ring.txt" ||
                echo "8b bench with the ring and wide chunks: exit $? (not a failure of the check)"
        fi
    fi
fi
summary
[ "$e2e_fail" = 0 ] || rc=1
echo "check.sh: exit $rc"
exit "$rc"
