set -e
F=/work/main/target/release/forge; m=/work/main/examples/tiny-qwen3; d=/work/main/examples/data; o=/work/main/runs/exp
for u in mlp mixed; do
  s=$(date +%s)
  $F train -q --json --model $o/$u --data ../shared/data/code-train.jsonl --steps 300 --batch-size 4 --seq-len 256 --lr 2e-3 --targets all-linear --rank 16 --out $o/$u-lora300 > $o/$u-lora300.json
  echo "$u lora300 $(( $(date +%s)-s )) s: $($F eval -q --json --model $o/$u --adapter $o/$u-lora300 --data $d/code-valid.jsonl --max-windows 32 | python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')"
done
