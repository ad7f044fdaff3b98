#!/usr/bin/env bash
# Side-by-side benchmark: clawdeploy vs nginx, HAProxy and Caddy (and the upstream directly).
#
#   benches/run.sh [--quick] [bench.py options: --scenarios a,b --targets x,y --tag NAME ...]
#
# Installs wrk, nginx, haproxy and caddy from Debian, builds clawdeploy (release) and benches/benchtool,
# then runs benches/bench.py, which writes benches/results/<date>-<scenario>.md. Everything listens on
# 127.0.0.1 only. Run as root on the 2-core Debian 12 machine; takes about 20 min (--quick: about 14).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

need=()
for tool in wrk nginx haproxy caddy; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's packages may start system services on :80; the benchmark uses its own instances only.
for svc in nginx haproxy caddy; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    echo "note: the system's $svc service is running; it is left alone (the benchmark uses ports 18081-18103)"
  fi
done

echo "building clawdeploy (release) and benchtool..."
(cd "$root" && cargo build --release --bin clawdeploy)
(cd "$here/benchtool" && cargo build --release)

echo "load before the run: $(uptime)"
exec python3 "$here/bench.py" \
  --clawdeploy "$CARGO_TARGET_DIR/release/clawdeploy" \
  --benchtool "$CARGO_TARGET_DIR/release/benchtool" "$@"
