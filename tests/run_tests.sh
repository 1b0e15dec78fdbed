#!/usr/bin/env bash
# Run each test (optionally under a runner such as valgrind), print its
# output, and finish with one summary line: "N passed, N failed, N skipped".
#
#   run_tests.sh [RUNNER] TEST...
#
# A TEST is a cmocka binary (its "[  PASSED  ] N test(s)" / "[  FAILED  ] N"
# lines are counted) or a script, tests/test_*.sh (run with bash, never under
# the runner; its own last "N passed, N failed, N skipped" line is counted).
# A test that exits nonzero without reporting a failure counts one failure.
# RUNNER is the first argument when it is not an existing file.
set -u
runner=()
if [ $# -gt 0 ] && [ ! -e "$1" ]; then read -r -a runner <<<"$1"; shift; fi
passed=0 failed=0 skipped=0 bad=()
for t in "$@"; do
    if [[ "$t" == *.sh ]]; then
        out=$(bash "$t" 2>&1); rc=$?
        printf '%s\n' "$out"
        line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -1)
        p=$(printf '%s' "$line" | sed -n 's/^\([0-9]*\) passed.*/\1/p')
        f=$(printf '%s' "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
        s=$(printf '%s' "$line" | sed -n 's/.* \([0-9]*\) skipped.*/\1/p')
    else
        out=$("${runner[@]}" "$t" 2>&1); rc=$?
        printf '%s\n' "$out"
        p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -1)
        f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -1)
        s=$(printf '%s\n' "$out" | sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' | tail -1)
    fi
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${s:-0}))
    if [ $rc -ne 0 ]; then bad+=("$t (exit $rc)"); [ "${f:-0}" -eq 0 ] && failed=$((failed + 1)); fi
done
echo
[ ${#bad[@]} -gt 0 ] && printf 'failing: %s\n' "${bad[@]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ] && [ ${#bad[@]} -eq 0 ]
