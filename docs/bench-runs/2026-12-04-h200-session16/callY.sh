#!/usr/bin/env bash
# Session 16 call Y: the committed binary (one-weight products back on call W's kernel, q/k/v and
# gate/up+SwiGLU fused). Per-kernel times of qwen3-4b's decoding under Nsight Compute as in calls W
# and X, then issue 16's table on the three dense checkpoints in one call (forge kernels first). All
# results in one archive (a call returns at most eight files).
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
mkdir -p $OUT/y /tmp/ck
here=$PWD out=$OUT/y peer=.gpu/peer ckpts=/tmp/ck; . bench/common.sh
ck=$(checkpoint qwen3-4b); echo "checkpoint elapsed $SECONDS s"
timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --log-file $OUT/y/ncu4b.csv \
  .gpu/forge generate -q --json --device cuda --model $ck --prompt "fn" --max-new-tokens 4 --ignore-eos > $OUT/y/ncu4b.json 2> $OUT/y/ncu4b.err
echo "ncu rc $? elapsed $SECONDS s"
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain timeout 450 bench/gpu_vs_peer.sh .gpu/forge .gpu/peer .gpu/data/code-valid.jsonl \
  $OUT/y/dense qwen2.5-0.5b qwen3-1.7b qwen3-4b 2>&1 | tail -16
grep -v "Writing model\|parameters ->\|Loading weights" $OUT/y/dense/stderr.log | tail -4
python3 -c "
import json
for l in open('$OUT/y/dense/results.jsonl'):
  d=json.loads(l)
  if d['what']=='kernels':
    print(sum(c['pass'] for c in d['checks']),'of',len(d['checks']),'checks pass')
    [print(c['kernel'],c['shape'],'%.2e'%c['forward_rel_err'],c['pass']) for c in d['checks'] if 'matvec' in c['kernel'] or 'decoding' in c['kernel'] or not c['pass']]
  else: print(d['tool'], d['what'], {k: d.get(k) for k in ('new_tokens_per_s','tokens_per_s','mean_nll','seconds','peak_memory_bytes','error') if k in d})"
[ -f $OUT/y/dense/table.md ] && cat $OUT/y/dense/table.md | head -30
echo "elapsed $SECONDS s"
cd $OUT && tar cJf y.tar.xz y && rm -rf y
