#!/usr/bin/env bash
# Session 14 call P: issue 16's table (forge kernels first), forge beside the peer on the three dense
# checkpoints, plain training rows; then where forge's start-up goes (a tiny model: the fixed part).
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain bench/gpu_vs_peer.sh .gpu/forge .gpu/peer .gpu/data/code-valid.jsonl \
  $OUT/dense qwen2.5-0.5b qwen3-1.7b qwen3-4b 2>&1 | tail -25
grep -v "Writing model\|parameters ->" $OUT/dense/stderr.log | tail -5; rm -f $OUT/dense/stderr.log; echo "elapsed $SECONDS s"
python3 -c "
import json
for l in open('$OUT/dense/results.jsonl'):
  d=json.loads(l)
  if d['what']=='kernels':
    print(sum(c['pass'] for c in d['checks']),'of',len(d['checks']),'checks pass')
    for c in d['checks']:
      if 'attention' in c['kernel'] or 'staged' in c['kernel'] or not c['pass']: print(c['kernel'],c['shape'],c['past'],'%.2e'%c['forward_rel_err'],c['backward_rel_err'],c['pass'])"
for i in 1 2 3; do
  s=$(date +%s.%N); .gpu/forge generate -q --json --device cuda --model examples/tiny-qwen3 --prompt hello --max-new-tokens 1 >/dev/null; e=$(date +%s.%N)
  s2=$(date +%s.%N); .gpu/forge inspect --model examples/tiny-qwen3 >/dev/null; e2=$(date +%s.%N)
  python3 -c "print('tiny generate %.3f s, inspect %.3f s' % ($e - $s, $e2 - $s2))"
done
python3 - <<'PY'
import ctypes, time
t=time.time(); cu=ctypes.CDLL('libcuda.so.1'); cu.cuInit(0); t1=time.time()
dev=ctypes.c_int(); cu.cuDeviceGet(ctypes.byref(dev),0); ctx=ctypes.c_void_p(); cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx),dev); cu.cuCtxSetCurrent(ctx); t2=time.time()
b=ctypes.CDLL('libcublas.so.13'); t3=time.time(); h=ctypes.c_void_p(); b.cublasCreate_v2(ctypes.byref(h)); t4=time.time()
r=ctypes.CDLL('libcurand.so.10'); t5=time.time()
print('cuInit %.3f, primary context %.3f, dlopen cublas %.3f, cublasCreate %.3f, dlopen curand %.3f s' % (t1-t, t2-t1, t3-t2, t4-t3, t5-t4))
PY
echo "elapsed $SECONDS s"
