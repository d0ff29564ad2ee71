#!/usr/bin/env bash
# Issue 15's table on the CPU: prune a bundled model to a parameter target with each choice of units
# (budget pruner, taylor scores), then recover with nothing, LoRA, or LoRA + distillation from the
# unpruned model, and evaluate code-valid, code-test and prose-valid perplexity (32 x 512) and the
# choice sets.
#   bench/units_table.sh FORGE OUT_DIR [KEEP ...]   (default KEEP: 0.75)
# MODEL (default tiny-qwen3) names the bundled model; UNITS the unit choices, space-separated
# (default "heads mlp layers heads,mlp,layers"; a hybrid's attention heads are heads,linear-heads);
# RANK the LoRA rank (default 16; tiny-qwen35's in_proj_b has 8 outputs, so 8 there); LAYER_SCORER
# takes whole layers' scores from another scorer (`--layer-scorer`).
set -euo pipefail
forge=$1 out=$2; shift 2
keeps=("$@"); [ ${#keeps[@]} -gt 0 ] || keeps=(0.75)
here=$(cd "$(dirname "$0")/.." && pwd)
m=$here/examples/${MODEL:-tiny-qwen3} d=$here/examples/data
read -r -a unit_choices <<< "${UNITS:-heads mlp layers heads,mlp,layers}"
mkdir -p "$out"
ppl() { "$forge" eval -q --json --model "$1" ${2:+--adapter "$2"} --data "$d/$3.jsonl" --max-windows 32 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["perplexity"], 4))'; }
acc() { "$forge" eval -q --json --model "$1" ${2:+--adapter "$2"} --evaluator choice --data "$d/$3-choice.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy_norm"])'; }
row() { echo "{\"keep\": $1, \"units\": \"$2\", \"recovery\": \"$3\", \"parameters\": $4, \"code\": $(ppl "$5" "$6" code-valid), \"code_test\": $(ppl "$5" "$6" code-test), \"prose\": $(ppl "$5" "$6" prose-valid), \"code_choice\": $(acc "$5" "$6" code), \"prose_choice\": $(acc "$5" "$6" prose)}" | tee -a "$out/table.jsonl"; }
row 1 none none "$("$forge" inspect --json --model "$m" | python3 -c 'import json,sys; print(json.load(sys.stdin)["parameters"])')" "$m" ""
for keep in "${keeps[@]}"; do
  for units in "${unit_choices[@]}"; do
    p=$out/$keep-${units//,/-}
    "$forge" prune -q --json --model "$m" --pruner budget --scorer taylor --data "$d/code-train.jsonl" --calib-windows 8 \
      --target-params "$keep" --units "$units" ${LAYER_SCORER:+--layer-scorer "$LAYER_SCORER"} --out "$p/model" > "$p.prune.json" || { echo "{\"keep\": $keep, \"units\": \"$units\", \"error\": \"prune refused\"}" >> "$out/table.jsonl"; continue; }
    params=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["parameters_after"])' "$p.prune.json")
    row "$keep" "$units" none "$params" "$p/model" ""
    train=(train -q --model "$p/model" --data "$d/code-train.jsonl" --steps 30 --batch-size 4 --seq-len 256 --lr 2e-3 --targets all-linear --rank "${RANK:-16}")
    "$forge" "${train[@]}" --out "$p/lora" > /dev/null
    row "$keep" "$units" lora "$params" "$p/model" "$p/lora"
    "$forge" "${train[@]}" --teacher "$m" --out "$p/distil" > /dev/null
    row "$keep" "$units" lora+distil "$params" "$p/model" "$p/distil"
  done
done
