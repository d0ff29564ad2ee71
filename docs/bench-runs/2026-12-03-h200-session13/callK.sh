#!/usr/bin/env bash
# Session 13 call K: forge kernels (flash attention forward; the random-hybrid tape check), then eval and
# generation of forge beside the peer on two dense checkpoints, and forge's eval profile.
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
.gpu/forge kernels --device cuda --json > $OUT/kernels.json 2>$OUT/kernels.err; echo "exit $?"
python3 -c "
import json; d=json.load(open('$OUT/kernels.json')); cs=d['checks']
bad=[c for c in cs if not c['pass']]; print(len(cs)-len(bad),'of',len(cs),'pass')
for c in cs:
  if 'flash' in c['kernel'] or 'attention' in c['kernel'] or 'random' in c['kernel'] or not c['pass']: print(c['kernel'],c['shape'],c['past'],'%.2e'%c['forward_rel_err'],c['backward_rel_err'],c['pass'])"
tail -2 $OUT/kernels.err; echo "elapsed $SECONDS s"
set -o pipefail
forge=.gpu/forge peer=.gpu/peer here=$PWD out=$OUT/dense results=$OUT/dense/results.jsonl ckpts=/tmp/ck
mkdir -p $out $ckpts
. bench/common.sh
data=.gpu/data/code-valid.jsonl
for arch in qwen2.5-0.5b qwen3-1.7b; do
  ck=$(checkpoint $arch)
  record forge "$arch eval" $forge eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows 120 --warmup-batches 3
  record peer "$arch eval" python3 $peer/bench_torch.py --model "$ck" --task eval --batch 8 --seq 1024 --steps 5
  record forge "$arch generate" $forge generate -q --json --device cuda --model "$ck" --prompt "$prompt" \
    --max-new-tokens 128 --ignore-eos
  record peer "$arch generate" python3 $peer/bench_torch.py --model "$ck" --task generate --new-tokens 128
  echo "$arch elapsed $SECONDS s"
done
ck=$(checkpoint qwen2.5-0.5b)
FORGE_PROFILE=1 $forge eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 --batch-size 8 \
  --max-windows 48 2> $out/profile-eval.txt > /dev/null
FORGE_PROFILE=1 $forge generate -q --json --device cuda --model "$ck" --prompt "$prompt" --max-new-tokens 64 --ignore-eos \
  2> $out/profile-generate.txt > /dev/null
python3 bench/ratio_table.py $out 2>/dev/null | head -20
cat $results | cut -c1-300
rm -f $out/stderr.log; echo "elapsed $SECONDS s"
