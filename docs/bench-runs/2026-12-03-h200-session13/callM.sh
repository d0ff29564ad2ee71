#!/usr/bin/env bash
# Session 13 call M: forge kernels (captured decoding vs op by op), then generation on two dense checkpoints.
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
.gpu/forge kernels --device cuda --json > $OUT/kernels.json 2>$OUT/kernels.err; echo "exit $?"
python3 -c "
import json; d=json.load(open('$OUT/kernels.json')); cs=d['checks']
bad=[c for c in cs if not c['pass']]; print(len(cs)-len(bad),'of',len(cs),'pass')
for c in cs:
  if 'decoding' in c['kernel'] or not c['pass']: print(c['kernel'],c['shape'],c['past'],'%.2e'%c['forward_rel_err'],c['backward_rel_err'],c['pass'])"
tail -3 $OUT/kernels.err; echo "elapsed $SECONDS s"
set -o pipefail
forge=.gpu/forge peer=.gpu/peer here=$PWD out=$OUT/dense results=$OUT/dense/results.jsonl ckpts=/tmp/ck
mkdir -p $out $ckpts
. bench/common.sh
for arch in qwen2.5-0.5b qwen3-1.7b; do
  ck=$(checkpoint $arch)
  for i in 1 2; do
  record forge "$arch generate" $forge generate -q --json --device cuda --model "$ck" --prompt "$prompt" \
    --max-new-tokens 128 --ignore-eos
  done
  echo "$arch elapsed $SECONDS s"
done
python3 -c "
import json
for l in open('$results'):
  d=json.loads(l); print(d['tool'],d['what'],{k:v for k,v in d.items() if k in ('new_tokens_per_s','peak_memory_bytes','wall_s','error','token_ids')})" | cut -c1-400
grep -v "Writing model\|parameters ->" $out/stderr.log | tail -5; rm -f $out/stderr.log; echo "elapsed $SECONDS s"
