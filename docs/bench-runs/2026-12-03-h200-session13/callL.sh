#!/usr/bin/env bash
# Session 13 call L: event tracking off; forge alone on two dense checkpoints (the peer's numbers: call K).
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
set -o pipefail
forge=.gpu/forge peer=.gpu/peer here=$PWD out=$OUT/dense results=$OUT/dense/results.jsonl ckpts=/tmp/ck
mkdir -p $out $ckpts
. bench/common.sh
data=.gpu/data/code-valid.jsonl
for arch in qwen2.5-0.5b qwen3-1.7b; do
  ck=$(checkpoint $arch)
  for i in 1 2; do
  record forge "$arch generate" $forge generate -q --json --device cuda --model "$ck" --prompt "$prompt" \
    --max-new-tokens 128 --ignore-eos
  done
  record forge "$arch eval" $forge eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows 120 --warmup-batches 3
  record forge "$arch train plain" $forge train -q --json --device cuda --model "$ck" --data "$data" --out "/tmp/lora-plain" \
      --steps 6 --warmup-steps 0 --batch-size 8 --seq-len 1024 --rank 16 --alpha 32 --targets q_proj,k_proj,v_proj,o_proj \
      --optimizer adamw --lr 1e-4 --clip-norm 0
  echo "$arch elapsed $SECONDS s"
done
ck=$(checkpoint qwen2.5-0.5b)
nsys --version 2>/dev/null
FORGE_PROFILE=1 $forge generate -q --json --device cuda --model "$ck" --prompt "$prompt" --max-new-tokens 64 --ignore-eos \
  2> $out/profile-generate.txt > /dev/null
python3 -c "
import json
for l in open('$results'):
  d=json.loads(l); print(d['tool'],d['what'],{k:v for k,v in d.items() if k in ('tokens_per_s','new_tokens_per_s','peak_memory_bytes','wall_s','mean_nll','error')})"
tail -5 $out/stderr.log; rm -f $out/stderr.log; echo "elapsed $SECONDS s"
