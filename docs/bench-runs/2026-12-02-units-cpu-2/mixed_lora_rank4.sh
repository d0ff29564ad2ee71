#!/usr/bin/env bash
# The mixed rows' recovery for tiny-qwen35 at rank 4 (the pruned in_proj_b keeps 4 outputs), as units_table.sh runs it.
set -euo pipefail
forge=/tmp/forge-table here=/work/main m=$here/examples/tiny-qwen35 d=$here/examples/data
ppl() { "$forge" eval -q --json --model "$1" ${2:+--adapter "$2"} --data "$d/$3.jsonl" --max-windows 32 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["perplexity"], 4))'; }
acc() { "$forge" eval -q --json --model "$1" ${2:+--adapter "$2"} --evaluator choice --data "$d/$3-choice.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy_norm"])'; }
row() { echo "{\"keep\": $1, \"units\": \"$2\", \"recovery\": \"$3\", \"parameters\": $4, \"code\": $(ppl "$5" "$6" code-valid), \"code_test\": $(ppl "$5" "$6" code-test), \"prose\": $(ppl "$5" "$6" prose-valid), \"code_choice\": $(acc "$5" "$6" code), \"prose_choice\": $(acc "$5" "$6" prose), \"rank\": 4}" | tee -a "$out/table.jsonl"; }
for spec in /tmp/units-q35:0.75 /tmp/units-q35-60:0.6; do
  out=${spec%%:*} keep=${spec#*:} units=heads,linear-heads,mlp,layers
  p=$out/$keep-${units//,/-}
  params=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["parameters_after"])' "$p.prune.json")
  train=(train -q --model "$p/model" --data "$d/code-train.jsonl" --steps 30 --batch-size 4 --seq-len 256 --lr 2e-3 --targets all-linear --rank 4)
  "$forge" "${train[@]}" --out "$p/lora" > /dev/null
  row "$keep" "$units" lora "$params" "$p/model" "$p/lora"
  "$forge" "${train[@]}" --teacher "$m" --out "$p/distil" > /dev/null
  row "$keep" "$units" lora+distil "$params" "$p/model" "$p/distil"
done
