#!/usr/bin/env bash
# issue 13's benchmark: forge beside the peer (transformers + flash-linear-attention, what transformers'
# own warning tells users to install) on random Qwen3.5 checkpoints of the published geometry, in one
# run on one GPU: eval (8 x 1024, bf16), greedy generation (batch 1, a 43-token prompt, 128 new tokens)
# and load to first token, first with empty JIT caches for both (CUDA's, and Triton's for fla's
# kernels) and again. Then bench/qwen35_table.py writes the ratios with the card's name.
#
#   bench/gpu_qwen35.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]   (default: qwen3.5-0.8b qwen3.5-9b)
#
# The peer needs fla-core and flash-linear-attention importable (PYTHONPATH). LOADS=0 skips the load
# measurements (each reloads the checkpoint: minutes at 27B) and AGAIN=0 only the second, warm ones;
# WINDOWS (default 120) sets forge's eval windows. Only the "load first" runs start from empty JIT
# caches: every other run shares one warm CUDA cache and one Triton cache, as a user's would be. On
# 2026-12-02 (H200) each peer eval and generation compiled fla's kernels afresh (68-74 s a run, wall_s
# in results.jsonl), and two calls of 0.8b + 9b ran out of the 600 s limit in the 9b peer's generation.
# forge's eval also prints the memory budget's predicted peak (predicted_peak_bytes), which the table
# sets beside the measured one.
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen3.5-0.8b qwen3.5-9b)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl
ckpts=${CKPT_DIR:-/tmp/forge-bench} peer_steps=${PEER_STEPS:-10} windows=${WINDOWS:-120}
mkdir -p "$out" "$ckpts"
CUDA_CACHE_PATH=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
export CUDA_CACHE_PATH TRITON_CACHE_DIR
. "$(dirname "$0")/common.sh"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
python3 -c 'import fla, transformers, torch; print("fla", fla.__version__, "transformers", transformers.__version__, "torch", torch.__version__)' | tee "$out/peer-versions.txt"
for arch in "${archs[@]}"; do
  ck=$ckpts/$arch
  [ -f "$ck/config.json" ] || python3 "$peer/models.py" --arch "$arch" --out "$ck" --tokenizer "$here/examples/tiny-qwen35" >> "$out/stderr.log" 2>&1
  cp "$ck/config.json" "$out/$arch.config.json"
  if [ "${LOADS:-1}" = 1 ]; then
    jit_forge=$(mktemp -d) jit_peer=$(mktemp -d) triton_peer=$(mktemp -d)
    CUDA_CACHE_PATH=$jit_forge record forge "$arch load first" load_seconds "$ck"
    CUDA_CACHE_PATH=$jit_peer TRITON_CACHE_DIR=$triton_peer record peer "$arch load first" python3 "$peer/bench_torch.py" --model "$ck" --task load
    if [ "${AGAIN:-1}" = 1 ]; then
      CUDA_CACHE_PATH=$jit_forge record forge "$arch load again" load_seconds "$ck"
      CUDA_CACHE_PATH=$jit_peer TRITON_CACHE_DIR=$triton_peer record peer "$arch load again" python3 "$peer/bench_torch.py" --model "$ck" --task load
    fi
  fi
  record forge "$arch eval" "$forge" eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows "$windows" --warmup-batches 2
  record peer "$arch eval" python3 "$peer/bench_torch.py" --model "$ck" --task eval --batch 8 --seq 1024 --steps "$peer_steps"
  record forge "$arch generate" "$forge" generate -q --json --device cuda --model "$ck" --prompt "$prompt" \
    --max-new-tokens 128 --ignore-eos
  record peer "$arch generate" python3 "$peer/bench_torch.py" --model "$ck" --task generate --new-tokens 128
  [ -n "${PROFILE_ARCH:-}" ] && [ "$arch" = "$PROFILE_ARCH" ] && FORGE_PROFILE=1 "$forge" eval -q --json --device cuda \
    --model "$ck" --data "$data" --seq-len 1024 --batch-size 8 --max-windows 64 --warmup-batches 2 2> "$out/profile-eval-$arch.txt" > /dev/null
  rm -rf "$ck"  # the next, larger checkpoint needs the disk
done
python3 "$here/bench/qwen35_table.py" "$out" | tee "$out/table.md"
