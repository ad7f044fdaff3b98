#!/usr/bin/env bash
# Quick start: installs what building needs, then runs `clawdeploy serve` on the embedded default
# (SQLite under ./data, http://app.localhost:8080). With a Docker Engine (started here if it is
# installable) the OpenClaw image is built on first use, with progress, and instances run in
# hardened containers; without one, accounts and the API work and instances stay `provisioning`.
# Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bin clawdeploy
if scripts/start-docker.sh; then
    cargo run --quiet --release --bin clawdeploy -- image build \
        || echo "run.sh: the OpenClaw image could not be built; instances will not start (see above)" >&2
else
    echo "run.sh: no Docker Engine; instances will not start (see README, [runtime])" >&2
fi
exec cargo run --quiet --release --bin clawdeploy -- serve "$@"
