set -e
F=/work/main/target/release/forge; m=/work/main/examples/tiny-qwen3; d=/work/main/examples/data; o=/work/main/runs/exp
ev() { for s in code-valid prose-valid; do printf "%s " $($F eval -q --json --model $1 ${2:+--adapter $2} --data $d/$s.jsonl --max-windows 32 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["perplexity"],4))'); done; }
$F prune -q --json --model $m --pruner budget --scorer taylor --data $d/code-train.jsonl --calib-windows 8 --target-params 0.75 --units heads,mlp --out $o/hm > $o/hm.prune.json
echo "hm none: $(ev $o/hm)"
tr() { local u=$1 name=$2; shift 2; s=$(date +%s); $F train -q --json --model $o/$u --data ../shared/data/code-train.jsonl --batch-size 4 --seq-len 256 --lr 2e-3 --targets all-linear --out $o/$u-$name "$@" > $o/$u-$name.json; echo "$u $name $(( $(date +%s)-s )) s: $(ev $o/$u $o/$u-$name)"; }
tr hm lora300 --steps 300 --rank 16
tr mlp lora600r32 --steps 600 --rank 32
tr mlp distil600r32 --steps 600 --rank 32 --teacher $m
