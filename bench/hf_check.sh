#!/usr/bin/env bash
# A compact model written by forge, evaluated by transformers: prunes the bundled tiny-qwen3 to a uniform
# compact model (per-layer, whole KV groups, 25%, from SCORES) with FORGE, then prints forge's f32
# perplexity and transformers' on the same protocol.    bench/hf_check.sh FORGE SCORES OUT_DIR
set -uo pipefail
forge=$1 scores=$2 out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
model=/tmp/compact-uniform data=$here/examples/data/code-valid.jsonl
"$forge" prune -q --json --model "$here/examples/tiny-qwen3" --pruner per-layer --ratio 0.25 \
  --pruner-opt whole-groups=true --scores "$scores" --out $model > "$out/prune.json"
"$forge" eval -q --json --model $model --data "$data" --max-windows 32 > "$out/compact-forge.json"
python3 "$here/bench/hf_perplexity.py" --model $model --data "$data" > "$out/compact-transformers.json"
python3 "$here/bench/hf_perplexity.py" --model "$here/examples/tiny-qwen3" --data "$data" > "$out/unpruned-transformers.json"
cat "$out"/*.json
