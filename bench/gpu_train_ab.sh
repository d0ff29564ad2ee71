#!/usr/bin/env bash
# LoRA training speed of two forge builds on one card, alternating A B A B … so that drift of the card
# or host falls on both: `forge train` at batch 8 × 1024, r 16 on q/k/v/o, AdamW, plain and with
# checkpointing, ROUNDS times each (default 3), STEPS steps (default 12; tokens/s counts the steps
# after the first). Prints one line per run: build, mode, tokens/s, peak GiB.
#
#   bench/gpu_train_ab.sh FORGE_A FORGE_B CHECKPOINT DATA_JSONL
set -uo pipefail
a=$1 b=$2 ck=$3 data=$4
rounds=${ROUNDS:-3} steps=${STEPS:-12}
for round in $(seq "$rounds"); do
  for mode in plain checkpointed; do
    flag=()
    [ $mode = checkpointed ] && flag=(--grad-checkpoint)
    for side in A B; do
      binary=$a
      [ $side = B ] && binary=$b
      "$binary" train -q --json --device cuda --model "$ck" --data "$data" --out "/tmp/lora-ab" --steps "$steps" \
        --warmup-steps 0 --batch-size 8 --seq-len 1024 --rank 16 --alpha 32 --targets q_proj,k_proj,v_proj,o_proj \
        --optimizer adamw --lr 1e-4 --clip-norm 0 "${flag[@]}" |
        python3 -c "import json,sys; d=json.loads(sys.stdin.readlines()[-1]); print('$side $mode round $round', round(d['tokens_per_s']), round(d['peak_memory_bytes']/2**30, 2))"
      rm -rf /tmp/lora-ab
    done
  done
done
