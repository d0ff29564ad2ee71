#!/usr/bin/env bash
# The benchmark of bench/gpu_vs_peer.sh run twice in one call on one card, for two forge binaries (a
# change and the commit before it), each beside the same peer, so a restructuring can show that
# nothing got slower: both ratio tables come from one machine and one peer.
#
#   bench/gpu_before_after.sh FORGE_AFTER FORGE_BEFORE PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]
#
# Writes OUT_DIR/{after,before}.tar.xz (each run's folder) and OUT_DIR/tables.md (both tables and the
# GPU test of forge-kernels when FORGE_KERNELS_TEST names its binary).
set -uo pipefail
after=$1 before=$2 peer=$3 data=$4 out=$5
shift 5
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
if [ -n "${FORGE_KERNELS_TEST:-}" ]; then
  { echo "## forge-kernels GPU test"; "$FORGE_KERNELS_TEST" --nocapture 2>&1 | tail -5; } > "$out/kernels-test.txt"
fi
for side in after before; do
  binary=$after
  [ $side = before ] && binary=$before
  "$here/bench/gpu_vs_peer.sh" "$binary" "$peer" "$data" "$work/$side" "$@" > /dev/null 2>&1
  { echo "## $side ($binary)"; cat "$work/$side/table.md"; echo; } >> "$out/tables.md"
  tar -C "$work" -cJf "$out/$side.tar.xz" "$side"
done
cat "$out/tables.md"
