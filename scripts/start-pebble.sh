#!/usr/bin/env bash
# Install (if missing) and start Pebble, the ACME test CA (Debian's pebble 2.4), on loopback for
# the TLS tests. It resolves names through the test BIND (scripts/start-bind.sh, started first)
# and validates HTTP-01 on port $CLAWDEPLOY_TEST_PEBBLE_HTTP_PORT (default 5002), where ACME
# tests run their edge's HTTP listener. Idempotent; as root on Debian 12. Prints `export` lines
# for the tests on stdout (eval them), everything else on stderr.
set -euo pipefail

DIR=/var/tmp/clawdeploy-pebble
HTTP_PORT=${CLAWDEPLOY_TEST_PEBBLE_HTTP_PORT:-5002}
DNS=${CLAWDEPLOY_TEST_BIND_ADDR:-127.0.0.1:5353}
LISTEN=127.0.0.1:14000
MGMT=127.0.0.1:15000

log() { echo "start-pebble: $*" >&2; }

if ! command -v pebble >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    log "installing pebble"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq pebble curl openssl >&2 || { apt-get update -qq >&2 && apt-get install -y -qq pebble curl openssl >&2; }
fi
mkdir -p "$DIR"
cd "$DIR"

# Debian's package ships no certificates for Pebble's own HTTPS: a P-256 CA and a localhost cert.
if [ ! -s ca.pem ] || [ ! -s cert.pem ]; then
    log "creating Pebble's API certificates"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=clawdeploy pebble test CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout key.pem -out cert.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in cert.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile ext.cnf -out cert.pem 2>/dev/null
fi

cat >config.json <<JSON
{"pebble": {"listenAddress": "$LISTEN", "managementListenAddress": "$MGMT",
  "certificate": "$DIR/cert.pem", "privateKey": "$DIR/key.pem",
  "httpPort": $HTTP_PORT, "tlsPort": 5001, "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}
JSON

up() { curl -sf --cacert ca.pem "https://$LISTEN/dir" >/dev/null 2>&1; }

wanted="$HTTP_PORT $DNS"
if ! up || [ "$(cat running.args 2>/dev/null)" != "$wanted" ]; then
    if [ -f pebble.pid ] && kill -0 "$(cat pebble.pid)" 2>/dev/null; then
        kill "$(cat pebble.pid)" || true
        sleep 1
    fi
    log "starting pebble on $LISTEN (HTTP-01 port $HTTP_PORT, DNS $DNS)"
    # No random nonce rejections or validation sleeps: tests are about our client, not retries.
    PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
        nohup pebble -config config.json -dnsserver "$DNS" >pebble.log 2>&1 &
    echo $! >pebble.pid
    echo "$wanted" >running.args
    for _ in $(seq 1 100); do
        if up; then break; fi
        sleep 0.1
    done
    up || { log "pebble did not start:"; tail -20 pebble.log >&2; exit 1; }
fi
# Issued certificates chain to a root Pebble generates at each start.
curl -sf --cacert ca.pem "https://$MGMT/roots/0" >issuer-root.pem

echo "export CLAWDEPLOY_TEST_PEBBLE_DIR=$DIR"
echo "export CLAWDEPLOY_TEST_PEBBLE_URL=https://$LISTEN/dir"
echo "export CLAWDEPLOY_TEST_PEBBLE_HTTP_PORT=$HTTP_PORT"
