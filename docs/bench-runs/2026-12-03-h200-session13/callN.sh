#!/usr/bin/env bash
# Session 13 call N: issue 16's table, forge beside the peer on the three dense checkpoints in one call
# (the plain training rows only: with the checkpointed ones the three do not fit the 10-minute limit).
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain bench/gpu_vs_peer.sh .gpu/forge .gpu/peer .gpu/data/code-valid.jsonl \
  $OUT/dense qwen2.5-0.5b qwen3-1.7b qwen3-4b 2>&1 | tail -25
grep -v "Writing model\|parameters ->" $OUT/dense/stderr.log | tail -5; rm -f $OUT/dense/stderr.log; echo "elapsed $SECONDS s"
