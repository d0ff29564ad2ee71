#!/usr/bin/env bash
# Session 16 call W: the one-row kernel's binary (aa42ad7). First the per-kernel times of qwen3-4b's
# decoding under Nsight Compute (a one-word prompt, 4 new tokens, every kernel and graph node timed
# alone), then issue 16's table on the three dense checkpoints in one call.
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
mkdir -p $OUT /tmp/ck
here=$PWD out=$OUT peer=.gpu/peer ckpts=/tmp/ck; . bench/common.sh
ck=$(checkpoint qwen3-4b); echo "checkpoint elapsed $SECONDS s"
timeout 100 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --log-file $OUT/ncu4b.csv \
  .gpu/forge generate -q --json --device cuda --model $ck --prompt "fn" --max-new-tokens 4 --ignore-eos > $OUT/ncu4b.json 2> $OUT/ncu4b.err
echo "ncu rc $? elapsed $SECONDS s"; xz -T4 -6 $OUT/ncu4b.csv
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain timeout 440 bench/gpu_vs_peer.sh .gpu/forge .gpu/peer .gpu/data/code-valid.jsonl \
  $OUT/dense qwen2.5-0.5b qwen3-1.7b qwen3-4b 2>&1 | tail -16
grep -v "Writing model\|parameters ->\|Loading weights" $OUT/dense/stderr.log | tail -4; rm -f $OUT/dense/stderr.log
python3 -c "
import json
for l in open('$OUT/dense/results.jsonl'):
  d=json.loads(l)
  if d['what']=='kernels': print(sum(c['pass'] for c in d['checks']),'of',len(d['checks']),'checks pass')
  elif 'gen' in d['what'] or 'eval' in d['what']: print(d['tool'], d['what'], {k: d.get(k) for k in ('new_tokens_per_s','tokens_per_s','mean_nll','error') if k in d})"
echo "elapsed $SECONDS s"
