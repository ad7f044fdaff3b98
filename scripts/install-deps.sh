#!/usr/bin/env bash
# Installs the Debian 12 packages that building ClawDeploy needs (run as root; idempotent).
# Pingora needs cmake (zlib-ng); clang + mold link its ~360 crates quickly (see .cargo/config.toml);
# curl and patch: scripts/vendor-pingora.sh downloads Pingora's crates and applies our patches.
set -euo pipefail

# Packages whose system service apt must not start: the tests run these programs as their own
# processes on their own ports (Prometheus would otherwise bind :9090 for good). They are installed
# without recommends (no node exporter) under a policy-rc.d that refuses service starts (honoured by
# invoke-rc.d and deb-systemd-invoke); the previous policy-rc.d, if any, is put back.
NO_START=(prometheus)

PACKAGES=(cmake clang mold pkg-config curl patch "$@")
missing=()
no_start_missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && continue
    if [[ " ${NO_START[*]} " == *" $pkg "* ]]; then no_start_missing+=("$pkg"); else missing+=("$pkg"); fi
done
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    apt-get install -y -qq "${missing[@]}" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; }
fi
if [ ${#no_start_missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${no_start_missing[*]} (its service is not started)" >&2
    policy=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$policy" ]; then saved="$(mktemp)"; cp -p "$policy" "$saved"; fi
    restore_policy() { if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi; }
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    apt-get install -y -qq --no-install-recommends "${no_start_missing[@]}" >&2 \
        || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${no_start_missing[@]}" >&2; }
    restore_policy
    trap - EXIT
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi
