#!/usr/bin/env bash
# tests/emu/oom.sh AMPR MODEL -- device out-of-memory injection on the CPU emulation
# of CUDA (tests/emu): counts the cudaMalloc calls of one `ampr run` on the device
# (open, prefill, sampled decode with a penalty, a lower tier under the fallback's
# checks), then fails each of them in turn (AMPR_EMU_FAIL_ALLOC=N). Every run must
# end in a clean status: exit 0, or exit 1 with a message naming the failure;
# never a crash, a hang or an emulator fault, and no device memory left allocated
# at exit (the CLI closes its context). Prints one line per failing N and a summary.
set -uo pipefail
AMPR=$1
MODEL=$2
config='{"device":"cuda","tiers":["fp16","int8","nf4"],"fallback":{"check_every":4,"check_window":8,"kl_max":0.1}}'
run() { # -> exit status; stderr in $tmp
    timeout -k 5 120 "$AMPR" run -m "$MODEL" --config "$config" --tier nf4 -p "Once upon a time" -n 12 \
        --temp 0.8 --repeat-penalty 1.2 --seed 3 --quiet >/dev/null 2>"$tmp"
}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
AMPR_EMU_REPORT=1 run || { echo "oom.sh: the run without injection failed: $(tail -2 "$tmp")"; exit 1; }
calls=$(sed -n 's/^ampr-emu: \([0-9]*\) cudaMalloc calls.*/\1/p' "$tmp")
[ -n "$calls" ] && [ "$calls" -gt 0 ] || { echo "oom.sh: no cudaMalloc count"; exit 1; }
bad=0 failed=0 ok=0
for n in $(seq 1 "$calls"); do
    AMPR_EMU_REPORT=1 AMPR_EMU_FAIL_ALLOC=$n run
    rc=$?
    live=$(sed -n 's/^ampr-emu: [0-9]* cudaMalloc calls; \([0-9]*\) device allocations.*/\1/p' "$tmp")
    why=""
    if [ "$rc" != 0 ] && [ "$rc" != 1 ]; then why="exit $rc"
    elif grep -q '^ampr-emu: fault\|SIGSEGV\|SIGBUS' "$tmp"; then why="emulator fault"
    elif grep -q 'Sanitizer\|runtime error:' "$tmp"; then why="sanitizer report" # an ASan/UBSan build
    elif [ "${live:-x}" != 0 ]; then why="${live:-?} device allocations live at exit"
    elif [ "$rc" = 1 ] && ! grep -q 'NOMEM\|out of memory' "$tmp"; then why="exit 1 without an out-of-memory message"
    fi
    if [ -n "$why" ]; then
        echo "cudaMalloc $n of $calls fails: $why: $(grep -v '^ampr-emu: [0-9]* cudaMalloc' "$tmp" | tail -2 | tr '\n' ' ')"
        bad=$((bad + 1))
    elif [ "$rc" = 1 ]; then failed=$((failed + 1))
    else ok=$((ok + 1)); fi
done
echo "device OOM injection: $calls cudaMalloc calls failed one at a time: $failed runs failed cleanly, $ok recovered, $bad wrong"
[ "$bad" = 0 ]
