#!/usr/bin/env bash
# Issue 14's training benchmark: LoRA r 16 on the seven linear layers of Qwen3.5's two attention kinds
# (q/k/v/o, in_proj_qkv, in_proj_z, out_proj), batch 8 x 1024, bf16, AdamW, forge beside the peer on
# the peer's random checkpoints of the published geometry, in one run on one GPU, with and without
# gradient checkpointing. First `forge kernels` checks every kernel, the delta rule's backward among
# them, against the CPU.
#
#   bench/gpu_qwen35_train.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH[:MODES] ...]
#
# MODES is plain, checkpointed or both (the default); e.g. `qwen3.5-0.8b qwen3.5-9b:checkpointed`.
# PEER_MODES (default: the same) limits the peer's rows, e.g. to skip what the issue already measured;
# FORGE_FLAGS adds to forge's runs (e.g. `--frozen-base int8` for qwen3.5-27b); KERNELS=0 skips the
# kernel checks; STEP_LIMIT (default 300) caps each forge run's seconds.
# PROFILE_ARCH profiles 4 forge steps of that checkpoint (FORGE_PROFILE: time and memory by section),
# with PROFILE_FLAGS added (e.g. --grad-checkpoint).
# The peer is what users fall back to for training: transformers' own PyTorch loops for Gated
# DeltaNet, because flash-linear-attention 0.6 refuses its backward on Hopper with Triton 3.6; so the
# peer runs without fla on its path (PYTHONPATH unset), whatever the caller set for other scripts.
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen3.5-0.8b qwen3.5-9b:checkpointed)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl ckpts=${CKPT_DIR:-/tmp/forge-bench} peer_steps=${PEER_STEPS:-8}
targets=q_proj,k_proj,v_proj,o_proj,in_proj_qkv,in_proj_z,out_proj
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
if [ "${KERNELS:-1}" = 1 ]; then
  "$forge" kernels --device cuda --json > "$out/kernels.json" 2>> "$out/stderr.log"; echo "forge kernels: exit $?" | tee -a "$out/card.txt"
fi
for spec in "${archs[@]}"; do
  arch=${spec%%:*} modes=${spec#*:}
  [ "$modes" = "$spec" ] && modes=both
  ck=$ckpts/$arch
  [ -f "$ck/config.json" ] || python3 "$peer/models.py" --arch "$arch" --out "$ck" --tokenizer "$here/examples/tiny-qwen35" >> "$out/stderr.log" 2>&1
  for mode in plain checkpointed; do
    [ "$modes" = both ] || [ "$modes" = "$mode" ] || continue
    flag=(); peer_flag=()
    [ $mode = checkpointed ] && flag=(--grad-checkpoint) && peer_flag=(--checkpointing)
    record forge "$arch train $mode" timeout "${STEP_LIMIT:-300}" "$forge" train -q --json --device cuda --model "$ck" --data "$data" --out "/tmp/lora-$mode" \
      --steps 6 --warmup-steps 0 --batch-size 8 --seq-len 1024 --rank 16 --alpha 32 --targets "$targets" \
      --optimizer adamw --lr 1e-4 --clip-norm 0 "${flag[@]}" ${FORGE_FLAGS:-}
    peer_modes=${PEER_MODES:-$modes}
    [ "$peer_modes" = both ] || [ "$peer_modes" = "$mode" ] || continue
    PYTHONPATH= record peer "$arch train $mode" python3 "$peer/bench_torch.py" --model "$ck" --task train --batch 8 --seq 1024 \
      --steps "$peer_steps" --warmup 2 --lora-r 16 --targets "$targets" "${peer_flag[@]}"
  done
  [ -n "${PROFILE_ARCH:-}" ] && [ "$arch" = "$PROFILE_ARCH" ] && FORGE_PROFILE=1 "$forge" train -q --json --device cuda \
    --model "$ck" --data "$data" --out /tmp/lora-profile --steps 4 --batch-size 8 --seq-len 1024 --rank 16 --targets "$targets" \
    ${PROFILE_FLAGS:-} 2> "$out/profile-train-$arch.txt" > /dev/null
  rm -rf "$ck"  # the next, larger checkpoint needs the disk
done
python3 "$here/bench/qwen35_train_table.py" "$out" | tee "$out/table.md"
