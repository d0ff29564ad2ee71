#!/usr/bin/env bash
# Data-parallel ranks on the GPU machine (issue 18), as far as one GPU allows: the process-per-GPU path
# over NCCL with one rank (NCCL refuses two ranks on one GPU), against plain one-device training.
#   1. `forge train --devices cuda:0` (a rank process, NCCL world 1) against `forge train --device cuda`:
#      the same adapter, and the tokens/s each reports (the all-reduce's cost at world 1), on ARCH.
#   2. `forge run --devices cuda:0` on the bundled tiny-qwen3, its rank SIGKILLed mid-training: exit 1
#      naming the rank; `--resume` finishes it; the final model against an uninterrupted run's.
#   3. The same run, SIGINT to the parent mid-training: the rank stops after an agreed step, the parent
#      exits 130; `--resume` finishes it.
#   4. `--devices cuda:0,cuda:0` is refused before any work.
#
#   bench/gpu_ranks.sh FORGE PEER_DIR DATA_JSONL OUT_DIR [ARCH]   (default qwen2.5-0.5b)
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4 arch=${5:-qwen2.5-0.5b}
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl ckpts=${CKPT_DIR:-/tmp/forge-bench}
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
ck=$(checkpoint "$arch")
note() { echo "$1" | tee -a "$out/log.txt"; }
train=(train -q --json --model "$ck" --data "$data" --steps 12 --batch-size 8 --seq-len 1024 --rank 16 --alpha 32
  --targets q_proj,k_proj,v_proj,o_proj --lr 1e-4)
record forge "$arch train one device" "$forge" "${train[@]}" --device cuda --out /tmp/ranks-one
record forge "$arch train --devices cuda:0" "$forge" "${train[@]}" --devices cuda:0 --out /tmp/ranks-nccl
python3 - /tmp/ranks-one /tmp/ranks-nccl <<'EOF' | tee -a "$out/log.txt"
import sys
from safetensors.torch import load_file
a, b = (load_file(d + "/adapter_model.safetensors") for d in sys.argv[1:3])
diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
print(f"adapter, one device against one NCCL rank: {len(a)} tensors, largest difference {diff:.3g}")
EOF

recipe=(--recipe "$here/examples/code.toml" --set train.steps=40)
run=("$forge" run -q --json "${recipe[@]}")
"${run[@]}" --device cuda --out /tmp/ranks-whole > /dev/null 2>> "$out/stderr.log"
note "uninterrupted one-device run: exit $?"
# stop_mid WHO OUT: starts the one-rank run, waits until it has trained a few steps (its events), then
# SIGKILLs the rank (WHO=rank) or SIGINTs the parent (WHO=parent); prints the parent's exit status and
# its last lines.
stop_mid() {
  FORGE_EVENTS=1 "${run[@]}" --devices cuda:0 --out "$2" > "$2.events" 2> "$2.stderr" &
  local parent=$!
  for _ in $(seq 1200); do
    [ "$(grep -c '"step"' "$2.events" 2>/dev/null)" -ge 5 ] && break
    sleep 0.1
  done
  if [ "$1" = rank ]; then kill -KILL "$(pgrep -P "$parent" | head -1)"; else kill -INT "$parent"; fi
  wait "$parent"; echo "exit $?: $(tail -3 "$2.stderr" | tr '\n' ' ')"
}
note "rank SIGKILLed: $(stop_mid rank /tmp/ranks-killed)"
"${run[@]}" --devices cuda:0 --out /tmp/ranks-killed --resume > /dev/null 2>> "$out/stderr.log"
note "resumed after the kill: exit $?"
note "parent SIGINTed: $(stop_mid parent /tmp/ranks-stopped)"
"${run[@]}" --devices cuda:0 --out /tmp/ranks-stopped --resume > /dev/null 2>> "$out/stderr.log"
note "resumed after the interrupt: exit $?"
note "scratch folders left beside the outputs: $(ls -d /tmp/.ranks-*.ranks 2>/dev/null | wc -l)"
python3 - /tmp/ranks-whole /tmp/ranks-killed /tmp/ranks-stopped <<'EOF' | tee -a "$out/log.txt"
import sys
from safetensors.torch import load_file
def model(d):
    import glob
    t = {}
    for f in sorted(glob.glob(d + "/model/*.safetensors")):
        t.update(load_file(f))
    return t
whole = model(sys.argv[1])
for d in sys.argv[2:]:
    m = model(d)
    diff = max(float((whole[k].double() - m[k].double()).abs().max()) for k in whole)
    print(f"final model of {d} against the uninterrupted one-device run: largest difference {diff:.3g}")
EOF
twice=$("$forge" train -q --devices cuda:0,cuda:0 --model "$ck" --data "$data" --out /tmp/ranks-twice 2>&1)
note "cuda:0 twice (exit $?): $twice"
cat "$results"
