#!/usr/bin/env bash
# forge alone on one GPU, quicker than bench/gpu_vs_peer.sh (no peer, no load, no checkpointing), for
# measuring one change: `forge kernels`, then per ARCH LoRA training without checkpointing (timed, then
# again with FORGE_PROFILE=1), eval and greedy generation, at gpu_vs_peer.sh's settings.
#
#   bench/gpu_forge_probe.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]
#        (default ARCH: qwen2.5-0.5b qwen3-1.7b qwen3-4b; PEER_DIR only for its models.py)
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen2.5-0.5b qwen3-1.7b qwen3-4b)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl ckpts=${CKPT_DIR:-/tmp/forge-bench}
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
record forge kernels "$forge" kernels --device cuda --json
train=(--data "$data" --steps 6 --warmup-steps 0 --batch-size 8 --seq-len 1024 --rank 16 --alpha 32
  --targets q_proj,k_proj,v_proj,o_proj --optimizer adamw --lr 1e-4 --clip-norm 0)
for arch in "${archs[@]}"; do
  ck=$(checkpoint "$arch")
  record forge "$arch train plain" "$forge" train -q --json --device cuda --model "$ck" --out /tmp/lora-plain "${train[@]}"
  FORGE_PROFILE=1 "$forge" train -q --json --device cuda --model "$ck" --out /tmp/lora-profile "${train[@]}" \
    2> "$out/profile-train-$arch.txt" > /dev/null
  record forge "$arch eval" "$forge" eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows 120 --warmup-batches 3
  record forge "$arch generate" "$forge" generate -q --json --device cuda --model "$ck" \
    --prompt "fn parse(input: &str) -> Result<Vec<Token>, Error> {" --max-new-tokens 128 --ignore-eos
  rm -rf "$ck"
done
