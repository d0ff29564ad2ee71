#!/usr/bin/env bash
# Session 15 call U: issue 16's table on the three dense checkpoints in one call (forge kernels
# first; load to first token now timed to the token's report, with the process's end beside it), then
# qwen3.5-0.8b's load rows again with the peer's Triton cache warm for "again" (call S's was not).
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain timeout 440 bench/gpu_vs_peer.sh .gpu/forge .gpu/peer .gpu/data/code-valid.jsonl \
  $OUT/dense qwen2.5-0.5b qwen3-1.7b qwen3-4b 2>&1 | tail -16
grep -v "Writing model\|parameters ->\|Loading weights" $OUT/dense/stderr.log | tail -4; rm -f $OUT/dense/stderr.log; echo "elapsed $SECONDS s"
CKPT_DIR=/tmp/ck PYTHONPATH=/tmp/site timeout 130 bench/gpu_loads.sh .gpu/forge .gpu/peer $OUT/qwen35-loads qwen3.5-0.8b > /dev/null 2>&1
cat $OUT/qwen35-loads/results.jsonl; rm -f $OUT/qwen35-loads/stderr.log
python3 -c "
import json
for l in open('$OUT/dense/results.jsonl'):
  d=json.loads(l)
  if d['what']=='kernels':
    print(sum(c['pass'] for c in d['checks']),'of',len(d['checks']),'checks pass')
    for c in d['checks']:
      if 'decoding' in c['kernel'] or 'flash backward' in c['kernel'] or not c['pass']: print(c['kernel'],c['shape'],c['past'],'%.2e'%c['forward_rel_err'],c['backward_rel_err'],c['pass'])
  elif 'load' in d['what'] or 'eval' in d['what']: print(d['tool'], d['what'], {k: d.get(k) for k in ('seconds','exit_seconds','mean_nll','error') if k in d})"
echo "elapsed $SECONDS s"
