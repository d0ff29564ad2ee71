#!/usr/bin/env bash
# The LoRA results of docs/RESULTS.md, on the CPU: LoRA (r 16, attention + MLP) on code-train with adamw
# and adamw8bit, and LoRA recovery of tiny-qwen3 with 25% of heads removed by `taylor`; each evaluated
# on code-valid (32 x 512) before and after.    bench/training_results.sh [FORGE] [TRAIN_DATA] [STEPS]
set -euo pipefail
forge=${1:-target/release/forge} data=${2:-../shared/data/code-train.jsonl} steps=${3:-150}
model=examples/tiny-qwen3 valid=examples/data/code-valid.jsonl out=${OUT_DIR:-/tmp/forge-training}
mkdir -p "$out"
common=(--data "$data" --steps "$steps" --batch-size 4 --seq-len 256 --rank 16 --targets all-linear --lr 1e-3
        --eval-data "$valid" --eval-windows 32 --eval-seq-len 512 --seed 0 -q --json)
"$forge" score -q --json --model $model --scorer taylor --data examples/data/code-train.jsonl --out "$out/taylor.json" > /dev/null
"$forge" prune -q --json --model $model --pruner global --ratio 0.25 --scores "$out/taylor.json" --save-mode mask \
  --out "$out/pruned" > /dev/null
"$forge" train --model $model --out "$out/adamw" --optimizer adamw "${common[@]}" > "$out/adamw.json"
"$forge" train --model $model --out "$out/adamw8bit" --optimizer adamw8bit "${common[@]}" > "$out/adamw8bit.json"
"$forge" train --model $model --mask "$out/pruned/mask.json" --out "$out/pruned-adamw" --optimizer adamw "${common[@]}" \
  > "$out/pruned-adamw.json"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("| run | optimizer | code-valid ppl before | after | loss first | loss last | tokens/s | optimizer state |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for name, label in [("adamw", "unpruned"), ("adamw8bit", "unpruned"), ("pruned-adamw", "25% heads removed (taylor)")]:
    r = json.load(open(f"{out}/{name}.json"))
    print(f"| {label} | {r['optimizer']} | {r['eval']['before']['perplexity']:.3f} | {r['eval']['after']['perplexity']:.3f} | "
          f"{r['loss_first']:.4f} | {r['loss_last']:.4f} | {r['tokens_per_s']:.0f} | {r['optimizer_state_bytes'] / 2**20:.2f} MiB |")
PY
