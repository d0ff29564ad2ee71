#!/usr/bin/env bash
# Session 14 call Q: forge kernels, then qwen3-4b eval with the flash forward at one row tile a warp
# (FORGE_FA_MT=1, an experiment's switch) and at two, twice each, alternating.
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
.gpu/forge kernels --device cuda --json > $OUT/kernels.json 2>$OUT/kernels.err; echo "exit $?"
python3 -c "
import json; d=json.load(open('$OUT/kernels.json')); cs=d['checks']
bad=[c for c in cs if not c['pass']]; print(len(cs)-len(bad),'of',len(cs),'pass')
for c in cs:
  if 'attention' in c['kernel'] or 'decoding' in c['kernel'] or not c['pass']: print(c['kernel'],c['shape'],c['past'],'%.2e'%c['forward_rel_err'],c['backward_rel_err'],c['pass'])"
echo "elapsed $SECONDS s"
set -o pipefail
forge=.gpu/forge peer=.gpu/peer here=$PWD out=$OUT/dense results=$OUT/dense/results.jsonl ckpts=/tmp/ck
data=.gpu/data/code-valid.jsonl
mkdir -p $out $ckpts
. bench/common.sh
ck=$(checkpoint qwen3-4b)
for i in 1 2; do for mt in 1 2; do
  FORGE_FA_MT=$mt record forge "qwen3-4b eval mt$mt" $forge eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows 120 --warmup-batches 3
  tail -1 $results | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['what'], d.get('tokens_per_s'), d.get('mean_nll'))"
done; done
FORGE_PROFILE=1 $forge eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 --batch-size 8 \
      --max-windows 48 2> $out/profile-eval-4b.txt > /dev/null
tail -c 600 $out/profile-eval-4b.txt
grep -v "Writing model\|parameters ->" $out/stderr.log | tail -5; echo "elapsed $SECONDS s"
