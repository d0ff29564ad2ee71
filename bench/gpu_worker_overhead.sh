#!/usr/bin/env bash
# Does the worker add overhead to the work? The same recipe (LoRA r 16 on q/k/v/o, batch 8 x 1024, one
# cycle) on the peer's random checkpoint of ARCH, run REPS times as `forge run` and REPS times as a
# `model/forge` job through `forge serve`, alternating so that drift on the card hits both alike. Each row
# is the training tokens/s the run itself reports (cycles[0].train.tokens_per_s of its report.json) and
# the wall time from command start to result (for the job: from `forge submit` to its `done` event).
#
#   bench/gpu_worker_overhead.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH]   (default qwen2.5-0.5b)
#
# REPS (default 3) sets the repetitions; STEPS (default 30) the training steps of each run.
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4 arch=${5:-qwen2.5-0.5b}
here=$(cd "$(dirname "$0")/.." && pwd)
results=$out/results.jsonl ckpts=${CKPT_DIR:-/tmp/forge-bench} reps=${REPS:-3} steps=${STEPS:-30}
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
ck=$(checkpoint "$arch")
recipe=$out/overhead.toml
cat > "$recipe" <<EOF
model = "$ck"
seed = 0
[data]
train = "$data"
eval_windows = 8
eval_seq_len = 1024
[score]
scorer = "l2"
[prune]
pruner = "global"
ratio_per_cycle = 0.125
cycles = 1
save_mode = "mask"
[train]
adapter = "lora"
adapter_options = { rank = 16, alpha = 32, targets = "q_proj,k_proj,v_proj,o_proj" }
optimizer = "adamw"
steps = $steps
batch_size = 8
seq_len = 1024
lr = 1e-4
[[evaluate]]
name = "perplexity"
data = "$data"
EOF

# row HOW REP SECONDS OUT_DIR: one result line from the run's report.json.
row() {
  python3 -c 'import json,sys; r=json.load(open(sys.argv[4] + "/report.json")); t=r["cycles"][0]["train"]
print(json.dumps({"arch": sys.argv[5], "how": sys.argv[1], "rep": int(sys.argv[2]), "wall_s": round(float(sys.argv[3]), 1),
  "tokens_per_s": t["tokens_per_s"], "loss_last": t["loss_last"]}))' "$1" "$2" "$3" "$4" "$arch" >> "$results"
}

sock=/tmp/forge-overhead.sock
"$forge" serve --socket "$sock" --devices cuda:0 --state-dir "$out/state" 2>> "$out/serve.log" &
server=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
for rep in $(seq "$reps"); do
  s=$(date +%s%N)
  "$forge" run -q --json --device cuda --recipe "$recipe" --out "/tmp/overhead-run-$rep" > /dev/null 2>> "$out/stderr.log"
  row "forge run" "$rep" "$((($(date +%s%N) - s) / 1000000))e-3" "/tmp/overhead-run-$rep" || echo "run $rep failed" >> "$out/stderr.log"
  s=$(date +%s%N)
  # `--watch` returns when the job's `done` event arrives.
  "$forge" submit --socket "$sock" --recipe "$recipe" --out "/tmp/overhead-job-$rep" --watch --json > "$out/events-$rep.jsonl" 2>> "$out/stderr.log"
  row "worker job" "$rep" "$((($(date +%s%N) - s) / 1000000))e-3" "/tmp/overhead-job-$rep" || echo "job $rep failed" >> "$out/stderr.log"
done
kill -TERM "$server"; wait "$server"
python3 - "$results" <<'EOF' | tee "$out/summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for how in ("forge run", "worker job"):
    t = [r["tokens_per_s"] for r in rows if r["how"] == how]
    w = [r["wall_s"] for r in rows if r["how"] == how]
    print(f"{how}: tokens/s {statistics.mean(t):.0f} (min {min(t):.0f}, max {max(t):.0f}), wall {statistics.mean(w):.1f} s (min {min(w):.1f}, max {max(w):.1f})")
EOF
