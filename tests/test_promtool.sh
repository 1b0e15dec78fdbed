#!/usr/bin/env bash
# test_promtool.sh -- validate `ampr run --metrics` output with Prometheus's
# own checker: `promtool check metrics` parses the text exposition (format
# 0.0.4) and lints it (names, units, _total on counters only, HELP present).
#
# Generates a small random model, runs one request on int8 with f32 as the
# top tier (on random weights it escalates, so the escalation series are
# non-zero), and pipes the exposition from stderr into promtool. A broken
# exposition is fed too, to prove the checker is live.
#
# Skips (exit 0, saying so) when promtool is absent: Debian/Ubuntu package
# `prometheus`. Env: AMPR_CLI (default build/ampr), AMPR_TMP (default: mktemp).
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
    echo "test_promtool: SKIPPED: promtool not found (apt-get install prometheus)"
    exit 0
fi
root=$(cd "$(dirname "$0")/.." && pwd)
cli=${AMPR_CLI:-$root/build/ampr}

if [ ! -x "$cli" ]; then
    echo "test_promtool: FAILED: no CLI at $cli (make all first)" >&2
    exit 1
fi

if [ -n "${AMPR_TMP:-}" ]; then mkdir -p "$AMPR_TMP"; tmp=$(mktemp -d "$AMPR_TMP/promtool.XXXXXX")
else tmp=$(mktemp -d); fi
trap 'rm -rf "$tmp"' EXIT

"$cli" gen-model "$tmp/model.gguf" --shape tiny >/dev/null 2>&1
"$cli" run -m "$tmp/model.gguf" --config '{"tiers": ["f32", "fp16", "int8"]}' --tier int8 \
    -p "def f(x): return x * 2 + 1" -n 24 --temp 0 --quiet --metrics \
    >/dev/null 2>"$tmp/metrics.txt"

fail() { echo "test_promtool: FAILED: $*" >&2; exit 1; }
grep -q '^ampr_requests_total{tier="int8",finish="length"} 1$' "$tmp/metrics.txt" ||
    fail "the exposition lacks the request (first lines below)"$'\n'"$(head -5 "$tmp/metrics.txt")"
grep -q '^ampr_inter_token_latency_seconds_bucket{tier="int8",le="+Inf"} ' "$tmp/metrics.txt" ||
    fail "no inter-token latency histogram"

if ! out=$(promtool check metrics <"$tmp/metrics.txt" 2>&1); then
    fail "promtool check metrics rejected the exposition:"$'\n'"$out"
fi
[ -z "$out" ] || echo "$out"

# the control: promtool must reject a broken line
printf '# TYPE ampr_x_total counter\nampr_x_total{tier="a} 1\n' >"$tmp/bad.txt"
if promtool check metrics <"$tmp/bad.txt" >/dev/null 2>&1; then
    fail "promtool accepted a broken exposition; the check is not live"
fi

echo "test_promtool: PASSED: $(grep -vc "^#" "$tmp/metrics.txt") samples in" \
     "$(grep -c '^# TYPE' "$tmp/metrics.txt") families accepted by $(promtool --version 2>&1 | head -1)"
