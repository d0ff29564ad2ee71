#!/usr/bin/env bash
# Session 16 call Z: qwen3-4b's generation row, forge then the peer, as gpu_vs_peer.sh records it
# (call Y's script stopped its table at 450 s, before the peer's 4b generation). Same binary as Y.
cd .gpu && xz -dkf forge.xz && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
mkdir -p $OUT/z /tmp/ck
here=$PWD out=$OUT/z peer=.gpu/peer ckpts=/tmp/ck forge=.gpu/forge results=$OUT/z/results.jsonl; . bench/common.sh
set -o pipefail
ck=$(checkpoint qwen3-4b); echo "checkpoint elapsed $SECONDS s"
for round in 1 2; do
  record forge "qwen3-4b generate" $forge generate -q --json --device cuda --model "$ck" --prompt "$prompt" --max-new-tokens 128 --ignore-eos
done
record peer "qwen3-4b generate" timeout 200 python3 .gpu/peer/bench_torch.py --model "$ck" --task generate --new-tokens 128
cat $results; echo "elapsed $SECONDS s"
