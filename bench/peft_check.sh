#!/usr/bin/env bash
# Adapters cross the forge/PEFT boundary both ways: a forge-trained adapter evaluated by PEFT and by
# forge, and a PEFT-made adapter evaluated by both (f32, CPU, code-valid 8 x 512).
#   bench/peft_check.sh FORGE FORGE_ADAPTER_DIR OUT_DIR
set -euo pipefail
forge=$1 forge_adapter=$2 out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
model=$here/examples/tiny-qwen3 data=$here/examples/data/code-valid.jsonl
ppl() { python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])'; }
python3 "$here/bench/make_peft_adapter.py" --model "$model" --out /tmp/peft-lora > /dev/null 2>&1
for adapter in "$forge_adapter" /tmp/peft-lora; do
  f=$("$forge" eval -q --json --model "$model" --adapter "$adapter" --data "$data" --max-windows 8 | ppl)
  p=$(python3 "$here/bench/hf_perplexity.py" --model "$model" --adapter "$adapter" --data "$data" --max-windows 8 2>/dev/null | ppl)
  echo "{\"adapter\": \"$adapter\", \"forge\": $f, \"peft\": $p}" | tee -a "$out/peft.jsonl"
done
