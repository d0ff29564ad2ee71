#!/usr/bin/env bash
# Issue 16's "no driver JIT on the hot paths": which of candle's PTX modules forge's eval, generation
# and training make the driver compile on a fresh machine, and what each costs.
#
#   bench/gpu_candle_jit.sh FORGE_BINARY OUT_DIR
#
# 1. `forge kernels --candle-jit` with CUDA_CACHE_DISABLE=1 times the compilation of each module, then
#    again into an empty JIT cache (CUDA_CACHE_PATH), whose files' sizes identify each module.
# 2. eval, generate and train on the bundled models, each into its own empty JIT cache: the files it
#    leaves are the modules it compiled (matched by size), and its wall time is set beside a second run
#    on the now warm cache.
set -uo pipefail
forge=$1 out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
caches=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
CUDA_CACHE_DISABLE=1 "$forge" kernels --device cuda --candle-jit --json > "$out/modules.json" 2>> "$out/stderr.log"
CUDA_CACHE_PATH=$caches/all "$forge" kernels --device cuda --candle-jit --json > "$out/modules-cached.json" 2>> "$out/stderr.log"
sizes() { find "$1" -type f -printf '%s %P\n' | sort -n; }
sizes "$caches/all" > "$out/cache-all.txt"
code=$here/examples/data/code-valid.jsonl
for model in tiny-qwen3 tiny-qwen35; do
  m=$here/examples/$model
  declare -A work=(
    [eval]="eval --model $m --data $code --max-windows 4 --seq-len 256"
    [generate]="generate --model $m --prompt fn --max-new-tokens 8 --temperature 0"
    [train]="train --model $m --data $code --out /tmp/jit-train --steps 2 --batch-size 2 --seq-len 128 --rank 8"
  )
  for w in eval generate train; do
    cache=$caches/$model-$w
    for pass in cold warm; do
      s=$(date +%s%N)
      CUDA_CACHE_PATH=$cache "$forge" -q ${work[$w]} --device cuda > /dev/null 2>> "$out/stderr.log"
      status=$?
      e=$(date +%s%N)
      echo "{\"model\": \"$model\", \"work\": \"$w\", \"pass\": \"$pass\", \"exit\": $status, \"seconds\": $(( (e - s) / 1000000 ))e-3}" >> "$out/runs.jsonl"
    done
    sizes "$cache" | sed "s|^|$model $w |" >> "$out/cache-by-work.txt"
  done
done
rm -rf "$caches"
