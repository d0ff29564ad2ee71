#!/usr/bin/env bash
# Issue 15's GPU check of distillation's cost: LoRA training on the peer's random checkpoints, plain and
# distilled from the unpruned model (`--teacher base`, which shares the student's weights), with and
# without gradient checkpointing, and on a masked model (25% of heads by l2) plain and distilled from the
# unmasked model. forge reports each run's peak device memory and speed; bench/distill_table.py sets the
# teacher's rows beside plain LoRA's.
#
#   bench/gpu_distill_memory.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]   (default: qwen3.5-0.8b qwen3-1.7b)
#
# The teacher adds a forward without autograd and the chunked KL beside the chunked NLL, so its cost
# should be the teacher's activations of one layer at a time plus a vocabulary chunk, not a second model.
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen3.5-0.8b qwen3-1.7b)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl ckpts=${CKPT_DIR:-/tmp/forge-bench}
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
for arch in "${archs[@]}"; do
  ck=$(checkpoint "$arch")
  "$forge" prune -q --json --device cuda --model "$ck" --pruner global --scorer l2 --ratio 0.25 --out "/tmp/mask-$arch" \
    > "$out/prune-$arch.json" 2>> "$out/stderr.log"
  train=(train -q --json --device cuda --model "$ck" --data "$data" --steps 6 --warmup-steps 0 --batch-size 8 --seq-len 1024
    --rank 16 --targets all-linear --optimizer adamw --lr 1e-4)
  for ckpt in "" --grad-checkpoint; do
    mode=${ckpt:+checkpointed}; mode=${mode:-plain}
    record forge "$arch $mode lora" "$forge" "${train[@]}" --out /tmp/lora $ckpt
    record forge "$arch $mode lora+teacher" "$forge" "${train[@]}" --out /tmp/lora --teacher base $ckpt
  done
  mask=(--mask "/tmp/mask-$arch/mask.json")
  record forge "$arch masked lora" "$forge" "${train[@]}" --out /tmp/lora "${mask[@]}"
  record forge "$arch masked lora+teacher" "$forge" "${train[@]}" --out /tmp/lora --teacher base "${mask[@]}"
  rm -rf "$ck" "/tmp/mask-$arch"
done
python3 "$here/bench/distill_table.py" "$out" | tee "$out/table.md"
