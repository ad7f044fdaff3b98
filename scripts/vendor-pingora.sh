#!/usr/bin/env bash
# Generates vendor/pingora-core and vendor/pingora-proxy, the patched Pingora crates that the
# workspace's [patch.crates-io] points at: the exact crates.io tarballs (sha256 from
# vendor/patches/crates.sha256), extracted, with the series vendor/patches/<crate>/*.patch
# applied in order by `patch -p1`. See vendor/README.md.
#
# Idempotent and quick when nothing changed: each generated directory holds a stamp, the hash of
# its tarball checksum and its patches, and the hash of the tree it generated. A changed, added or
# removed patch re-extracts that crate; so does a tree that no longer matches (files deleted by a
# checkout of an older commit, or edited by hand: those are moved aside to vendor/.<crate>.prev, not
# lost). Tarballs are kept in vendor/.cache, so re-extracting needs no network.
#
# Usage: scripts/vendor-pingora.sh [--force]   (--force re-extracts even when the stamps match)
set -euo pipefail
cd "$(dirname "$0")/.."

CRATES=(pingora-core pingora-proxy)
SUMS=vendor/patches/crates.sha256
CACHE=vendor/.cache
STAMP=.clawdeploy-vendored
force=false
case "${1:-}" in
    --force) force=true ;;
    "") ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

die() { echo "vendor-pingora: error: $*" >&2; exit 1; }

# The version the patches are for is the one Cargo.lock resolved `pingora` to: Cargo.toml pins
# `pingora = "=X.Y.Z"`, because Cargo silently ignores a [patch] whose version no longer matches.
locked="$(awk '/^name = "pingora"$/ { getline; if ($1 == "version") { gsub(/"/, "", $3); print $3; exit } }' Cargo.lock)"
[ -n "$locked" ] || die "no pingora package in Cargo.lock"

# One stamp hash per crate: its tarball's checksum line and its patch series, in order.
patches_of() { find "vendor/patches/$1" -maxdepth 1 -name '*.patch' | LC_ALL=C sort; }
stamp_of() {
    local crate="$1"
    { grep -F "  $crate-$locked.crate" "$SUMS"; patches_of "$crate" | while read -r p; do
        echo "== $(basename "$p")"; cat "$p"; done; } | sha256sum | cut -d' ' -f1
}

# The hash of a generated tree: every file but the stamp, by path and content.
tree_of() {
    (cd "$1" && find . -type f ! -name "$STAMP" -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
        | sha256sum | cut -d' ' -f1
}

todo=()
for crate in "${CRATES[@]}"; do
    if ! $force && [ -f "vendor/$crate/$STAMP" ] \
        && [ "$(cat "vendor/$crate/$STAMP")" = "$(stamp_of "$crate") $(tree_of "vendor/$crate")" ]; then
        continue
    fi
    todo+=("$crate")
done
[ ${#todo[@]} -eq 0 ] && exit 0

# Only one run generates at a time (test.sh and run.sh may start together).
if command -v flock >/dev/null 2>&1; then
    exec 9>vendor/.vendor-pingora.lock
    flock 9
fi
for tool in curl sha256sum tar patch; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (scripts/install-deps.sh installs it)"
done
mkdir -p "$CACHE"

for crate in "${todo[@]}"; do
    file="$crate-$locked.crate"
    want="$(awk -v f="$file" '$2 == f { print $1 }' "$SUMS")"
    [ -n "$want" ] || die "$SUMS has no checksum for $file. Cargo.lock resolved pingora to $locked; \
the patches are for the version in $SUMS. Pin pingora back (Cargo.toml), or move the patch series \
to $locked (vendor/README.md, \"Moving to a new Pingora\")."
    tarball="$CACHE/$file"
    if [ ! -f "$tarball" ] || [ "$(sha256sum "$tarball" | cut -d' ' -f1)" != "$want" ]; then
        echo "vendor-pingora: downloading $file from crates.io" >&2
        curl -fsSL --retry 3 -o "$tarball.part" "https://static.crates.io/crates/$crate/$file" \
            || die "cannot download https://static.crates.io/crates/$crate/$file"
        mv "$tarball.part" "$tarball"
    fi
    got="$(sha256sum "$tarball" | cut -d' ' -f1)"
    [ "$got" = "$want" ] || { rm -f "$tarball"; die "$file: sha256 $got, expected $want ($SUMS)"; }

    # Build next to the target and swap at the end: a failing patch leaves no half-patched tree.
    work="vendor/.$crate.tmp"
    rm -rf "$work"
    mkdir -p "$work"
    # --touch: fresh mtimes, so Cargo rebuilds a file a removed patch turned back into the original.
    tar -xzf "$tarball" -C "$work" --strip-components=1 --touch --no-same-owner
    while read -r p; do
        [ -n "$p" ] || continue
        if ! out="$(patch -d "$work" -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch \
                --reject-file=- <"$p" 2>&1)"; then
            echo "$out" >&2
            rm -rf "$work"
            die "$p does not apply to $crate $locked (see above); vendor/$crate is left as it was"
        fi
    done < <(patches_of "$crate")
    echo "$(stamp_of "$crate") $(tree_of "$work")" >"$work/$STAMP"
    # A tree changed since it was generated (edits, or files a checkout of an older commit
    # deleted) is kept aside rather than lost.
    if [ -f "vendor/$crate/$STAMP" ] \
        && [ "$(cut -d' ' -f2 "vendor/$crate/$STAMP")" != "$(tree_of "vendor/$crate")" ]; then
        rm -rf "vendor/.$crate.prev"
        mv "vendor/$crate" "vendor/.$crate.prev"
        echo "vendor-pingora: vendor/$crate had changed since it was generated; regenerated, the changed tree is in vendor/.$crate.prev" >&2
    fi
    rm -rf "vendor/$crate"
    mv "$work" "vendor/$crate"
    echo "vendor-pingora: vendor/$crate = $crate $locked + $(patches_of "$crate" | wc -l) patch(es)" >&2
done
