#!/usr/bin/env bash
# Session 15 call S: forge kernels (hybrid decoding as a CUDA graph among the checks), where forge's
# start-up goes (tiny-qwen3 and qwen2.5-0.5b), then Qwen3.5-0.8b's rows of issue 16's table.
cd .gpu && xz -dkf forge.xz && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
cat examples/data/code-train.jsonl examples/data/code-valid.jsonl examples/data/code-test.jsonl > /tmp/code.jsonl
mkdir -p /tmp/ck
python3 .gpu/peer/models.py --arch qwen2.5-0.5b --out /tmp/ck/qwen2.5-0.5b --tokenizer examples/tiny-qwen3 > /dev/null 2>&1
.gpu/forge generate -q --json --device cuda --model /tmp/ck/qwen2.5-0.5b --prompt hello --max-new-tokens 1 > /dev/null
bench/gpu_startup.sh .gpu/forge $OUT/startup examples/tiny-qwen3 /tmp/ck/qwen2.5-0.5b
rm -rf /tmp/ck/qwen2.5-0.5b; echo "elapsed $SECONDS s"
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain timeout 480 bench/gpu_vs_peer.sh .gpu/forge .gpu/peer /tmp/code.jsonl \
  $OUT/qwen35 qwen3.5-0.8b 2>&1 | tail -22
grep -v "Writing model\|parameters ->" $OUT/qwen35/stderr.log | tail -8; echo "elapsed $SECONDS s"
python3 -c "
import json
for l in open('$OUT/qwen35/results.jsonl'):
  d=json.loads(l)
  if d['what']=='kernels':
    print(sum(c['pass'] for c in d['checks']),'of',len(d['checks']),'checks pass')
    for c in d['checks']:
      if 'decoding' in c['kernel'] or 'attention' in c['kernel'] or not c['pass']: print(c['kernel'],c['shape'],c['past'],'%.2e'%c['forward_rel_err'],c['backward_rel_err'],c['pass'])
  elif 'what' in d: print(d['tool'], d['what'], {k: d.get(k) for k in ('tokens_per_s','new_tokens_per_s','seconds','peak_memory_bytes','peak_gib','mean_nll','wall_s','error') if k in d})"
