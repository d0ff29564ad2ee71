#!/usr/bin/env bash
# Session 17 call B: Qwen3.5-0.8b's rows of issue 16's table with the committed binary (3262a27), as
# session 15's call S ran them (the peer with flash-linear-attention from the fla_core wheel where it runs).
cd .gpu && xz -dkf forge.xz && chmod +x forge && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
cat examples/data/code-train.jsonl examples/data/code-valid.jsonl examples/data/code-test.jsonl > /tmp/code.jsonl
mkdir -p $OUT/t /tmp/ck
CKPT_DIR=/tmp/ck PEER_STEPS=5 MODES=plain timeout $((585 - SECONDS)) bench/gpu_vs_peer.sh .gpu/forge .gpu/peer /tmp/code.jsonl \
  $OUT/t/qwen35 qwen3.5-0.8b 2>&1 | tail -8
echo "table rc ${PIPESTATUS[0]} elapsed $SECONDS s"
grep -v "Writing model\|parameters ->\|Loading weights" $OUT/t/qwen35/stderr.log | tail -30 > $OUT/t/stderr-tail.txt; rm -f $OUT/t/qwen35/stderr.log
cd $OUT && tar cJf t.tar.xz t && rm -rf t
