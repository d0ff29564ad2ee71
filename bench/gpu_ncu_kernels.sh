#!/usr/bin/env bash
# Per-kernel GPU time of one forge training step, from Nsight Compute (no FORGE_PROFILE
# synchronisation in between): ncu times each launch whose name matches KERNELS (default: the delta
# rule's kernels and the GEMMs), up to LAUNCHES of them, and bench/ncu_table.py sums them by kernel.
#
#   bench/gpu_ncu_kernels.sh FORGE_BINARY PEER_DIR DATA_JSONL OUT_DIR [ARCH]   (default ARCH: qwen3.5-0.8b)
#
# The step is the training benchmark's (bench/gpu_qwen35_train.sh): 8 x 1024, LoRA r 16 on the seven
# linear layers, bf16. ncu runs with --clock-control none (the device README: leave the clocks alone).
set -uo pipefail
forge=$1 peer=$2 data=$3 out=$4 arch=${5:-qwen3.5-0.8b}
here=$(cd "$(dirname "$0")/.." && pwd)
ck=${CKPT_DIR:-/tmp/forge-bench}/$arch
mkdir -p "$out"
[ -f "$ck/config.json" ] || python3 "$peer/models.py" --arch "$arch" --out "$ck" --tokenizer "$here/examples/tiny-qwen35" > /dev/null 2>&1
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
timeout "${NCU_LIMIT:-170}" "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
  --kernel-name "regex:${KERNELS:-gdn|gated_delta|gemm|Gemm}" --launch-count "${LAUNCHES:-1400}" \
  "$forge" train -q --json --device cuda --model "$ck" --data "$data" --out /tmp/lora-ncu --steps 1 --batch-size 8 \
  --seq-len 1024 --rank 16 --targets q_proj,k_proj,v_proj,o_proj,in_proj_qkv,in_proj_z,out_proj > "$out/ncu.csv" 2> "$out/ncu.err"
python3 "$here/bench/ncu_table.py" "$out/ncu.csv" "$arch" | tee "$out/ncu-kernels.md"
