#!/bin/bash
# tests/gpu/profile.sh -- Nsight Compute on the kernels that decide decode and
# prefill speed, on the 1.1B shape (tests/gpu/check --ops TIER runs one tier's
# per-op profile, each op twice). Run it on the GPU machine after
# tests/gpu/check.sh has built tests/gpu/build/check:
#
#   bash tests/gpu/profile.sh [OUTDIR]      (default tests/gpu/build)
#   bash tests/gpu/profile.sh OUTDIR 8b     the NF4 decode matmuls and INT8's
#                                           one-token GEMV on the 8B shape's
#                                           matrices instead (check --gemv nf4 /
#                                           int8), with every warp stall reason
#
# Writes OUTDIR/ncu-TIER-KERNEL.txt per target and prints each profiled
# kernel's duration, DRAM throughput, issue activity and occupancy. Clocks
# are left as they are (--clock-control none).
set -u
cd "$(dirname "$0")/../.." || exit 2
out=${1:-tests/gpu/build}
mkdir -p "$out"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
if [ -z "$NCU" ] || [ ! -x tests/gpu/build/check ]; then
    echo "profile.sh: no ncu or no tests/gpu/build/check"; exit 2
fi
if [ "${2:-}" = 8b ]; then
    # check --gemv nf4 with AMPR_CHECK_GEMV_PROFILE=1 runs each matrix (wqkv, wo,
    # w_gu, w_down, output) twice at 1 and 4 tokens: on the fp32 GEMVs
    # (gemv1_kernel, 1 token; gemv_nf4_kernel, 4), then on tensor cores
    # (gemv_nf4_mma_kernel, both), then the same with the weights through the
    # cp.async ring (gemv_nf4_ring_kernel, AMPR_CUDA_NF4_RING); and INT8's
    # one-token GEMV (gemv1_kernel of check --gemv int8, whose prologue quantizes
    # the token). Every launch: its own line, the stall reasons that take the
    # most of a warp's cycles between two issues.
    for spec in "nf4 gemv1_kernel 10" "nf4 gemv_nf4_kernel 10" "nf4 gemv_nf4_mma_kernel 20" \
                "nf4 gemv_nf4_ring_kernel 20" "int8 gemv1_kernel 10"; do
        # shellcheck disable=SC2086 # three words
        set -- $spec
        rep="$out/ncu-8b-$1-$2"
        AMPR_CHECK_GEMV_PROFILE=1 timeout -k 5 120 "$NCU" --clock-control none --kernel-name "regex:$2" \
            --launch-count "$3" --section SpeedOfLight --section Occupancy --section WarpStateStats \
            --section LaunchStats --section MemoryWorkloadAnalysis --section SchedulerStats -f -o "$rep" \
            tests/gpu/build/check --gemv "$1" >"$rep.log" 2>&1
        echo "== 8b $1 $2 (rc $?) =="
        "$NCU" -i "$rep.ncu-rep" --page raw --csv >"$rep.csv" 2>/dev/null
        python3 - "$rep.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
if len(rows) < 3:
    print("  (no raw page)"); sys.exit(0)
head, rows = rows[0], rows[2:]          # row 1 holds the units
col = {h: i for i, h in enumerate(head)}
def get(r, *names):
    for n in names:
        if n in col and r[col[n]] not in ("", "n/a"):
            return r[col[n]]
    return "?"
stall = [h for h in head if "issue_stalled" in h]
for suffix in ("per_issue_active.ratio", "per_warp_active.pct"):   # the section's form, if there
    if any(h.endswith(suffix) for h in stall):
        stall = [h for h in stall if h.endswith(suffix)]
        break
for r in rows:
    line = "  grid %s regs %s: %s us, dram %s%%, issue active %s%%, occupancy %s%%, warps/sched %s" % (
        get(r, "launch__grid_size"), get(r, "launch__registers_per_thread"),
        get(r, "gpu__time_duration.sum"),
        get(r, "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"),
        get(r, "sm__inst_issued.avg.pct_of_peak_sustained_active", "smsp__issue_active.avg.pct_of_peak_sustained_active"),
        get(r, "sm__warps_active.avg.pct_of_peak_sustained_active"),
        get(r, "smsp__warps_active.avg.per_cycle_active"))
    top = []
    for h in stall:
        try: top.append((float(r[col[h]].replace(",", "")), h))
        except ValueError: pass
    top.sort(reverse=True)
    print(line)
    unit = "cycles a issue" if stall and stall[0].endswith("ratio") else "%"
    print("    stalls (%s): " % unit + ", ".join(
        "%s %.2f" % (h.split("issue_stalled_")[1].split("_per_")[0], v) for v, h in top[:7]))
PY
    done
    exit 0
fi
# tier, kernel-name regex, launches (each op runs twice: warm-up and one timed)
# (the tensor-core kernels, off by default, run in check --ops's second pass
# over the NF4 GEMVs and the fp16 prefill attention)
for spec in "nf4 gemv1_kernel 10" "int8 gemv1_kernel 10" "fp16 gemv1_kernel 10" \
            "fp16 attention 6" "nf4 gemv_nf4_mma_kernel 10" "fp16 attention_mma_kernel 2"; do
    set -- $spec
    f="$out/ncu-$1-$2.txt"
    timeout -k 5 150 "$NCU" --clock-control none --kernel-name "regex:$2" --launch-count "$3" \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
        --section SchedulerStats tests/gpu/build/check --ops "$1" >"$f" 2>&1
    echo "== $1 $2 (rc $?) =="
    grep -E "^  [a-z_0-9]+.*\(|Duration|DRAM Throughput|Compute \(SM\) Throughput|Issue Slots Busy|Achieved Occupancy|Registers Per Thread|Grid Size|Warp Cycles Per Issued|No Eligible" "$f" |
        sed 's/  */ /g' | head -120
done
