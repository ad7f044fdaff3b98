#!/usr/bin/env bash
# Quick start: installs what building needs, then runs `clawdeploy serve` on the embedded default
# (SQLite under ./data, http://app.localhost:8080). Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo run --release --bin clawdeploy -- serve "$@"
