#!/usr/bin/env bash
# Issue 14's cross-checks of tiny-qwen35 against transformers and PEFT, f32 on the CPU (code-valid):
#  1. masked: a mask naming both kinds of heads (per-layer, l2, 25% of each) applied by forge (--mask)
#     and by transformers (o_proj / out_proj input columns zeroed, bench/hf_perplexity.py --mask);
#  2. compact: a uniform compact model (per-layer, whole groups, half the query heads, a quarter of the
#     value heads) evaluated by forge and loaded by transformers;
#  3. adapters: FORGE_ADAPTER (trained by forge) evaluated by forge and by PEFT, and one PEFT writes on
#     all twelve linear modules of both layer kinds evaluated by both.
#   bench/qwen35_hf_check.sh FORGE FORGE_ADAPTER OUT_DIR
set -uo pipefail
forge=$1 adapter=$2 out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
model=$here/examples/tiny-qwen35 data=$here/examples/data/code-valid.jsonl
ppl() { python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])'; }
row() { echo "{\"check\": \"$1\", \"forge\": $2, \"transformers\": $3}" | tee -a "$out/checks.jsonl"; }
"$forge" prune -q --json --model "$model" --pruner per-layer --scorer l2 --ratio 0.25 --save-mode mask \
  --out /tmp/q35-mask > "$out/mask-prune.json"
row masked "$("$forge" eval -q --json --model "$model" --mask /tmp/q35-mask/mask.json --data "$data" --max-windows 32 | ppl)" \
  "$(python3 "$here/bench/hf_perplexity.py" --model "$model" --mask /tmp/q35-mask/mask.json --data "$data" | ppl)"
"$forge" prune -q --json --model "$model" --pruner per-layer --scorer l2 --ratio 0.5 --pruner-opt whole-groups=true \
  --pruner-opt linear-ratio=0.25 --save-mode compact --out /tmp/q35-compact > "$out/compact-prune.json"
python3 "$here/bench/hf_perplexity.py" --model /tmp/q35-compact --data "$data" > "$out/compact-transformers.json"
row compact "$("$forge" eval -q --json --model /tmp/q35-compact --data "$data" --max-windows 32 | ppl)" \
  "$(ppl < "$out/compact-transformers.json")"
all=q_proj,k_proj,v_proj,o_proj,in_proj_qkv,in_proj_z,in_proj_b,in_proj_a,out_proj,gate_proj,up_proj,down_proj
python3 "$here/bench/make_peft_adapter.py" --model "$model" --targets $all --out /tmp/peft-q35 > /dev/null 2>&1
for a in "$adapter" /tmp/peft-q35; do
  row "adapter $(basename "$a")" "$("$forge" eval -q --json --model "$model" --adapter "$a" --data "$data" --max-windows 8 | ppl)" \
    "$(python3 "$here/bench/hf_perplexity.py" --model "$model" --adapter "$a" --data "$data" --max-windows 8 2>/dev/null | ppl)"
done
