#!/usr/bin/env bash
# Session 17 call A: issue 16's table on the three dense checkpoints in one call, with the committed
# binary (3262a27). The three random checkpoints are written side by side first (gpu_vs_peer.sh reuses a
# folder that has its config.json), so that the table fits the call's ten minutes. One archive back.
cd .gpu && xz -dkf forge.xz && for f in data/*.xz; do xz -dkf $f; done && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
mkdir -p $OUT/t /tmp/ck
for a in qwen2.5-0.5b qwen3-1.7b qwen3-4b; do
  python3 .gpu/peer/models.py --arch $a --out /tmp/ck/$a --tokenizer examples/tiny-qwen3 > $OUT/t/ck-$a.log 2>&1 &
done; wait; echo "checkpoints written at $SECONDS s"; du -sh /tmp/ck/*
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain timeout $((588 - SECONDS)) bench/gpu_vs_peer.sh .gpu/forge .gpu/peer \
  .gpu/data/code-valid.jsonl $OUT/t/dense qwen2.5-0.5b qwen3-1.7b qwen3-4b 2>&1 | tail -12
echo "table rc ${PIPESTATUS[0]} elapsed $SECONDS s"
grep -v "Writing model\|parameters ->\|Loading weights" $OUT/t/dense/stderr.log | tail -30 > $OUT/t/stderr-tail.txt; rm -f $OUT/t/dense/stderr.log
cd $OUT && tar cJf t.tar.xz t && rm -rf t
