#!/usr/bin/env python3
"""The pruning table of docs/RESULTS.md: perplexity after removing 12.5/25/37.5% of tiny-qwen3's heads
without training, per scorer, on code-valid and prose-valid (32 windows of 512 tokens).

    python3 bench/pruning_table.py [--forge target/release/forge] > table.md

Scorers that read data calibrate on the same domain's *train* slice (16 windows of 256 tokens); heads
are removed by the `global` pruner (lowest scores anywhere, at least one head per layer) and evaluated
masked (`forge eval --mask`). `random` is averaged over seeds 0, 1, 2.
"""
import argparse, json, os, subprocess, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--forge", default="target/release/forge")
ap.add_argument("--model", default="examples/tiny-qwen3")
a = ap.parse_args()
RATIOS = [0.125, 0.25, 0.375]
DOMAINS = ["code", "prose"]
SCORERS = [("l2", None), ("activation", None), ("taylor", None), ("random", 0), ("random", 1), ("random", 2)]


def forge(*args):
    out = subprocess.run([a.forge, *args, "-q", "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def ppl(domain, mask=None):
    extra = ["--mask", mask] if mask else []
    return forge("eval", "--model", a.model, "--data", f"examples/data/{domain}-valid.jsonl", "--max-windows", "32", *extra)["perplexity"]


tmp = tempfile.mkdtemp()
results = {}
baseline = {d: ppl(d) for d in DOMAINS}
for domain in DOMAINS:
    for scorer, seed in SCORERS:
        scores = os.path.join(tmp, f"{scorer}-{seed}-{domain}.json")
        args = ["score", "--model", a.model, "--scorer", scorer, "--out", scores]
        if seed is not None:
            args += ["--scorer-opt", f"seed={seed}"]
        if scorer in ("activation", "taylor"):
            args += ["--data", f"examples/data/{domain}-train.jsonl"]
        forge(*args)
        for ratio in RATIOS:
            out = os.path.join(tmp, "pruned")
            r = forge("prune", "--model", a.model, "--pruner", "global", "--ratio", str(ratio), "--scores", scores,
                      "--save-mode", "mask", "--out", out)
            results.setdefault((scorer, ratio, domain), []).append(ppl(domain, os.path.join(out, "mask.json")))

print(f"| scorer | heads removed | code-valid ppl | prose-valid ppl |")
print(f"| --- | --- | --- | --- |")
print(f"| (unpruned) | 0 of 64 | {baseline['code']:.3f} | {baseline['prose']:.3f} |")
for ratio in RATIOS:
    for scorer in ["l2", "activation", "taylor", "random"]:
        cells = []
        for domain in DOMAINS:
            v = results[(scorer, ratio, domain)]
            cell = f"{sum(v) / len(v):.3f}"
            if len(v) > 1:
                cell += f" (seeds: {', '.join(f'{x:.2f}' for x in v)})"
            cells.append(cell)
        name = "random (mean of 3 seeds)" if scorer == "random" else scorer
        print(f"| {name} | {ratio:.1%} ({round(ratio * 64)} of 64) | {cells[0]} | {cells[1]} |")
