#!/usr/bin/env python3
"""The table of bench/gpu_qwen35_train.sh: LoRA training tokens/s and peak memory, forge ÷ peer, per
Qwen3.5 checkpoint and checkpointing mode, against issue 14's targets (speed ≥ 2, memory ≤ 0.5), then
the kernel checks' verdict.

    python3 bench/qwen35_train_table.py OUT_DIR   # reads results.jsonl, card.txt and kernels.json there
"""
import json, os, sys

out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl"))]
card = open(os.path.join(out, "card.txt")).read().strip().splitlines()[0]

def val(tool, what, key):
    r = next((r for r in rows if r["tool"] == tool and r["what"] == what and "error" not in r), None)
    return None if r is None else r.get(key)

def failed(tool, what):
    return any(r["tool"] == tool and r["what"] == what and "error" in r for r in rows)

whats = []
for r in rows:
    if r["what"] not in whats:
        whats.append(r["what"])
print(f"Card: {card}.\n")
print("| run | forge tokens/s | peer tokens/s | speed forge ÷ peer (≥ 2) | forge peak | peer peak | memory forge ÷ peer (≤ 0.5) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for what in whats:
    f, p = val("forge", what, "tokens_per_s"), val("peer", what, "tokens_per_s")
    fm, pm = val("forge", what, "peak_memory_bytes"), val("peer", what, "peak_gib")
    fm = None if fm is None else fm / 2**30
    show = lambda v, tool, fmt: (fmt.format(v) if v is not None else ("failed" if failed(tool, what) else "—"))
    speed = "—" if f is None or p is None else f"{f / p:.2f} {'✓' if f / p >= 2 else '✗'}"
    memory = "—" if fm is None or pm is None else f"{fm / pm:.2f} {'✓' if fm / pm <= 0.5 else '✗'}"
    print(f"| {what} | {show(f, 'forge', '{:,.0f}')} | {show(p, 'peer', '{:,.0f}')} | {speed} | "
          f"{show(fm, 'forge', '{:.1f} GiB')} | {show(pm, 'peer', '{:.1f} GiB')} | {memory} |")
path = os.path.join(out, "kernels.json")
if os.path.exists(path) and os.path.getsize(path) > 0:
    checks = json.load(open(path))["checks"]
    bad = [c["kernel"] for c in checks if not c["pass"]]
    print(f"\nforge kernels: {len(checks) - len(bad)} of {len(checks)} checks passed" + (f"; failed: {', '.join(bad)}" if bad else "."))
    for c in checks:
        if "delta" in c["kernel"]:
            print(f"- {c['kernel']} {c['shape']}: forward {c['forward_rel_err']:.2e}, backward {c['backward_rel_err'] if c['backward_rel_err'] is None else format(c['backward_rel_err'], '.2e')}")
