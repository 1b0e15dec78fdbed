#!/usr/bin/env bash
# test_python.sh -- the Python package's unittest suite (python/tests) against
# this build's shared library, summarised as "N passed, N failed, N skipped".
# Skipped as a whole without python3, or when the library is a sanitizer
# build (it could not be loaded into an uninstrumented python3).
. "$(dirname "$0")/shlib.sh"
lib=$BUILD/libampr.so
if ! command -v python3 >/dev/null; then skip "python: no python3"; summary; exit; fi
if [ ! -e "$lib" ]; then fail "python: $lib not built"; summary; exit; fi
if ldd "$lib" | grep -q 'libasan\|libubsan'; then skip "python: sanitizer build"; summary; exit; fi
out=$(cd "$ROOT" && AMPR_LIBRARY=$lib AMPR_CLI=$BUILD/ampr AMPR_SHARED=$SHARED \
      python3 -m unittest discover -s python/tests -v 2>&1); rc=$?
printf '%s\n' "$out"
ran=$(printf '%s\n' "$out" | sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in.*/\1/p' | tail -1)
last=$(printf '%s\n' "$out" | grep -E '^(OK|FAILED)' | tail -1)
num() { printf '%s\n' "$last" | sed -n "s/.*$1=\([0-9]*\).*/\1/p"; }
fl=$(num failures) er=$(num errors) sk=$(num skipped)
_failed=$(( ${fl:-0} + ${er:-0} )) _skipped=${sk:-0}
_passed=$(( ${ran:-0} - _failed - _skipped ))
# no summary from unittest, or a nonzero exit without a counted failure
if [ -z "$ran" ] || { [ $rc -ne 0 ] && [ $_failed -eq 0 ]; }; then _failed=$((_failed + 1)); fi
summary
