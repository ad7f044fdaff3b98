#!/usr/bin/env bash
# Installs the Debian 12 packages that building ClawDeploy needs (run as root; idempotent).
# Pingora needs cmake (zlib-ng); clang + mold link its ~360 crates quickly (see .cargo/config.toml).
set -euo pipefail

PACKAGES=(cmake clang mold pkg-config "$@")
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; }
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi
