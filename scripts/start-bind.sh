#!/usr/bin/env bash
# Install (if missing) and start a BIND9 for the TLS tests, on loopback only: authoritative for
# the test zones `clawdeploy.test` (the test base domain: DNS-01 TXT records) and
# `customer.test` (customers' own domains), dynamic updates (RFC 2136) allowed only with a
# TSIG key. Idempotent; meant to run as root on Debian 12. Prints `export` lines for the tests
# on stdout (eval them), everything else goes to stderr.
set -euo pipefail

DIR=/var/tmp/clawdeploy-bind
PORT=${CLAWDEPLOY_TEST_BIND_PORT:-5353}
KEY_NAME=clawdeploy-test-key
ZONES=(clawdeploy.test customer.test)

log() { echo "start-bind: $*" >&2; }

if ! command -v named >/dev/null 2>&1 || ! command -v tsig-keygen >/dev/null 2>&1 || ! command -v dig >/dev/null 2>&1; then
    log "installing bind9"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq bind9 bind9-utils bind9-dnsutils >&2 || { apt-get update -qq >&2 && apt-get install -y -qq bind9 bind9-utils bind9-dnsutils >&2; }
fi

mkdir -p "$DIR/zones"
if [ ! -s "$DIR/tsig.secret" ]; then
    tsig-keygen -a hmac-sha256 "$KEY_NAME" | sed -n 's/.*secret "\(.*\)";.*/\1/p' >"$DIR/tsig.secret"
fi
SECRET=$(cat "$DIR/tsig.secret")

answers() { dig +short +time=1 +tries=1 -p "$PORT" @127.0.0.1 clawdeploy.test SOA >/dev/null 2>&1 && [ -n "$(dig +short +time=1 +tries=1 -p "$PORT" @127.0.0.1 clawdeploy.test SOA)" ]; }

# Recursion (loopback only) so a customer's CNAME into the base domain's zone is followed in
# one answer, as a public resolver would; nothing outside the test zones is reachable anyway.
{
    echo "options { directory \"$DIR\"; listen-on port $PORT { 127.0.0.1; }; listen-on-v6 { none; };"
    echo "  pid-file \"$DIR/named.pid\"; recursion yes; allow-recursion { 127.0.0.1; };"
    echo "  allow-query { 127.0.0.1; }; dnssec-validation no; };"
    echo "key \"$KEY_NAME\" { algorithm hmac-sha256; secret \"$SECRET\"; };"
    echo "controls { };"
    for zone in "${ZONES[@]}"; do
        echo "zone \"$zone\" { type primary; file \"zones/$zone.db\"; update-policy { grant $KEY_NAME subdomain $zone. ANY; }; };"
    done
} >"$DIR/named.conf.new"

if ! answers || ! cmp -s "$DIR/named.conf.new" "$DIR/named.conf"; then
    mv "$DIR/named.conf.new" "$DIR/named.conf"
    for zone in "${ZONES[@]}"; do
        # A fresh zone each start: records of earlier runs (and their journals) are dropped.
        rm -f "$DIR/zones/$zone.db.jnl"
        cat >"$DIR/zones/$zone.db" <<ZONE
\$TTL 5
@   IN SOA ns.$zone. hostmaster.$zone. ( 1 60 60 600 5 )
    IN NS  ns.$zone.
ns  IN A   127.0.0.1
ZONE
    done
    chown -R bind:bind "$DIR" 2>/dev/null || true
    if [ -f "$DIR/named.pid" ] && kill -0 "$(cat "$DIR/named.pid")" 2>/dev/null; then
        kill "$(cat "$DIR/named.pid")" || true
        sleep 1
    fi
    log "starting named on 127.0.0.1:$PORT"
    named -c "$DIR/named.conf" -u bind >&2 || named -c "$DIR/named.conf" >&2
    for _ in $(seq 1 50); do
        if answers; then break; fi
        sleep 0.2
    done
    answers || { log "named does not answer on 127.0.0.1:$PORT"; exit 1; }
fi

echo "export CLAWDEPLOY_TEST_BIND_ADDR=127.0.0.1:$PORT"
echo "export CLAWDEPLOY_TEST_BIND_KEY_NAME=$KEY_NAME"
echo "export CLAWDEPLOY_TEST_BIND_SECRET=$SECRET"
