#!/usr/bin/env bash
# test_pkgconfig.sh -- libampr as an outside project sees it: `make install`
# into a staging root (DESTDIR, PREFIX=/usr), then, from a directory outside
# the source tree, build a C and a C++ program with nothing but
# `pkg-config ampr` pointed into the staging root, once against the shared
# library (run with LD_LIBRARY_PATH) and once fully static (--static, which
# needs Requires.private/Libs.private to be right), and run all four on
# stories260K. The install uses a fresh build folder under $AMPR_TMP. Also checks that the private dependencies' .pc files exist.
. "$(dirname "$0")/shlib.sh"
if ! command -v pkg-config >/dev/null; then skip "pkg-config not installed"; summary; exit; fi
# Outside consumers are plain programs: a sanitizer build of the library cannot
# be linked or loaded by them (the normal `make test` run covers this test).
if [ -e "$BUILD/libampr.so" ] && ldd "$BUILD/libampr.so" | grep -q 'libasan\|libubsan\|libtsan'; then
    skip "pkg-config consumers: sanitizer build"; summary; exit
fi
for pc in jansson libpcre2-8; do
    check "Requires.private $pc resolves" pkg-config --exists "$pc"
done
grep -q '^Requires.private:.*jansson.*libpcre2-8' "$ROOT/pkgconfig/ampr.pc.in" \
    && pass "ampr.pc.in lists jansson and libpcre2-8 as private" || fail "ampr.pc.in Requires.private"

tmp=$(mktmp pkgconfig)
stage=$tmp/stage
# A build folder of its own: build/ampr.pc keeps the PREFIX of the build that
# made it (the Makefile does not track PREFIX), and this must not disturb it.
if ! make -C "$ROOT" --no-print-directory -s -j"$(nproc)" B="$tmp/build" install DESTDIR="$stage" PREFIX=/usr >"$tmp/install.log" 2>&1; then
    fail "make install DESTDIR=... PREFIX=/usr"; tail -20 "$tmp/install.log"; summary; exit
fi
pass "make install DESTDIR=... PREFIX=/usr"
for f in usr/include/ampr.h usr/lib/libampr.a usr/lib/libampr.so usr/lib/pkgconfig/ampr.pc usr/bin/ampr; do
    [ -e "$stage/$f" ] && pass "installed $f" || fail "installed $f"
done
so=$(readlink "$stage/usr/lib/libampr.so")
[ "$so" = "libampr.so.$(sed -n 's/^#define AMPR_VERSION_MAJOR \([0-9]*\).*/\1/p' "$ROOT/include/ampr.h")" ] \
    && pass "libampr.so -> $so" || fail "libampr.so links to $so"
grep -q '^prefix=/usr$' "$stage/usr/lib/pkgconfig/ampr.pc" && pass "ampr.pc has prefix=/usr" || fail "ampr.pc prefix"

# The consumer lives outside the tree and sees only the staging root.
work=$tmp/consumer
mkdir -p "$work"
cat >"$work/hello.c" <<'C'
#include <ampr.h>
#include <stdio.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    ampr_ctx *ctx = NULL;
    if (ampr_open(argv[1], "{\"tiers\": [\"f32\"]}", &ctx) != AMPR_OK) {
        fprintf(stderr, "%s\n", ampr_errmsg(ctx));
        ampr_close(ctx);
        return 1;
    }
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.max_tokens = 12;
    p.temperature = 0;
    ampr_result *r = NULL;
    ampr_status st = ampr_generate(ctx, "Once upon a time", AMPR_NUL_TERMINATED, &p, &r);
    if (st == AMPR_OK) printf("%s %s|%s\n", ampr_version(), ampr_tier_name(r->tier_final), r->text);
    ampr_result_free(r);
    ampr_close(ctx);
    return st == AMPR_OK ? 0 : 1;
}
C
cat >"$work/hello.cpp" <<'CPP'
#include <ampr.h>
#include <cstdio>
#include <memory>
#include <string>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    ampr_ctx *raw = nullptr;
    ampr_status st = ampr_open(argv[1], "{\"tiers\": [\"f32\"]}", &raw);
    std::unique_ptr<ampr_ctx, void (*)(ampr_ctx *)> ctx(raw, ampr_close);
    if (st != AMPR_OK) { std::fprintf(stderr, "%s\n", ampr_errmsg(raw)); return 1; }
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.max_tokens = 12;
    p.temperature = 0;
    ampr_result *r = nullptr;
    st = ampr_generate(ctx.get(), "Once upon a time", AMPR_NUL_TERMINATED, &p, &r);
    std::unique_ptr<ampr_result, void (*)(ampr_result *)> res(r, ampr_result_free);
    if (st != AMPR_OK) return 1;
    std::printf("%s %s|%s\n", ampr_version(), ampr_tier_name(res->tier_final),
                std::string(res->text, res->text_len).c_str());
    return 0;
}
CPP
export PKG_CONFIG_SYSROOT_DIR=$stage
export PKG_CONFIG_PATH=$stage/usr/lib/pkgconfig
export PKG_CONFIG_LIBDIR=$stage/usr/lib/pkgconfig:/usr/lib/x86_64-linux-gnu/pkgconfig:/usr/lib/pkgconfig:/usr/share/pkgconfig
check "pkg-config --modversion ampr" pkg-config --modversion ampr
dyn=$(pkg-config --cflags --libs ampr) && st=$(pkg-config --static --cflags --libs ampr) \
    || { fail "pkg-config ampr"; summary; exit; }
echo "shared: $dyn"
echo "static: $st"
case "$dyn" in *"-I$stage/usr/include"*) pass "cflags point into the staging root" ;; *) fail "cflags: $dyn" ;; esac
case "$st" in *-ljansson*-lpcre2-8*|*-lpcre2-8*-ljansson*) pass "--static adds the private libraries" ;; *) fail "--static libs: $st" ;; esac

want=""
[ -x "$BUILD/ampr" ] && want=$("$BUILD/ampr" run -m "$MODEL" --tier f32 -p "Once upon a time" -n 12 --temp 0 --quiet 2>/dev/null)
cd "$work" || exit 1
run_consumer() { # NAME BINARY [LD_LIBRARY_PATH]
    local out
    if [ ! -f "$MODEL" ]; then skip "$1: no model"; return; fi
    if ! out=$(LD_LIBRARY_PATH=${3:-} "./$2" "$MODEL" 2>&1); then fail "$1 runs"; echo "$out"; return; fi
    pass "$1 runs: $out"
    if [ -n "$want" ] && [ "Once upon a time${out#*|}" != "$want" ]; then
        fail "$1 output differs from the CLI ($want)"
    fi
}
check "C, shared: cc" ${CC:-cc} -std=c11 -Wall -Werror -o hello_c hello.c $dyn
check "C++, shared: c++" ${CXX:-c++} -std=c++17 -Wall -Werror -o hello_cpp hello.cpp $dyn
# A build with the CUDA backend lists the CUDA runtime in Libs.private: those
# are shared libraries (the driver is loaded at run time anyway), so the
# static consumer links libampr.a and the rest statically but CUDA
# dynamically. pkg-config puts the sysroot in front of CUDA's -L, so the
# linker also gets the real CUDA folder.
full_static=-static
case "$st" in *-lcudart*)
    full_static=""
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do [ -d "$d" ] && export LIBRARY_PATH=$d${LIBRARY_PATH:+:$LIBRARY_PATH}; done
    st=$(printf '%s\n' "$st" | sed 's/-lampr/-Wl,-Bstatic -lampr -ljansson -lpcre2-8 -Wl,-Bdynamic/') ;;
esac
check "C, static: cc --static libs" ${CC:-cc} -std=c11 -Wall -Werror -o hello_c_static hello.c $full_static $st
check "C++, static: c++ --static libs" ${CXX:-c++} -std=c++17 -Wall -Werror -o hello_cpp_static hello.cpp $full_static $st
run_consumer "C, shared" hello_c "$stage/usr/lib"
run_consumer "C++, shared" hello_cpp "$stage/usr/lib"
run_consumer "C, static" hello_c_static
run_consumer "C++, static" hello_cpp_static
if readelf -d hello_c | grep -q "NEEDED.*libampr.so.0"; then pass "shared C consumer needs libampr.so.0"; else fail "shared consumer NEEDED"; fi
if [ -n "$full_static" ]; then
    if [ -x hello_c_static ] && ! readelf -d hello_c_static 2>/dev/null | grep -q NEEDED; then pass "static C consumer is fully static"; else fail "static consumer has NEEDED entries"; fi
else
    if [ -x hello_c_static ] && ! readelf -d hello_c_static 2>/dev/null | grep -q "NEEDED.*libampr"; then pass "static C consumer does not need libampr.so (CUDA runtime stays shared)"; else fail "static consumer needs libampr.so"; fi
fi
cd / && rm -rf "$tmp"
summary
