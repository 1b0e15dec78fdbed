#!/usr/bin/env bash
# tests/emu/oom.sh AMPR MODEL [alloc|handle] [tp] -- failure injection on the CPU
# emulation of CUDA (tests/emu). Counts what one `ampr run` on the device creates
# (open, a prefill long enough for cuBLASLt, sampled decoding with a penalty, a
# lower tier under the fallback's checks, CUDA graphs), then fails each creation in
# turn: "alloc" (default) each cudaMalloc (AMPR_EMU_FAIL_ALLOC=N, out of memory),
# "handle" each stream, event, graph, cuBLASLt object or NCCL communicator
# (AMPR_EMU_FAIL_HANDLE=N). Every run must end in a clean status: exit 0, or exit 1
# with the library's message naming CUDA, cuBLASLt or NCCL; never a crash, a hang,
# an emulator fault or a sanitizer report; and no device memory or handle left at
# exit (the CLI closes its context). With "tp": tensor parallelism over two
# emulated GPUs with NCCL instead. Prints one line per wrong N and a summary.
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
if [ "${4:-}" = tp ]; then
    config='{"device":"cuda","tp_size":2,"gpus":[0,1],"tp_allreduce":"nccl","tiers":["fp16","int8","nf4"],"fallback":{"check_every":4,"check_window":8,"kl_max":0.1}}'
    export AMPR_EMU_DEVICES=2
fi
run() { # -> exit status; stderr in $tmp
    timeout -k 5 120 "$AMPR" run -m "$MODEL" --config "$config" --tier nf4 \
        -p "Once upon a time there was a little girl named Lily who loved to play" -n 12 \
        --temp 0.8 --repeat-penalty 1.2 --seed 3 --quiet >/dev/null 2>"$tmp"
}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
AMPR_EMU_REPORT=1 run || { echo "oom.sh: the run without injection failed: $(tail -2 "$tmp")"; exit 1; }
calls=$(sed -n "$count_re" "$tmp")
[ -n "$calls" ] && [ "$calls" -gt 0 ] || { echo "oom.sh: nothing counted ($MODE)"; exit 1; }
bad=0 failed=0 ok=0
for n in $(seq 1 "$calls"); do
    export "$knob=$n"
    AMPR_EMU_REPORT=1 run
    rc=$?
    unset "$knob"
    live=$(sed -n 's/^ampr-emu: [0-9]* cudaMalloc calls; \([0-9]*\) device allocations.*/\1/p' "$tmp")
    handles=$(sed -n 's/^ampr-emu: [0-9]* handle creations; \([0-9]*\) handles live.*/\1/p' "$tmp")
    why=""
    if [ "$rc" != 0 ] && [ "$rc" != 1 ]; then why="exit $rc"
    elif grep -q '^ampr-emu: fault\|SIGSEGV\|SIGBUS' "$tmp"; then why="emulator fault"
    elif grep -q 'Sanitizer\|runtime error:' "$tmp"; then why="sanitizer report" # an ASan/UBSan build
    elif [ "${live:-x}" != 0 ]; then why="${live:-?} device allocations live at exit"
    elif [ "${handles:-x}" != 0 ]; then why="$(grep 'handles live' "$tmp")"
    elif [ "$rc" = 1 ] && ! grep -q 'CUDA\|cuBLASLt\|NCCL' "$tmp"; then why="exit 1 without the failed call's message"
    fi
    if [ -n "$why" ]; then
        echo "$MODE $n of $calls fails: $why: $(grep -v '^ampr-emu: [0-9]* \(cudaMalloc\|handle\)' "$tmp" | tail -2 | tr '\n' ' ')"
        bad=$((bad + 1))
    elif [ "$rc" = 1 ]; then failed=$((failed + 1))
    else ok=$((ok + 1)); fi
done
what=$([ "$MODE" = alloc ] && echo "cudaMalloc calls" || echo "handle creations")
echo "device failure injection: $calls $what failed one at a time: $failed runs failed cleanly, $ok recovered, $bad wrong"
[ "$bad" = 0 ]
