#!/usr/bin/env bash
# The process runtime's OpenClaw (development only, NOT isolated): the pinned gateway run directly
# with the pinned Node that `clawdeploy image build` installed in its cache (without Docker it
# installs only those). The process runtime sets PORT, BIND and DATA_DIR and writes the idle
# config (which admits nobody) into $DATA_DIR/openclaw.json before the first start.
set -eu
CACHE="${CLAWDEPLOY_IMAGE_CACHE:-/var/cache/clawdeploy/openclaw-image}"
node_dir="$CACHE/node-${NODE_VERSION:-24.21.0}"
oc_dir="$CACHE/openclaw-${OPENCLAW_VERSION:-2026.9.6}"
if [ ! -x "$oc_dir/node_modules/.bin/openclaw" ] || [ ! -x "$node_dir/bin/node" ]; then
    echo "clawdeploy-openclaw: OpenClaw is not installed in $CACHE: run \`clawdeploy image build\`" >&2
    exit 64
fi
export PATH="$node_dir/bin:$oc_dir/node_modules/.bin:$PATH"
export HOME="$DATA_DIR" OPENCLAW_STATE_DIR="$DATA_DIR" OPENCLAW_CONFIG_PATH="$DATA_DIR/openclaw.json" \
    OPENCLAW_WORKSPACE_DIR="$DATA_DIR/workspace" OPENCLAW_CONFIG_READONLY=1 OPENCLAW_NO_AUTO_UPDATE=1 \
    OPENCLAW_SKIP_CHANNELS=1 OPENCLAW_DISABLE_BONJOUR=1 CLAWHUB_DISABLE_TELEMETRY=1 NODE_ENV=production
mkdir -p "$OPENCLAW_WORKSPACE_DIR"
if [ ! -s "$OPENCLAW_CONFIG_PATH" ]; then
    echo "clawdeploy-openclaw: no $OPENCLAW_CONFIG_PATH; the platform writes it before starting the instance" >&2
    exit 64
fi
exec openclaw gateway --bind loopback --port "$PORT"
