#!/usr/bin/env bash
# Installs (if missing) and starts a Docker Engine for the runtime tests (as root; idempotent).
# No registry is reachable here: images are built locally (see scripts/build-fixture-image.sh).
set -euo pipefail

log() { echo "start-docker: $*" >&2; }

if ! command -v dockerd >/dev/null 2>&1; then
    log "installing docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq docker.io iptables >&2 || { apt-get update -qq >&2 && apt-get install -y -qq docker.io iptables >&2; }
fi
if docker info >/dev/null 2>&1; then
    if ! docker info --format '{{json .SecurityOptions}}' 2>/dev/null | grep -q 'name=userns'; then
        log "note: the running dockerd does not remap user namespaces; restart it with --userns-remap=default (docs/security.md)"
    fi
    exit 0
fi
log "starting dockerd (user namespaces remapped: container uids are dockremap's subordinate uids on this host)"
mkdir -p /var/log
# --userns-remap=default creates the user dockremap and its /etc/subuid and /etc/subgid ranges on
# first start; see docs/security.md, "User namespaces".
nohup dockerd --userns-remap=default >/var/log/clawdeploy-dockerd.log 2>&1 &
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then
        log "dockerd is up"
        exit 0
    fi
    sleep 0.5
done
log "dockerd did not come up; its log:"
tail -30 /var/log/clawdeploy-dockerd.log >&2
exit 1
