#!/usr/bin/env bash
# Gives the node swap in compressed RAM (zram), where frozen instances' memory goes
# (`pool.sleep = "auto"` freezes idle instances when the node has swap, and stops them otherwise;
# docs/instances.md#sleep-and-wake). Idempotent: a node that already has swap is left alone.
# Sizes: `disksize` is uncompressed (OpenClaw: ~0.6-0.7 GiB per frozen instance), `mem_limit`
# caps the RAM the compressed pages may take (they compress about 2.7:1 with lzo-rle, measured).
# Usage: scripts/setup-swap.sh [DISKSIZE] [MEM_LIMIT]   (default 12G 5G)
set -euo pipefail
DISKSIZE="${1:-12G}"
MEM_LIMIT="${2:-5G}"
if [ -n "$(swapon --show --noheadings 2>/dev/null)" ]; then
    echo "setup-swap: the node has swap already" >&2
    exit 0
fi
command -v modprobe >/dev/null && modprobe zram 2>/dev/null || true
dev=/sys/block/zram0
if [ ! -e "$dev" ] || [ ! -e /dev/zram0 ]; then
    echo "setup-swap: no zram device here; idle instances will be stopped instead of frozen" >&2
    exit 0
fi
if [ "$(cat "$dev/disksize")" = 0 ]; then
    grep -qw lzo-rle "$dev/comp_algorithm" && echo lzo-rle >"$dev/comp_algorithm"
    echo "$DISKSIZE" >"$dev/disksize"
    echo "$MEM_LIMIT" >"$dev/mem_limit"
fi
mkswap /dev/zram0 >/dev/null
swapon -p 100 /dev/zram0
echo "setup-swap: zram swap on /dev/zram0 ($DISKSIZE, at most $MEM_LIMIT of RAM)" >&2
