# tests/shlib.sh -- sourced by the tests/test_*.sh scripts: where things are,
# and pass/fail/skip counting that ends in the same summary line the cmocka
# runner understands ("N passed, N failed, N skipped"). A script exits 0 when
# nothing failed.
#
# Environment (set by `make test`, with defaults for running a script alone
# from the repository root): AMPR_BUILD (build folder, default build),
# AMPR_SHARED (test data, default ../shared), AMPR_TMP (scratch space).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${AMPR_BUILD:-$ROOT/build}
SHARED=${AMPR_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
MODEL=$SHARED/models/stories260K/stories260K.gguf
_passed=0 _failed=0 _skipped=0
pass() { _passed=$((_passed + 1)); echo "[       OK ] $*"; }
fail() { _failed=$((_failed + 1)); echo "[  FAILED  ] $*"; }
skip() { _skipped=$((_skipped + 1)); echo "[  SKIPPED ] $*"; }
# check NAME CMD...: run CMD, pass or fail by its exit status (output shown on failure)
check() {
    local name=$1 out; shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name"; printf '%s\n' "$out" | tail -20; fi
}
summary() {
    echo "$_passed passed, $_failed failed, $_skipped skipped"
    [ "$_failed" -eq 0 ]
}
mktmp() { mkdir -p "${AMPR_TMP:-/tmp}"; mktemp -d "${AMPR_TMP:-/tmp}/$1.XXXXXX"; }
