#!/usr/bin/env bash
# forge beside the PyTorch peer on one GPU, in one run, on the same checkpoints and settings.
#
#   bench/gpu.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]
#
# 1. accuracy: forge eval of the bundled tiny-qwen3 in bf16 on the GPU, against the f32 reference;
# 2. for each ARCH (default: qwen2.5-0.5b qwen3-1.7b): writes the random checkpoint of PEER_DIR/models.py
#    (with the bundled tokenizer), times forge's load-to-first-token (first run on the machine, and
#    again) and `forge eval` (batch 8 x 1024, bf16, 3 warm-up batches), then the peer's
#    `bench_torch.py --task eval` and `--task load` on the same checkpoint.
# Every measurement is one JSON line in OUT_DIR/results.jsonl; a failing step is recorded, not fatal.
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen2.5-0.5b qwen3-1.7b)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl
ckpts=${CKPT_DIR:-/tmp/forge-bench}
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"
load_seconds() { # forge's load to first token, from process start
  local s e; s=$(date +%s.%N)
  "$forge" generate -q --json --device cuda --model "$1" --prompt "hello" --max-new-tokens 1 > /dev/null || return 1
  e=$(date +%s.%N); python3 -c "import json; print(json.dumps({'seconds': $e - $s}))"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
for domain in code prose; do
  record forge "tiny-qwen3 $domain-valid bf16 ppl" "$forge" eval -q --json --device cuda --model "$here/examples/tiny-qwen3" \
    --data "$here/examples/data/$domain-valid.jsonl" --seq-len 512 --max-windows 32 --batch-size 8
done

for arch in "${archs[@]}"; do
  ck=$(checkpoint "$arch")
  record forge "$arch load first" load_seconds "$ck"
  record forge "$arch load again" load_seconds "$ck"
  record forge "$arch eval" "$forge" eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows 184 --warmup-batches 3
  for task in eval load; do
    record peer "$arch $task" python3 "$peer/bench_torch.py" --model "$ck" --task $task --batch 8 --seq 1024
  done
done
cat "$results"
