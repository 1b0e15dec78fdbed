#!/usr/bin/env bash
# Run each cmocka test binary (optionally under a runner such as valgrind),
# print its output, and finish with one summary line: "N passed, N failed".
set -u
runner=()
if [ $# -gt 0 ] && [[ "$1" != */tests/* ]]; then read -r -a runner <<<"$1"; shift; fi
passed=0 failed=0 skipped=0 bad_bins=()
for t in "$@"; do
    out=$("${runner[@]}" "$t" 2>&1); rc=$?
    printf '%s\n' "$out"
    p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -1)
    f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -1)
    s=$(printf '%s\n' "$out" | grep -c '^\[  SKIPPED \]')
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + s))
    if [ $rc -ne 0 ]; then bad_bins+=("$t (exit $rc)"); [ -z "$f" ] && failed=$((failed + 1)); fi
done
echo
[ ${#bad_bins[@]} -gt 0 ] && printf 'failing: %s\n' "${bad_bins[@]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ] && [ ${#bad_bins[@]} -eq 0 ]
