#!/usr/bin/env bash
# Install the Debian packages libampr needs to build and test, if missing.
# Used by `make run` and by .ci/run. Needs root (or sudo) only when something
# is missing.
set -euo pipefail
pkgs=(gcc make libc6-dev libjansson-dev libcmocka-dev libpcre2-dev pkg-config)
pkgs+=("$@")
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
