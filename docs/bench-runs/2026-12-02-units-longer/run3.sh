set -e
F=/tmp/forge-exp; m=/work/main/examples/tiny-qwen3; d=/work/main/examples/data; o=/work/main/runs/exp
ev() { for s in code-valid code-test prose-valid; do printf "%s " $($F eval -q --json --model $1 ${2:+--adapter $2} --data $d/$s.jsonl --max-windows 32 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["perplexity"],4))'); done; }
tr() { local u=$1 name=$2; shift 2; s=$(date +%s); $F train -q --json --model $o/$u --data ../shared/data/code-train.jsonl --batch-size 4 --seq-len 256 --lr 2e-3 --targets all-linear --out $o/$u-$name "$@" > $o/$u-$name.json; echo "$u $name $(( $(date +%s)-s )) s: $(ev $o/$u $o/$u-$name)"; }
tr hm lora600r32 --steps 600 --rank 32
