#!/usr/bin/env bash
# forge beside the PyTorch peer on one GPU, in one run, on the same checkpoints and settings.
#
#   bench/gpu.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]
#
# For each ARCH (default: qwen2.5-0.5b qwen3-1.7b) it writes the random checkpoint of PEER_DIR/models.py
# (with the bundled tokenizer), then times forge eval (batch 8 x 1024, bf16) and load-to-first-token,
# and the peer's `bench_torch.py --task eval` and `--task load`. Results go to OUT_DIR/results.jsonl,
# one JSON object per measurement; bench/table.py turns them into the table of docs/BENCHMARKS.md.
# Before that it checks bf16 accuracy: forge eval of the bundled tiny-qwen3 on the GPU.
set -euo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("${@:-qwen2.5-0.5b}")
[ $# -gt 0 ] || archs=(qwen2.5-0.5b qwen3-1.7b)
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl
ckpts=${CKPT_DIR:-/tmp/forge-bench}
mkdir -p "$out" "$ckpts"
record() { python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d.update(tool=sys.argv[1], what=sys.argv[2]); print(json.dumps(d))' "$@" >> "$results"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
for domain in code prose; do
  r=$("$forge" eval -q --json --device cuda --model "$here/examples/tiny-qwen3" \
      --data "$here/examples/data/$domain-valid.jsonl" --seq-len 512 --max-windows 32 --batch-size 8)
  record forge "tiny-qwen3 $domain-valid bf16" "$r"
done

for arch in "${archs[@]}"; do
  ck=$ckpts/$arch
  [ -f "$ck/config.json" ] || python3 "$peer/models.py" --arch "$arch" --out "$ck" --tokenizer "$here/examples/tiny-qwen3"
  # Load to first forward: a one-token generation, timed from process start; the first run on a fresh
  # machine compiles candle's PTX for the card, so both the first and a second run are recorded.
  for run in first again; do
    s=$(date +%s.%N)
    "$forge" generate -q --json --device cuda --model "$ck" --prompt "hello" --max-new-tokens 1 > /dev/null
    e=$(date +%s.%N)
    record forge "$arch load $run" "{\"seconds\": $(python3 -c "print($e - $s)")}"
  done
  r=$("$forge" eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 --batch-size 8 \
      --max-windows 184 --warmup-batches 3)
  record forge "$arch eval" "$r"
  for task in eval load; do
    r=$(python3 "$peer/bench_torch.py" --model "$ck" --task $task --batch 8 --seq 1024 | tail -1)
    record peer "$arch $task" "$r"
  done
done
cat "$results"
