#!/usr/bin/env bash
# Builds the test fixture image `clawdeploy-fixture:test` locally: FROM scratch with a statically
# linked clawdeploy-fixture (a test program speaking a subset of the gateway protocol; not OpenClaw).
# No registry is involved. Prints the image name.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${1:-clawdeploy-fixture:test}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

# crt-static makes glibc link statically; --target keeps the flag away from build scripts.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p clawdeploy-fixture \
    --target x86_64-unknown-linux-gnu >&2
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$TARGET_DIR/x86_64-unknown-linux-gnu/release/clawdeploy-fixture" "$ctx/fixture"
mkdir -p "$ctx/data"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY --chown=65534:65534 data /data
COPY fixture /fixture
USER 65534:65534
EXPOSE 18789
ENTRYPOINT ["/fixture"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --network none --quiet --label clawdeploy.managed=true -t "$IMAGE" "$ctx" >&2
echo "$IMAGE"
