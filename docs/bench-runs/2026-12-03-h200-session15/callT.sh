#!/usr/bin/env bash
# Session 15 call T: where forge's start-up goes, and two changes to it measured against call S's
# binary in one run: S (call S), B (the device opened on a thread of its own), C (B, and the context
# left to the process's exit). tiny-qwen3 and qwen2.5-0.5b, two interleaved rounds; the peer's load
# of qwen2.5-0.5b three times beside them.
cd .gpu && for b in S B C; do xz -dkf forge-$b.xz && chmod +x forge-$b; done && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
mkdir -p /tmp/ck $OUT
python3 .gpu/peer/models.py --arch qwen2.5-0.5b --out /tmp/ck/qwen2.5-0.5b --tokenizer examples/tiny-qwen3 > /dev/null 2>&1
.gpu/forge-S generate -q --json --device cuda --model /tmp/ck/qwen2.5-0.5b --prompt hello --max-new-tokens 1 > /dev/null
for round in 1 2; do for b in S B C; do
  echo "== binary $b, round $round"; bench/gpu_startup.sh .gpu/forge-$b $OUT/startup-$b-$round examples/tiny-qwen3 /tmp/ck/qwen2.5-0.5b | grep -v "^  "
done; done
cat $OUT/startup-S-1/startup.txt | grep "^  \|startup\|relocation"
for i in 1 2 3; do python3 .gpu/peer/bench_torch.py --model /tmp/ck/qwen2.5-0.5b --task load 2>/dev/null | tail -1; done
echo "elapsed $SECONDS s"
