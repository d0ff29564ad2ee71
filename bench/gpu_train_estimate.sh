#!/usr/bin/env bash
# The train phase's memory estimate against the measured peak, on the GPU: a one-cycle `forge run`
# (l2 scores, 10% of heads, 3 LoRA steps of 8 x 1024, r 16 on q/k/v/o, bf16) on the peer's random
# checkpoint of each ARCH, with and without gradient checkpointing. Each line: the estimate of the train
# phase (report.json `estimates`) and its measured peak (`peak_memory_bytes.train`), in GiB.
#
#   bench/gpu_train_estimate.sh FORGE PEER_DIR DATA_JSONL OUT_DIR [ARCH ...]   (default qwen2.5-0.5b)
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen2.5-0.5b)
here=$(cd "$(dirname "$0")/.." && pwd)
ckpts=${CKPT_DIR:-/tmp/forge-bench}
mkdir -p "$out" "$ckpts"
. "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
for arch in "${archs[@]}"; do
  ck=$(checkpoint "$arch")
  for checkpointing in false true; do
    recipe=$out/$arch-$checkpointing.toml run=/tmp/estimate-$arch-$checkpointing
    printf 'model = "%s"\n[data]\ntrain = "%s"\neval_windows = 1\neval_seq_len = 1024\n[score]\nscorer = "l2"\n[prune]\npruner = "global"\nratio_per_cycle = 0.1\ncycles = 1\nsave_mode = "mask"\n[train]\nadapter_options = { rank = 16, targets = "q_proj,k_proj,v_proj,o_proj" }\nsteps = 3\nbatch_size = 8\nseq_len = 1024\ngrad_checkpoint = %s\n[[evaluate]]\nname = "perplexity"\ndata = "%s"\n' \
      "$ck" "$data" "$checkpointing" "$data" > "$recipe"
    "$forge" run -q --json --device cuda --recipe "$recipe" --out "$run" > /dev/null 2>> "$out/stderr.log"
    python3 - "$run/report.json" "$arch" "$checkpointing" <<'PY' | tee -a "$out/results.jsonl"
import json, sys
r = json.load(open(sys.argv[1]))
train = next(e for e in r["estimates"] if e["phase"] == "train")
total = sum(p[1] for p in train["parts"])
peak = r["peak_memory_bytes"]["train"]
g = 1 << 30
print(json.dumps({"arch": sys.argv[2], "grad_checkpoint": sys.argv[3] == "true", "estimate_gib": round(total / g, 2),
                  "measured_gib": round(peak / g, 2), "ratio": round(total / peak, 2), "parts": train["parts"]}))
PY
  done
done
