#!/usr/bin/env python3
"""The table of bench/gpu_distill_memory.sh: each distilled run's peak memory and speed beside plain
LoRA's on the same checkpoint and checkpointing mode, with the teacher's extra memory.

    python3 bench/distill_table.py OUT_DIR   # reads results.jsonl and card.txt there
"""
import json, os, sys

out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl"))]
card = open(os.path.join(out, "card.txt")).read().strip().splitlines()[0]
by_what = {r["what"]: r for r in rows}
print(f"Card: {card}.\n")
print("| checkpoint | mode | run | tokens/s | peak | teacher's extra memory | KL first → last |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    arch, mode, run = r["what"].split(" ", 2)
    if "error" in r:
        print(f"| {arch} | {mode} | {run} | failed | | | |")
        continue
    plain = by_what.get(f"{arch} {mode} lora")
    peak = r["peak_memory_bytes"] / 2**30
    extra = "—"
    if run != "lora" and plain and "error" not in plain:
        extra = f"+{peak - plain['peak_memory_bytes'] / 2**30:.2f} GiB"
    kl = r.get("distill")
    kl = f"{kl['kl_first']:.4f} → {kl['kl_last']:.4f}" if kl else "—"
    print(f"| {arch} | {mode} | {run} | {r['tokens_per_s']:,.0f} | {peak:.2f} GiB | {extra} | {kl} |")
