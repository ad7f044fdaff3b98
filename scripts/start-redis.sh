#!/usr/bin/env bash
# Install (if missing) and start a local Redis for tests, on loopback only, without persistence.
# Idempotent; meant to run as root on Debian 12. Prints the URL on stdout, everything else goes to
# stderr, so `URL=$(scripts/start-redis.sh)` works. Tests that kill Redis start their own
# redis-server on an ephemeral port instead (the binary this installs).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=6379
URL="redis://127.0.0.1:${PORT}"
log() { echo "start-redis: $*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    scripts/install-deps.sh redis-server >&2
fi

if redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG; then
    log "already running on 127.0.0.1:${PORT}"
else
    log "starting redis-server on 127.0.0.1:${PORT}"
    redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes >&2
    for _ in $(seq 1 50); do
        redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG || { log "redis-server did not start"; exit 1; }
fi
echo "$URL"
