#!/usr/bin/env bash
# Session 14 call O: forge kernels (the flash backward against the CPU), then forge's plain LoRA training
# (profiled) on qwen2.5-0.5b and qwen3-4b, and 4b eval.
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
.gpu/forge kernels --device cuda --json > $OUT/kernels.json 2>$OUT/kernels.err; echo "exit $?"
python3 -c "
import json; d=json.load(open('$OUT/kernels.json')); cs=d['checks']
bad=[c for c in cs if not c['pass']]; print(len(cs)-len(bad),'of',len(cs),'pass')
for c in cs:
  if 'attention' in c['kernel'] or not c['pass']: print(c['kernel'],c['shape'],c['past'],'%.2e'%c['forward_rel_err'],c['backward_rel_err'],c['pass'])"
tail -3 $OUT/kernels.err; echo "elapsed $SECONDS s"
set -o pipefail
forge=.gpu/forge peer=.gpu/peer here=$PWD out=$OUT/dense results=$OUT/dense/results.jsonl ckpts=/tmp/ck
data=.gpu/data/code-valid.jsonl
mkdir -p $out $ckpts
. bench/common.sh
for arch in qwen2.5-0.5b qwen3-4b; do
  ck=$(checkpoint $arch)
  FORGE_PROFILE=1 $forge train -q --json --device cuda --model "$ck" --data "$data" --out /tmp/lora-plain \
      --steps 6 --warmup-steps 0 --batch-size 8 --seq-len 1024 --rank 16 --alpha 32 --targets q_proj,k_proj,v_proj,o_proj \
      --optimizer adamw --lr 1e-4 --clip-norm 0 > $out/$arch-train.json 2> $out/$arch-train-profile.txt
  python3 -c "
import json; d=json.loads(open('$out/$arch-train.json').read().strip().splitlines()[-1])
print('$arch train', {k:v for k,v in d.items() if k in ('tokens_per_s','peak_memory_bytes','losses')})"
  tail -c 300 $out/$arch-train-profile.txt; echo
  echo "$arch elapsed $SECONDS s"
done
record forge "qwen3-4b eval" $forge eval -q --json --device cuda --model "$ck" --data "$data" --seq-len 1024 \
    --batch-size 8 --max-windows 120 --warmup-batches 3
tail -1 $results | cut -c1-300
grep -v "Writing model\|parameters ->" $out/stderr.log | tail -5; rm -f $out/stderr.log; echo "elapsed $SECONDS s"
