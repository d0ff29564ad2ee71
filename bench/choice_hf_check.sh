#!/usr/bin/env bash
# The `choice` evaluator against transformers on a CPU, for both bundled models and both bundled sets:
# forge's log-likelihoods (f32, CPU) for the first 10 records, then bench/choice_hf_check.py's from
# transformers for the same strings, one table a pair and each pair's largest relative difference.
#   bench/choice_hf_check.sh FORGE OUT_DIR   (needs python3 with torch, transformers and tokenizers)
set -euo pipefail
forge=$1 out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
python3 -c 'import torch, transformers; print("transformers", transformers.__version__, "torch", torch.__version__)' | tee "$out/versions.txt"
for model in tiny-qwen3 tiny-qwen35; do
  for domain in code prose; do
    m=$here/examples/$model d=$out/$domain-choice-10.jsonl
    head -n 10 "$here/examples/data/$domain-choice.jsonl" > "$d"
    "$forge" eval -q --json --device cpu --model "$m" --data "$d" --evaluator choice \
      --evaluator-opt log-likelihoods=true > "$out/forge-choice-$model-$domain.json"
    python3 "$here/bench/choice_hf_check.py" --model "$m" --data "$d" --forge "$out/forge-choice-$model-$domain.json" \
      > "$out/choicecheck-$model-$domain.md"
    echo "$model $domain: $(tail -1 "$out/choicecheck-$model-$domain.md")"
  done
done
