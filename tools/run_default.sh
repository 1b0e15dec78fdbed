#!/usr/bin/env bash
# `make run`: generate from the default model -- the real stories260K from
# ../shared/models when present, else a small model with random weights that
# this project generates (its text is noise, but every code path runs).
set -euo pipefail
cli=${1:-build/ampr}
model=../shared/models/stories260K/stories260K.gguf
if [ ! -f "$model" ]; then
    model=build/tmp/random-tiny.gguf
    mkdir -p build/tmp
    [ -f "$model" ] || "$cli" gen-model "$model" --shape tiny
    echo "ampr: ../shared is absent; using a generated random model ($model)" >&2
fi
exec "$cli" run -m "$model" -p "${PROMPT:-Once upon a time}" -n "${N:-200}" --temp "${TEMP:-0}" --tier "${TIER:-auto}"
