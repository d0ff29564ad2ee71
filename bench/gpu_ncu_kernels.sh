#!/usr/bin/env bash
# Per-kernel GPU time of one forge training step, from Nsight Compute (no FORGE_PROFILE
# synchronisation in between): ncu times each launch whose name matches KERNELS (default: the delta
# rule's kernels and the GEMMs; `all`: every kernel), up to LAUNCHES of them (1400, or 6000 for
# `all`), and bench/ncu_table.py sums them by kernel.
#
#   bench/gpu_ncu_kernels.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH]   (default ARCH: qwen3.5-0.8b)
#
# LAYERS=N profiles a checkpoint of the geometry cut to its first N layers (every kernel of a whole
# step then fits ncu's time: the ninth session's tables used LAYERS=4 KERNELS=all, three
# linear-attention layers and one full); TRAIN_FLAGS adds to the step (e.g. --grad-checkpoint).
# The step is the training benchmark's (bench/gpu_qwen35_train.sh): 8 x 1024, LoRA r 16 on the seven
# linear layers, bf16. ncu runs with --clock-control none (the device README: leave the clocks alone).
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4 arch=${5:-qwen3.5-0.8b}
here=$(cd "$(dirname "$0")/.." && pwd)
ck=${CKPT_DIR:-/tmp/forge-bench}/$arch${LAYERS:+-$LAYERS-layers}
mkdir -p "$out"
if [ ! -f "$ck/config.json" ]; then
  models=$peer/models.py
  if [ -n "${LAYERS:-}" ]; then  # the arch's own line of models.py, with its layer count replaced
    models=$out/models-$LAYERS-layers.py
    python3 - "$peer/models.py" "$arch" "$LAYERS" "$models" <<'PY'
import re, sys
source, arch, layers, to = sys.argv[1:]
lines = [re.sub(r"num_hidden_layers=\d+", f"num_hidden_layers={layers}", l) if f'"{arch}":' in l else l
         for l in open(source).read().split("\n")]
open(to, "w").write("\n".join(lines))
PY
  fi
  python3 "$models" --arch "$arch" --out "$ck" --tokenizer "$here/examples/tiny-qwen35" > /dev/null 2>&1
fi
filter=(--kernel-name "regex:${KERNELS:-gdn|gated_delta|gemm|Gemm}") launches=${LAUNCHES:-1400}
[ "${KERNELS:-}" = all ] && filter=() launches=${LAUNCHES:-6000}
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
timeout "${NCU_LIMIT:-170}" "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
  "${filter[@]}" --launch-count "$launches" \
  "$forge" train -q --json --device cuda --model "$ck" --data "$data" --out /tmp/lora-ncu --steps 1 --batch-size 8 \
  --seq-len 1024 --rank 16 --targets q_proj,k_proj,v_proj,o_proj,in_proj_qkv,in_proj_z,out_proj ${TRAIN_FLAGS:-} \
  > "$out/ncu.csv" 2> "$out/ncu.err"
python3 "$here/bench/ncu_table.py" "$out/ncu.csv" "$arch${LAYERS:+ ($LAYERS layers)}" | tee "$out/ncu-kernels.md"
