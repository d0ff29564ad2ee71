#!/usr/bin/env bash
# Session 14 call R: issue 16's table (forge kernels first), forge beside the peer on the three dense
# checkpoints, plain training rows, on the final code (flash backward, two row tiles a warp in the
# forward, staged weight upload, a warp a row for short norms).
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain bench/gpu_vs_peer.sh .gpu/forge .gpu/peer .gpu/data/code-valid.jsonl \
  $OUT/dense qwen2.5-0.5b qwen3-1.7b qwen3-4b 2>&1 | head -14
grep -v "Writing model\|parameters ->\|Loading weights" $OUT/dense/stderr.log | tail -5; rm -f $OUT/dense/stderr.log; echo "elapsed $SECONDS s"
python3 -c "
import json
for l in open('$OUT/dense/results.jsonl'):
  d=json.loads(l)
  if d['what']=='kernels':
    print(sum(c['pass'] for c in d['checks']),'of',len(d['checks']),'checks pass')
    for c in d['checks']:
      if 'attention' in c['kernel'] or 'rms_norm' in c['kernel'] or 'staged' in c['kernel'] or not c['pass']: print(c['kernel'],c['shape'],c['past'],'%.2e'%c['forward_rel_err'],c['backward_rel_err'],c['pass'])
  elif 'eval' in d['what']: print(d['tool'], d['what'], d.get('tokens_per_s'), d.get('mean_nll'))"
