#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs and starts every
# package and service the tests need, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-aiosmtpd: the real SMTP server the mail tests send verification and reset links to.
# chromium + chromium-driver: the dashboard's browser tests (tests/it/dashboard.rs).
# prometheus: tests/it/prometheus.rs runs its own Prometheus scraping an edge (no system service).
scripts/install-deps.sh python3-aiosmtpd chromium chromium-driver prometheus
scripts/check-docs.sh    # every relative link and #anchor in README.md and docs/*.md resolves
# The patched Pingora crates every build needs (vendor/README.md); quick when already there.
scripts/vendor-pingora.sh
# The 1,000-WebSocket test needs a few thousand file descriptors across test and edge processes.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# Every service below is started here: a test whose service is missing fails (never skips).
unset CLAWDEPLOY_SKIP_MISSING_SERVICES

# Store and control-plane tests also run against a real PostgreSQL.
CLAWDEPLOY_TEST_POSTGRES_URL="$(scripts/start-postgres.sh)"
export CLAWDEPLOY_TEST_POSTGRES_URL
# Each PostgreSQL test creates its own database (cdtest_*); drop those left by earlier runs
# (databases in use by a running test are left alone).
su postgres -c "psql -qAt" >/dev/null 2>&1 <<'SQL' || true
SELECT format('DROP DATABASE %I', datname) FROM pg_database WHERE datname LIKE 'cdtest\_%' \gexec
SQL

# Shared counters (tests/it/shared_counters.rs) use Debian's redis-server; tests that kill Redis
# start their own on an ephemeral port.
CLAWDEPLOY_TEST_REDIS_URL="$(scripts/start-redis.sh)"
export CLAWDEPLOY_TEST_REDIS_URL

# TLS tests (issue #6): a real BIND9 (RFC 2136 updates with TSIG; customers' DNS and DNS-01) and
# Debian's Pebble ACME server resolving through it, validating HTTP-01 on the ACME tests' edge port.
eval "$(scripts/start-bind.sh)"
eval "$(scripts/start-pebble.sh)"

# Instance runtime tests run against a real Docker Engine with the locally built fixture image
# (a test program speaking a subset of the gateway protocol; not OpenClaw) and its binary.
scripts/start-docker.sh
# Swap (zram) for frozen instances: the sleep tests freeze OpenClaw (tests/it/openclaw_lifecycle.rs).
scripts/setup-swap.sh
docker ps -aq --filter label=clawdeploy.test=true | xargs -r docker rm -f >/dev/null
docker volume ls -q --filter label=clawdeploy.test=true | xargs -r docker volume rm >/dev/null
CLAWDEPLOY_FIXTURE_IMAGE="$(scripts/build-fixture-image.sh)"
export CLAWDEPLOY_FIXTURE_IMAGE
cargo build --quiet -p clawdeploy-fixture

# The real OpenClaw (tests/it/openclaw.rs): its image, built locally (Debian by debootstrap, Node
# and OpenClaw from the npm registry, pinned). A few minutes on a fresh machine, seconds cached.
echo "test.sh: building the OpenClaw image (progress below)" >&2
CLAWDEPLOY_OPENCLAW_IMAGE="$(scripts/build-openclaw-image.sh)"
export CLAWDEPLOY_OPENCLAW_IMAGE

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
