#!/usr/bin/env bash
# tests/emu/oom.sh AMPR MODEL [alloc|handle] [tp|procs] -- failure injection on the CPU
# emulation of CUDA (tests/emu). Counts what one `ampr run` on the device creates
# (open, a prefill long enough for cuBLASLt, sampled decoding with a penalty, a
# lower tier under the fallback's checks, CUDA graphs), then fails each creation in
# turn: "alloc" (default) each cudaMalloc (AMPR_EMU_FAIL_ALLOC=N, out of memory),
# "handle" each stream, event, graph, cuBLASLt object or NCCL communicator
# (AMPR_EMU_FAIL_HANDLE=N). Every run must end in a clean status: exit 0, or exit 1
# with the library's message naming CUDA, cuBLASLt or NCCL; never a crash, a hang,
# an emulator fault or a sanitizer report; and no device memory or handle left at
# exit (the CLI closes its context). With "tp": tensor parallelism over two
# emulated GPUs with NCCL instead. With "procs": one rank per process
# (tests/gpu/tp_procs.py, greedy fp16, "tp_timeout_ms" 3000), rank 1 failing
# its Nth creation: both ranks must end by themselves, both with exit 0 or both
# with exit 1 (rank 0 saying that another rank failed, or did not join), each
# clean as above. Prints one line per wrong N and a summary.
set -uo pipefail
AMPR=$1
MODEL=$2
MODE=${3:-alloc}
case "$MODE" in
alloc) knob=AMPR_EMU_FAIL_ALLOC; count_re='s/^ampr-emu: \([0-9]*\) cudaMalloc calls.*/\1/p' ;;
handle) knob=AMPR_EMU_FAIL_HANDLE; count_re='s/^ampr-emu: \([0-9]*\) handle creations.*/\1/p' ;;
*) echo "oom.sh: mode alloc or handle"; exit 2 ;;
esac
config='{"device":"cuda","tiers":["fp16","int8","nf4"],"fallback":{"check_every":4,"check_window":8,"kl_max":0.1}}'
SPREAD=${4:-}
if [ "$SPREAD" = tp ]; then
    config='{"device":"cuda","tp_size":2,"gpus":[0,1],"tp_allreduce":"nccl","tiers":["fp16","int8","nf4"],"fallback":{"check_every":4,"check_window":8,"kl_max":0.1}}'
    export AMPR_EMU_DEVICES=2
elif [ "$SPREAD" = procs ]; then
    export AMPR_EMU_DEVICES=2
fi
tmp=$(mktemp)
dir=$(mktemp -d)
trap 'rm -rf "$tmp" "$dir"' EXIT
run() { # [VAR=VAL] -> exit status; stderr in $tmp (procs: rank 1's, rank 0's in $dir/tp-rank-0.err)
    if [ "$SPREAD" = procs ]; then
        local env=(--env 0 AMPR_EMU_REPORT=1 --env 1 AMPR_EMU_REPORT=1)
        [ $# = 1 ] && env+=(--env 1 "$1")
        AMPR_TP_PROCS_TIMEOUT=60 timeout -k 5 120 python3 "$(dirname "$0")/../gpu/tp_procs.py" "$AMPR" \
            "$(dirname "$AMPR")" "$MODEL" "Once upon a time" 2 "$dir" --keep-going --timeout-ms 3000 \
            "${env[@]}" >/dev/null 2>&1
        cp "$dir/tp-rank-1.err" "$tmp"
        local rcs
        read -r -a rcs <"$dir/tp-rcs.txt"
        rc0=${rcs[0]:-none}
        return "$([ "${rcs[1]:-none}" = none ] && echo 124 || echo "${rcs[1]}")"
    fi
    env ${1:+"$1"} timeout -k 5 120 "$AMPR" run -m "$MODEL" --config "$config" --tier nf4 \
        -p "Once upon a time there was a little girl named Lily who loved to play" -n 12 \
        --temp 0.8 --repeat-penalty 1.2 --seed 3 --quiet >/dev/null 2>"$tmp"
}
# why the run that left stderr in $1 (exit status $2) is wrong, or nothing; $3:
# the words its message must hold when it failed
judge() {
    local live handles
    live=$(sed -n 's/^ampr-emu: [0-9]* cudaMalloc calls; \([0-9]*\) device allocations.*/\1/p' "$1")
    handles=$(sed -n 's/^ampr-emu: [0-9]* handle creations; \([0-9]*\) handles live.*/\1/p' "$1")
    if [ "$2" != 0 ] && [ "$2" != 1 ]; then echo "exit $2"
    elif grep -q '^ampr-emu: fault\|SIGSEGV\|SIGBUS' "$1"; then echo "emulator fault"
    elif grep -q 'Sanitizer\|runtime error:' "$1"; then echo "sanitizer report" # an ASan/UBSan build
    elif [ "${live:-x}" != 0 ]; then echo "${live:-?} device allocations live at exit"
    elif [ "${handles:-x}" != 0 ]; then grep 'handles live' "$1"
    elif [ "$2" = 1 ] && ! grep -q "$3" "$1"; then echo "exit 1 without the message ($3): $(tail -1 "$1")"
    fi
}
AMPR_EMU_REPORT=1 run || { echo "oom.sh: the run without injection failed: $(tail -2 "$tmp")"; exit 1; }
calls=$(sed -n "$count_re" "$tmp")
[ -n "$calls" ] && [ "$calls" -gt 0 ] || { echo "oom.sh: nothing counted ($MODE)"; exit 1; }
bad=0 failed=0 ok=0
for n in $(seq 1 "$calls"); do
    AMPR_EMU_REPORT=1 run "$knob=$n"
    rc=$?
    why=$(judge "$tmp" "$rc" 'CUDA\|cuBLASLt\|NCCL')
    if [ -z "$why" ] && [ "$SPREAD" = procs ]; then # rank 0: ends as rank 1 did, naming the group
        why=$(judge "$dir/tp-rank-0.err" "$rc0" 'another rank\|did not all join')
        [ -n "$why" ] && why="rank 0: $why"
        if [ -z "$why" ] && [ "$rc0" != "$rc" ]; then why="rank 0 exit $rc0, rank 1 exit $rc"
        elif [ -z "$why" ] && [ "$rc" = 0 ] && ! cmp -s "$dir/tp-rank-0.txt" "$dir/tp-rank-1.txt"; then
            why="the ranks' texts differ"
        fi
    fi
    if [ -n "$why" ]; then
        echo "$MODE $n of $calls fails: $why: $(grep -v '^ampr-emu: [0-9]* \(cudaMalloc\|handle\)' "$tmp" | tail -2 | tr '\n' ' ')"
        bad=$((bad + 1))
    elif [ "$rc" = 1 ]; then failed=$((failed + 1))
    else ok=$((ok + 1)); fi
done
what=$([ "$MODE" = alloc ] && echo "cudaMalloc calls" || echo "handle creations")
[ "$SPREAD" = procs ] && what="$what of rank 1 of 2 processes"
echo "device failure injection: $calls $what failed one at a time: $failed runs failed cleanly, $ok recovered, $bad wrong"
[ "$bad" = 0 ]
