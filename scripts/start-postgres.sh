#!/usr/bin/env bash
# Install (if missing) and start a local PostgreSQL for tests, on loopback only.
# Idempotent; meant to run as root on Debian 12. Prints the connection URL on stdout,
# everything else goes to stderr, so `URL=$(scripts/start-postgres.sh)` works.
set -euo pipefail

PG_USER=clawdeploy
PG_PASS=clawdeploy
PG_DB=clawdeploy_test
PG_PORT=5432
URL="postgres://${PG_USER}:${PG_PASS}@127.0.0.1:${PG_PORT}/${PG_DB}"

log() { echo "start-postgres: $*" >&2; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y postgresql >&2; then
        apt-get update >&2
        apt-get install -y postgresql >&2
    fi
fi

# The newest installed major version.
PG_VER=$(ls /usr/lib/postgresql | sort -n | tail -1)
CLUSTER=main

if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "${PG_VER} ${CLUSTER}"; then
    log "creating cluster ${PG_VER}/${CLUSTER}"
    pg_createcluster "${PG_VER}" "${CLUSTER}" -p "${PG_PORT}" >&2
fi

CONF_DIR="/etc/postgresql/${PG_VER}/${CLUSTER}"
# Loopback only, on the expected port.
# Settings go in a conf.d drop-in (Debian's postgresql.conf includes conf.d); a
# listen_addresses line in postgresql.conf itself is removed so the drop-in wins.
pg_conftool "${PG_VER}" "${CLUSTER}" remove listen_addresses >&2 || true
mkdir -p "${CONF_DIR}/conf.d"
cat >"${CONF_DIR}/conf.d/clawdeploy.conf" <<CONF
listen_addresses = '127.0.0.1'
port = ${PG_PORT}
CONF
chown -R postgres:postgres "${CONF_DIR}/conf.d" 2>/dev/null || true
# Password (scram) auth for TCP from loopback; Debian's default already does this, make sure.
HBA="${CONF_DIR}/pg_hba.conf"
if ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+(scram-sha-256|md5)' "$HBA"; then
    echo "host all all 127.0.0.1/32 scram-sha-256" >>"$HBA"
fi

status=$(pg_lsclusters -h | awk -v v="$PG_VER" -v c="$CLUSTER" '$1==v && $2==c {print $4}')
if [ "$status" != "online" ]; then
    log "starting cluster ${PG_VER}/${CLUSTER}"
    pg_ctlcluster "${PG_VER}" "${CLUSTER}" start >&2 || {
        # A stale pid file from an unclean stop blocks the start; a live postmaster keeps it
        # (after an unclean stop it may spend minutes in crash recovery before it is online).
        PID_FILE="/var/lib/postgresql/${PG_VER}/${CLUSTER}/postmaster.pid"
        pid=$(head -n 1 "$PID_FILE" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "postmaster ${pid} is still starting (crash recovery?); waiting for it"
        else
            rm -f "$PID_FILE"
            pg_ctlcluster "${PG_VER}" "${CLUSTER}" start >&2
        fi
    }
else
    pg_ctlcluster "${PG_VER}" "${CLUSTER}" reload >&2 || true
fi

# Wait until it accepts connections (crash recovery of a large data directory takes minutes).
for _ in $(seq 1 600); do
    if pg_isready -q -h 127.0.0.1 -p "${PG_PORT}"; then break; fi
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "${PG_PORT}" >&2

psql_su() { (cd / && runuser -u postgres -- psql -p "${PG_PORT}" -v ON_ERROR_STOP=1 -qtA "$@"); }

if [ "$(psql_su -c "SELECT 1 FROM pg_roles WHERE rolname='${PG_USER}'")" != "1" ]; then
    log "creating role ${PG_USER}"
    psql_su -c "CREATE ROLE ${PG_USER} LOGIN PASSWORD '${PG_PASS}' CREATEDB"
fi
if [ "$(psql_su -c "SELECT 1 FROM pg_database WHERE datname='${PG_DB}'")" != "1" ]; then
    log "creating database ${PG_DB}"
    psql_su -c "CREATE DATABASE ${PG_DB} OWNER ${PG_USER}"
fi

echo "${URL}"
