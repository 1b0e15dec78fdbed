#!/usr/bin/env bash
# test_examples.sh -- run every example (C, C++, Python) on stories260K and
# check what it prints: generate (C and Python) must print exactly what
# `ampr run --temp 0 --quiet` prints for the same prompt, tier and length.
# The C/C++ examples are built by `make examples` (examples/examples.mk).
. "$(dirname "$0")/shlib.sh"
EX=$BUILD/examples
if [ ! -f "$MODEL" ]; then skip "examples: no model at $MODEL"; summary; exit; fi
export AMPR_CONFIG='{"tiers": ["f32"], "threads": 2}'
prompt="Lily and Ben went to the park"

cli_out=""
if [ -x "$BUILD/ampr" ]; then
    cli_out=$("$BUILD/ampr" run -m "$MODEL" --tier f32 --threads 2 -p "$prompt" -n 40 --temp 0 --quiet 2>/dev/null)
fi
same_as_cli() { # NAME OUTPUT
    if [ -z "$cli_out" ]; then skip "$1 (no CLI to compare with)";
    elif [ "$2" = "$cli_out" ]; then pass "$1 equals the CLI";
    else fail "$1 differs from the CLI"; printf 'cli:     %s\nexample: %s\n' "$cli_out" "$2"; fi
}

for e in generate stream_cancel server_threads raii; do
    if [ ! -x "$EX/$e" ]; then fail "$e not built (make examples)"; continue; fi
    check "$e runs" "$EX/$e" "$MODEL"
done
[ -x "$EX/generate" ] && same_as_cli "generate (C)" "$("$EX/generate" "$MODEL" "$prompt" 40 2>/dev/null)"
check "server_threads with 8 threads" "$EX/server_threads" "$MODEL" 8
# the default model path works from the repo root and from elsewhere
if [ -x "$EX/generate" ] && [ -f "$ROOT/../shared/models/stories260K/stories260K.gguf" ]; then
    check "generate finds the default model" bash -c "cd '$ROOT' && '$EX/generate' >/dev/null"
    check "generate finds it from another directory" bash -c "cd / && '$EX/generate' >/dev/null"
fi
check "generate fails on a bad path" bash -c "! '$EX/generate' /nonexistent.gguf"

if command -v python3 >/dev/null && [ -e "$BUILD/libampr.so" ] && ! ldd "$BUILD/libampr.so" | grep -q libasan; then
    export AMPR_LIBRARY=$BUILD/libampr.so
    for e in generate stream_cancel server_threads; do
        check "python/$e.py runs" python3 "$ROOT/examples/python/$e.py" "$MODEL"
    done
    same_as_cli "generate.py" "$(python3 "$ROOT/examples/python/generate.py" "$MODEL" "$prompt" 40 2>/dev/null)"
    check "generate.py fails on a bad path" bash -c "! python3 '$ROOT/examples/python/generate.py' /nonexistent.gguf"
else
    skip "python examples (no python3, no shared library, or a sanitizer build)"
fi
summary
