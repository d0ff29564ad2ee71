#!/usr/bin/env bash
# Load to first token, forge beside the peer, first on a fresh machine (each tool starts with an empty
# driver JIT cache, CUDA_CACHE_PATH) and again: the load rows of bench/gpu_vs_peer.sh alone, for
# checking what a change to start-up did without the rest of that benchmark.
#
#   bench/gpu_loads.sh FORGE_BINARY PEER_DIR OUT_DIR [ARCH ...]   (default ARCH: qwen2.5-0.5b)
set -uo pipefail
forge=$1 peer=$2 out=$3
shift 3
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen2.5-0.5b)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl ckpts=${CKPT_DIR:-/tmp/forge-bench}
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
for arch in "${archs[@]}"; do
  ck=$(checkpoint "$arch")
  load_rows "$arch" "$ck"
  find "$jit_forge" -type f -printf "$arch %s %P\n" | sort -n >> "$out/forge-jit-cache.txt"
done
