#!/bin/bash
# tests/gpu/profile.sh -- Nsight Compute on the kernels that decide decode and
# prefill speed, on the 1.1B shape (tests/gpu/check --ops TIER runs one tier's
# per-op profile, each op twice). Run it on the GPU machine after
# tests/gpu/check.sh has built tests/gpu/build/check:
#
#   bash tests/gpu/profile.sh [OUTDIR]      (default tests/gpu/build)
#
# Writes OUTDIR/ncu-TIER-KERNEL.txt per target and prints each profiled
# kernel's duration, DRAM throughput, issue activity and occupancy. Clocks
# are left as they are (--clock-control none).
set -u
cd "$(dirname "$0")/../.."
out=${1:-tests/gpu/build}
mkdir -p "$out"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
if [ -z "$NCU" ] || [ ! -x tests/gpu/build/check ]; then
    echo "profile.sh: no ncu or no tests/gpu/build/check"; exit 2
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
