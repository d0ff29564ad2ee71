#!/usr/bin/env bash
# Session 15 call V: the one-row product kernel (matvec_bf16) for decoding. forge kernels on the new
# binary (V); then generation (128 new tokens, batch 1, bench/common.sh's prompt) of the three dense
# checkpoints and qwen3.5-0.8b by call U's binary (U, cuBLAS at one row) and V alternately, twice each,
# and the peer's once beside them.
cd .gpu && for b in U V; do xz -dkf forge-$b.xz && chmod +x forge-$b; done && for f in data/*.xz; do xz -dkf $f; done; cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
mkdir -p $OUT /tmp/ck
.gpu/forge-V kernels --device cuda --json > $OUT/kernels.json 2> $OUT/kernels.err
python3 -c "
import json; d=json.load(open('$OUT/kernels.json')); cs=d['checks']
print(sum(c['pass'] for c in cs),'of',len(cs),'checks pass')
[print(c['kernel'],c['shape'],'%.2e'%c['forward_rel_err'],c['pass']) for c in cs if 'matvec' in c['kernel'] or 'decoding' in c['kernel'] or not c['pass']]"
echo "elapsed $SECONDS s"
here=$PWD out=$OUT peer=.gpu/peer ckpts=/tmp/ck; . bench/common.sh
for arch in qwen2.5-0.5b qwen3-1.7b qwen3-4b qwen3.5-0.8b; do
  ck=$(checkpoint $arch)
  for round in 1 2; do for b in U V; do
    echo "$arch $b: $(.gpu/forge-$b generate -q --json --device cuda --model $ck --prompt "$prompt" --max-new-tokens 128 --ignore-eos \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.1f tokens/s" % d["new_tokens_per_s"], d["token_ids"][:6])')"
  done; done
  case $arch in qwen3.5-*) ;; *) echo "$arch peer: $(python3 $peer/bench_torch.py --model $ck --task generate --new-tokens 128 --steps 5 2>/dev/null | tail -1)";; esac
  rm -rf $ck; echo "elapsed $SECONDS s"
done 2>&1 | tee $OUT/generate.txt
