#!/usr/bin/env bash
# test_abi.sh -- the stable-ABI promise of ABI.md, checked on the built
# library ($AMPR_BUILD/libampr.so):
#   1. the exported dynamic symbols are exactly the AMPR_API functions declared
#      in include/ampr.h (so nothing leaks, and nothing is added undocumented);
#   2. the SONAME is libampr.so.<AMPR_VERSION_MAJOR>;
#   3. against the baseline abi/libampr.abi (libabigail XML): abidiff finds no
#      removed or changed function, and tests/abi_check.py finds every public
#      struct member at its old offset with its old type and every enumerator
#      at its old value. Additions (functions, trailing struct members,
#      enumerators) are allowed. An incompatible change needs a major bump,
#      after which the baseline must be rewritten (`make abi-baseline`);
#      until then this test fails.
. "$(dirname "$0")/shlib.sh"
lib=$BUILD/libampr.so
hdr=$ROOT/include/ampr.h
if [ ! -e "$lib" ]; then fail "$lib not built"; summary; exit; fi
tmp=$(mktmp abi)

# 1. exported symbols == documented functions
sed -n 's/^AMPR_API[^(]*[ *]\(ampr_[a-z0-9_]*\) *(.*/\1/p' "$hdr" | sort -u >"$tmp/declared"
nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVWi]$/ { sub(/@.*/, "", $3); print $3 }' | sort -u >"$tmp/exported"
n=$(wc -l <"$tmp/declared")
if [ "$n" -gt 20 ] && diff -u "$tmp/declared" "$tmp/exported" >"$tmp/sym.diff"; then
    pass "exported symbols are the $n AMPR_API functions of ampr.h"
else
    fail "exported symbols differ from ampr.h's AMPR_API list (- declared only, + exported only)"
    cat "$tmp/sym.diff"
fi
# every declaration line must have been understood by the sed above
if [ "$(grep -c '^AMPR_API' "$hdr")" -eq "$n" ]; then pass "every AMPR_API line names one function"
else fail "some AMPR_API declarations were not parsed (one per line, name before '(')"; fi
if nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVWi]$/' | grep -v '@@AMPR_' >"$tmp/unversioned"; then
    fail "exported symbols without a version node:"; cat "$tmp/unversioned"
else pass "every exported symbol carries a version node (lib/ampr.map)"; fi

# 2. SONAME
major=$(sed -n 's/^#define AMPR_VERSION_MAJOR \([0-9]*\).*/\1/p' "$hdr")
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libampr.so.$major" ] && pass "SONAME $soname matches AMPR_VERSION_MAJOR $major" \
    || fail "SONAME '$soname', expected libampr.so.$major"

# 3. baseline
base=$ROOT/abi/libampr.abi
if ! command -v abidiff >/dev/null || ! command -v abidw >/dev/null; then
    skip "ABI baseline (abigail-tools not installed)"
elif [ ! -f "$base" ]; then
    fail "no baseline $base (make abi-baseline)"
else
    base_soname=$(sed -n "1s/.*soname='\([^']*\)'.*/\1/p" "$base")
    if [ "$base_soname" != "$soname" ]; then
        fail "baseline is for $base_soname, the library is $soname: after a major bump run 'make abi-baseline' and commit abi/libampr.abi"
    else
        pass "baseline is for $soname"
        abidiff --headers-dir2 "$ROOT/include" --suppressions "$ROOT/abi/suppressions.abignore" \
            --no-added-syms "$base" "$lib" >"$tmp/abidiff.txt" 2>&1
        rc=$?
        if [ $rc -eq 0 ]; then pass "abidiff: no removed or changed functions against the baseline"
        else fail "abidiff against abi/libampr.abi (exit $rc): incompatible change without a major bump"; cat "$tmp/abidiff.txt"; fi
        abidw --headers-dir "$ROOT/include" --drop-private-types --no-corpus-path --no-comp-dir-path \
            --short-locs --out-file "$tmp/current.abi" "$lib"
        check "public struct layouts and enum values keep the baseline's" \
            python3 "$ROOT/tests/abi_check.py" "$base" "$tmp/current.abi"
        python3 "$ROOT/tests/abi_check.py" "$base" "$tmp/current.abi" | tail -1
    fi
fi
rm -rf "$tmp"
summary
