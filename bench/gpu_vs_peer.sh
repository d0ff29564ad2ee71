#!/usr/bin/env bash
# issue 7's benchmark: forge beside the PyTorch peer on one GPU, in one run, on the same checkpoints and
# settings, for every target: eval, LoRA training (with and without checkpointing), greedy generation
# and load to first forward; then the ratio table (bench/ratio_table.py) with the card's name.
#
#   bench/gpu_vs_peer.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]
#        (default ARCH: qwen2.5-0.5b qwen3-1.7b qwen3-4b)
#
# Settings (the issue's): bf16, batch 8 x 1024 for eval and training, LoRA r 16 on q/k/v/o, AdamW;
# generation batch 1, a 32-token prompt, 128 new tokens; load = process start (forge) or from_pretrained
# (peer) until the first forward has finished, first on a fresh machine (an empty driver JIT cache) and
# again. The card's ceilings (bench/ceilings.py) and `forge kernels` come first; FORGE_PROFILE splits
# forge's eval and (plain) training time of the first ARCH by section. Every measurement is one JSON line in OUT_DIR/results.jsonl.
# PEER_STEPS (default 10) sets the peer's timed steps after its 3 warm-up steps. MODES (default
# "plain checkpointed") names the training rows: three checkpoints with both take longer than the GPU
# machine's 10 minutes a command; issue 16's targets need only plain.
#
# Qwen3.5 (ARCH qwen3.5-0.8b, …) has the same rows: LoRA on its seven linear layers (both attention
# kinds'), the peer with flash-linear-attention where it runs — eval, generation and load, with fla
# importable from the caller's PYTHONPATH, its Triton cache empty for "load first" and warm after —
# and without it for training, whose backward fla 0.6 refuses on Hopper (bench/gpu_qwen35_train.sh).
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen2.5-0.5b qwen3-1.7b qwen3-4b)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl
ckpts=${CKPT_DIR:-/tmp/forge-bench} peer_steps=${PEER_STEPS:-10}
mkdir -p "$out" "$ckpts"
TRITON_CACHE_DIR=$(mktemp -d)
export TRITON_CACHE_DIR
. "$(dirname "$0")/common.sh"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
record card ceilings python3 "$here/bench/ceilings.py"
record forge kernels "$forge" kernels --device cuda --json
first=1
for arch in "${archs[@]}"; do
  ck=$(checkpoint "$arch") targets=q_proj,k_proj,v_proj,o_proj train_path=${PYTHONPATH:-}
  case $arch in qwen3.5-*) targets=$targets,in_proj_qkv,in_proj_z,out_proj train_path= ;; esac
  cp "$ck/config.json" "$out/$arch.config.json"
  # "First" is first on a fresh machine for every checkpoint (common.sh's load_rows).
  load_rows "$arch" "$ck"
  record forge "$arch eval" "$forge" eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows 120 --warmup-batches 3
  record peer "$arch eval" python3 "$peer/bench_torch.py" --model "$ck" --task eval --batch 8 --seq 1024 --steps "$peer_steps"
  for mode in ${MODES:-plain checkpointed}; do
    flag=(); peer_flag=()
    [ $mode = checkpointed ] && flag=(--grad-checkpoint) && peer_flag=(--checkpointing)
    record forge "$arch train $mode" "$forge" train -q --json --device cuda --model "$ck" --data "$data" --out "/tmp/lora-$mode" \
      --steps 6 --warmup-steps 0 --batch-size 8 --seq-len 1024 --rank 16 --alpha 32 --targets "$targets" \
      --optimizer adamw --lr 1e-4 --clip-norm 0 "${flag[@]}"
    PYTHONPATH=$train_path record peer "$arch train $mode" python3 "$peer/bench_torch.py" --model "$ck" --task train --batch 8 \
      --seq 1024 --steps "$peer_steps" --lora-r 16 --targets "$targets" "${peer_flag[@]}"
  done
  record forge "$arch generate" "$forge" generate -q --json --device cuda --model "$ck" --prompt "$prompt" \
    --max-new-tokens 128 --ignore-eos
  record peer "$arch generate" python3 "$peer/bench_torch.py" --model "$ck" --task generate --new-tokens 128
  if [ $first = 1 ]; then
    FORGE_PROFILE=1 "$forge" eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 --batch-size 8 \
      --max-windows 48 2> "$out/profile-eval.txt" > /dev/null
    FORGE_PROFILE=1 "$forge" train -q --json --device cuda --model "$ck" --data "$data" --out /tmp/lora-profile --steps 4 \
      --batch-size 8 --seq-len 1024 --rank 16 --targets "$targets" \
      2> "$out/profile-train.txt" > /dev/null
    first=0
  fi
  rm -rf "$ck"  # the next, larger checkpoint needs the disk
done
python3 "$here/bench/ratio_table.py" "$out" | tee "$out/table.md"
