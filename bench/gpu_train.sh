#!/usr/bin/env bash
# LoRA training, forge beside the PyTorch peer on one GPU, in one run: r 16 on q/k/v/o, batch 8 x 1024,
# bf16, with and without gradient checkpointing, on the peer's random checkpoint of each ARCH.
#
#   bench/gpu_train.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]   (default ARCH: qwen2.5-0.5b)
#
# BATCH overrides the batch size (default 8).
# forge: 6 optimizer steps (tokens/s over steps 2-6), adamw, no clipping, as the peer; the peer:
# `bench_torch.py --task train` (3 warm-up + 20 timed steps), `--checkpointing` for the second row.
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen2.5-0.5b)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl ckpts=${CKPT_DIR:-/tmp/forge-bench} batch=${BATCH:-8}
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
for arch in "${archs[@]}"; do
  ck=$(checkpoint "$arch")
  for mode in plain checkpointed; do
    flag=(); peer_flag=()
    [ $mode = checkpointed ] && flag=(--grad-checkpoint) && peer_flag=(--checkpointing)
    record forge "$arch train $mode batch $batch" "$forge" train -q --json --device cuda --model "$ck" --data "$data" --out "/tmp/lora-$mode" \
      --steps 6 --warmup-steps 0 --batch-size "$batch" --seq-len 1024 --rank 16 --alpha 32 --targets q_proj,k_proj,v_proj,o_proj \
      --optimizer adamw --lr 1e-4 --clip-norm 0 "${flag[@]}"
    record peer "$arch train $mode batch $batch" python3 "$peer/bench_torch.py" --model "$ck" --task train --batch "$batch" --seq 1024 \
      --lora-r 16 --targets q_proj,k_proj,v_proj,o_proj "${peer_flag[@]}"
  done
done
cat "$results"
