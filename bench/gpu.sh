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
# record TOOL WHAT COMMAND...: runs the command, keeps its last stdout line (a JSON object) or its error.
record() {
  local tool=$1 what=$2; shift 2
  local line
  if line=$("$@" 2>>"$out/stderr.log" | tail -1) && [ -n "$line" ]; then
    python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d.update(tool=sys.argv[1], what=sys.argv[2]); print(json.dumps(d))' "$tool" "$what" "$line" >> "$results"
  else
    echo "{\"tool\": \"$tool\", \"what\": \"$what\", \"error\": \"exit $? (see stderr.log)\"}" >> "$results"
  fi
}
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
  ck=$ckpts/$arch
  [ -f "$ck/config.json" ] || python3 "$peer/models.py" --arch "$arch" --out "$ck" --tokenizer "$here/examples/tiny-qwen3" >> "$out/stderr.log" 2>&1
  record forge "$arch load first" load_seconds "$ck"
  record forge "$arch load again" load_seconds "$ck"
  record forge "$arch eval" "$forge" eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows 184 --warmup-batches 3
  for task in eval load; do
    record peer "$arch $task" python3 "$peer/bench_torch.py" --model "$ck" --task $task --batch 8 --seq 1024
  done
done
cat "$results"
