#!/usr/bin/env bash
# test_docs.sh -- every AMPR_API function of include/ampr.h is named in the
# NAME section of some man page in docs/man3, each page renders without
# warnings, and every page's file name is one of the functions it documents
# (so `man ampr_generate` finds it once installed).
. "$(dirname "$0")/shlib.sh"
hdr=$ROOT/include/ampr.h
dir=$ROOT/docs/man3
funcs=$(sed -n 's/^AMPR_API[^(]*[ *]\(ampr_[a-z0-9_]*\) *(.*/\1/p' "$hdr" | sort -u)
# function-like macros of the API (the _init macros) may be named too
macros=$(sed -n 's/^#define \(ampr_[a-z0-9_]*\)(.*/\1/p' "$hdr" | sort -u)
# the NAME section: the lines between ".SH NAME" and the next ".SH"
names=$(for f in "$dir"/*.3; do sed -n '/^\.SH NAME/,/^\.SH/{/^\.SH/d;p}' "$f"; done |
        sed 's/\\-.*//' | tr ',' '\n' | tr -d ' ' | sort -u)
missing=$(comm -23 <(printf '%s\n' "$funcs") <(printf '%s\n' "$names"))
if [ -z "$missing" ]; then pass "all $(printf '%s\n' "$funcs" | wc -l) AMPR_API functions have a man page"
else fail "AMPR_API functions missing from every man page's NAME section:"; printf '  %s\n' $missing; fi
extra=$(comm -13 <(printf '%s\n' $funcs $macros | sort -u) <(printf '%s\n' "$names"))
[ -z "$extra" ] && pass "man pages name no function the header lacks" \
    || { fail "man pages name functions not in ampr.h:"; printf '  %s\n' $extra; }
for f in "$dir"/*.3; do
    base=$(basename "$f" .3)
    printf '%s\n' "$names" | grep -qx "$base" && pass "$base.3 documents $base" || fail "$base.3 is not named after a function it documents"
    if command -v groff >/dev/null; then
        w=$(groff -man -Tutf8 -ww -z "$f" 2>&1)
        [ -z "$w" ] && pass "$base.3 renders cleanly" || { fail "$base.3 has groff warnings"; echo "$w"; }
    fi
done
summary
