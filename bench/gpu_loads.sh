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
  # The peer's Triton cache (flash-linear-attention's kernels, for Qwen3.5) starts empty too.
  jit_forge=$(mktemp -d) jit_peer=$(mktemp -d) triton_peer=$(mktemp -d)
  CUDA_CACHE_PATH=$jit_forge record forge "$arch load first" load_seconds "$ck"
  CUDA_CACHE_PATH=$jit_forge record forge "$arch load again" load_seconds "$ck"
  export TRITON_CACHE_DIR=$triton_peer
  CUDA_CACHE_PATH=$jit_peer record peer "$arch load first" python3 "$peer/bench_torch.py" --model "$ck" --task load
  CUDA_CACHE_PATH=$jit_peer record peer "$arch load again" python3 "$peer/bench_torch.py" --model "$ck" --task load
  find "$jit_forge" -type f -printf "$arch %s %P\n" | sort -n >> "$out/forge-jit-cache.txt"
done
