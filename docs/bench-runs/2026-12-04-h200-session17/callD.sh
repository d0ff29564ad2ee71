#!/usr/bin/env bash
# Session 17 call D: the q/k norm fused with the RoPE after it (and call C's residual add with the norm). forge kernels with the new binary
# (the fused kernel against f32 and, bit for bit, against the add and norm kernels); then, binary before
# (3262a27, forge-old) and after, alternating, on the same checkpoints: 128 generated tokens (the same
# ids?) and tokens/s, eval's mean NLL (the same?) and tokens/s; Nsight Compute of qwen3-4b's token after.
cd .gpu && for f in forge.xz forge-old.xz data/*.xz; do xz -dkf $f; done && chmod +x forge forge-old && cd ..
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
mkdir -p $OUT/t /tmp/ck
cat examples/data/code-train.jsonl examples/data/code-valid.jsonl examples/data/code-test.jsonl > /tmp/code.jsonl
for a in qwen2.5-0.5b qwen3-1.7b qwen3-4b qwen3.5-0.8b; do
  tok=examples/tiny-qwen3; case $a in qwen3.5-*) tok=examples/tiny-qwen35 ;; esac
  python3 .gpu/peer/models.py --arch $a --out /tmp/ck/$a --tokenizer $tok > /dev/null 2>&1 &
done
.gpu/forge kernels --device cuda --json > $OUT/t/kernels.json 2> $OUT/t/kernels.err
wait; echo "kernels and checkpoints at $SECONDS s"
here=$PWD out=$OUT/t peer=.gpu/peer ckpts=/tmp/ck; . bench/common.sh
for a in qwen2.5-0.5b qwen3-1.7b qwen3-4b qwen3.5-0.8b; do
  data=.gpu/data/code-valid.jsonl; case $a in qwen3.5-*) data=/tmp/code.jsonl ;; esac
  for b in forge-old forge forge-old forge; do
    .gpu/$b generate -q --json --device cuda --model /tmp/ck/$a --prompt "$prompt" --max-new-tokens 128 --ignore-eos \
      2>> $OUT/t/err.log | tail -1 | sed "s/^{/{\"bin\": \"$b\", \"arch\": \"$a\", \"what\": \"generate\", /" >> $OUT/t/runs.jsonl
  done
  for b in forge-old forge; do
    .gpu/$b eval -q --json --device cuda --model /tmp/ck/$a --data $data --seq-len 1024 --batch-size 8 --max-windows 120 \
      --warmup-batches 3 2>> $OUT/t/err.log | tail -1 | sed "s/^{/{\"bin\": \"$b\", \"arch\": \"$a\", \"what\": \"eval\", /" >> $OUT/t/runs.jsonl
  done
done
echo "runs at $SECONDS s"
timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --log-file $OUT/t/ncu4b.csv \
  .gpu/forge generate -q --json --device cuda --model /tmp/ck/qwen3-4b --prompt "fn" --max-new-tokens 4 --ignore-eos > $OUT/t/ncu4b.json 2> $OUT/t/ncu4b.err
echo "ncu rc $? at $SECONDS s"
python3 - "$OUT/t" <<'PY'
import json, sys, collections
t = sys.argv[1]
k = json.load(open(f"{t}/kernels.json"))
checks = k["checks"] if isinstance(k, dict) else k
print(sum(c["pass"] for c in checks), "of", len(checks), "checks pass")
for c in checks:
    if "add_rms" in c["kernel"] or "rope_bf16" in c["kernel"] and "norm" in c["kernel"] or not c["pass"]: print(c["kernel"], c["shape"], "%.2e" % c["forward_rel_err"], c["pass"])
runs = collections.defaultdict(list)
for l in open(f"{t}/runs.jsonl"):
    d = json.loads(l); runs[(d["arch"], d["what"], d["bin"])].append(d)
for (a, w, b), ds in runs.items():
    if w == "generate": print(a, w, b, ["%.1f" % d["new_tokens_per_s"] for d in ds], hash(tuple(ds[0]["token_ids"])) % 10**8, all(d["token_ids"] == ds[0]["token_ids"] for d in ds))
    else: print(a, w, b, ds[0].get("mean_nll"), "%.0f" % ds[0].get("tokens_per_s", 0))
PY
cd $OUT && tar cJf t.tar.xz t && rm -rf t
