#!/usr/bin/env bash
# Quick start: installs what building needs, then runs `clawdeploy serve` on the embedded default
# (SQLite under ./data, http://app.localhost:8080). OpenClaw is prepared on first use, with
# progress: with a Docker Engine (started here if it is installable) its image, and instances run in
# hardened containers; without one, its pinned Node and OpenClaw, and instances run as local
# processes (not isolated; development only). Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The patched Pingora crates (vendor/README.md); quick when they are already there.
scripts/vendor-pingora.sh
cargo build --release --bin clawdeploy
scripts/start-docker.sh || echo "run.sh: no Docker Engine: OpenClaw will run as local processes" >&2
cargo run --quiet --release --bin clawdeploy -- image build \
    || echo "run.sh: OpenClaw could not be prepared; instances will not start (see above)" >&2
exec cargo run --quiet --release --bin clawdeploy -- serve "$@"
