#!/usr/bin/env bash
# Issue 15's longer recovery at a parameter target, on one GPU (the tiny models are launch-bound, so every
# pruning and its recoveries run side by side). For each bundled MODEL and UNITS choice of RUNS: prune to
# KEEP with the budget pruner (taylor scores), then recover with STEPS LoRA steps (rank RANK on TARGETS,
# 4 x 256 tokens, lr 2e-3) each way RECOVERIES lists: `lora:DATA` or `distil:DATA:ALPHA` (distillation
# from the unpruned model at T 2), where DATA is `code` (the full shared code-train split) or `mixed`
# (code-train and prose-train concatenated). Every model is evaluated on code-valid, code-test and
# prose-valid (32 x 512, the bundled splits) and on both choice sets; the unpruned models too, on the
# same device and dtype.
#
#   bench/gpu_units_longer.sh FORGE DATA_DIR OUT_DIR
#
# DATA_DIR holds code-train.jsonl and prose-train.jsonl (the full shared splits). DTYPE (default f32)
# and STEPS (default 600) are passed on; RUNS lists "MODEL:UNITS:RANK[:TARGETS]" (TARGETS default
# all-linear).
set -uo pipefail
forge=$1 data=$2 out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
d=$here/examples/data dtype=${DTYPE:-f32} steps=${STEPS:-600} keep=${KEEP:-0.75}
read -r -a runs <<< "${RUNS:-tiny-qwen3:heads,mlp:32 tiny-qwen3:mlp:32}"
read -r -a recoveries <<< "${RECOVERIES:-lora:code lora:mixed distil:code:0.5 distil:mixed:0.5}"
mkdir -p "$out"
cat "$data/code-train.jsonl" "$data/prose-train.jsonl" > "$out/mixed-train.jsonl"
f() { "$forge" "$1" -q --device cuda --dtype "$dtype" "${@:2}"; }
ppl() { f eval --json --model "$1" ${2:+--adapter "$2"} --data "$d/$3.jsonl" --max-windows 32 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["perplexity"], 4))'; }
acc() { f eval --json --model "$1" ${2:+--adapter "$2"} --evaluator choice --data "$d/$3-choice.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy_norm"])'; }
# row MODEL UNITS RECOVERY MODEL_DIR ADAPTER: one line of the table.
row() {
  echo "{\"model\": \"$1\", \"keep\": $keep, \"units\": \"$2\", \"recovery\": \"$3\", \"dtype\": \"$dtype\", \"code\": $(ppl "$4" "$5" code-valid), \"code_test\": $(ppl "$4" "$5" code-test), \"prose\": $(ppl "$4" "$5" prose-valid), \"code_choice\": $(acc "$4" "$5" code), \"prose_choice\": $(acc "$4" "$5" prose)}" >> "$out/table.jsonl"
}
for model in tiny-qwen3 tiny-qwen35; do row "$model" none none "$here/examples/$model" "" & done
wait
# recover RUN: one pruning and its recoveries, side by side.
recover() {
  local model units rank targets m p kind mix alpha tdata train name label
  IFS=: read -r model units rank targets <<< "$1"
  m=$here/examples/$model p=$out/$model-${units//,/-}
  f prune --json --model "$m" --pruner budget --scorer taylor --data "$d/code-train.jsonl" --calib-windows 8 \
    --target-params "$keep" --units "$units" --out "$p/model" > "$p.prune.json" 2>> "$out/stderr.log" || { echo "prune $1 failed" >> "$out/stderr.log"; return; }
  row "$model" "$units" none "$p/model" "" &
  for recovery in "${recoveries[@]}"; do
    IFS=: read -r kind mix alpha <<< "$recovery"
    train=(train --json --model "$p/model" --steps "$steps" --batch-size 4 --seq-len 256 --lr 2e-3 --targets "${targets:-all-linear}" --rank "$rank")
    tdata=$data/code-train.jsonl; [ "$mix" = mixed ] && tdata=$out/mixed-train.jsonl
    name=${recovery//:/-} label="lora on $mix"
    [ "$kind" = distil ] && train+=(--teacher "$m" --distill-alpha "$alpha" --distill-temperature 2) && label="lora + distillation (alpha $alpha) on $mix"
    (f "${train[@]}" --data "$tdata" --out "$p/$name" > "$p/$name.json" 2>> "$out/stderr.log" && row "$model" "$units" "$label" "$p/model" "$p/$name") &
  done
  wait
}
for run in "${runs[@]}"; do recover "$run" & done
wait
cat "$out/table.jsonl"
