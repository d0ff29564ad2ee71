#!/usr/bin/env bash
# Session 16 call X: decoding's fused one-row products (q/k/v as one launch, gate/up with SwiGLU as
# one, one-wave grids, the KV position index kept, no transpose at one position). forge kernels on
# the new binary (X); per-kernel times of qwen3-4b's decoding under Nsight Compute as in call W; then
# generation (128 new tokens, bench/common.sh's prompt) by call W's binary (W) and X alternately,
# twice each, on the three dense checkpoints and qwen3.5-0.8b.
cd .gpu && for b in W X; do xz -dkf forge-$b.xz && chmod +x forge-$b; done && for f in data/*.xz; do xz -dkf $f; done; cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
mkdir -p $OUT/x /tmp/ck
.gpu/forge-X kernels --device cuda --json > $OUT/x/kernels.json 2> $OUT/x/kernels.err
python3 -c "
import json; d=json.load(open('$OUT/x/kernels.json')); cs=d['checks']
print(sum(c['pass'] for c in cs),'of',len(cs),'checks pass')
[print(c['kernel'],c['shape'],'%.2e'%c['forward_rel_err'],c['pass']) for c in cs if 'matvec' in c['kernel'] or 'decoding' in c['kernel'] or 'transpose' in c['kernel'] or not c['pass']]"
echo "elapsed $SECONDS s"
here=$PWD out=$OUT/x peer=.gpu/peer ckpts=/tmp/ck; . bench/common.sh
ck=$(checkpoint qwen3-4b)
timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --log-file $OUT/x/ncu4b.csv \
  .gpu/forge-X generate -q --json --device cuda --model $ck --prompt "fn" --max-new-tokens 4 --ignore-eos > $OUT/x/ncu4b.json 2> $OUT/x/ncu4b.err
echo "ncu rc $? elapsed $SECONDS s"
for arch in qwen2.5-0.5b qwen3-1.7b qwen3-4b qwen3.5-0.8b; do
  ck=$(checkpoint $arch)
  for round in 1 2; do for b in W X; do
    echo "$arch $b: $(.gpu/forge-$b generate -q --json --device cuda --model $ck --prompt "$prompt" --max-new-tokens 128 --ignore-eos \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.1f tokens/s" % d["new_tokens_per_s"], d["token_ids"][:8])')"
  done; done
  rm -rf $ck; echo "elapsed $SECONDS s"
done 2>&1 | tee $OUT/x/generate.txt
cd $OUT && tar cJf x.tar.xz x && rm -rf x
