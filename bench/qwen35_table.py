#!/usr/bin/env python3
"""The table of bench/gpu_qwen35.sh: forge / peer per target and Qwen3.5 checkpoint, the memory of
both, and the memory budget's predicted eval peak beside forge's measured one.

    python3 bench/qwen35_table.py OUT_DIR   # reads results.jsonl, card.txt and ARCH.config.json there
"""
import json, os, sys

out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl"))]
card = open(os.path.join(out, "card.txt")).read().strip()
archs = sorted((f[: -len(".config.json")] for f in os.listdir(out) if f.endswith(".config.json")),
               key=lambda a: float(a.split("-")[-1].rstrip("b")))

def val(tool, what, key):
    r = next((r for r in rows if r["tool"] == tool and r["what"] == what and "error" not in r), None)
    return None if r is None else r.get(key)

def cell(f, p, higher_is_better, target):
    if f is None or p is None:
        return "—"
    r = f / p
    ok = r >= target if higher_is_better else r <= target
    return f"{r:.2f} {'✓' if ok else '✗'}"

print(f"Card: {card}.\n")
print("| work | target | " + " | ".join(archs) + " |")
print("| --- | --- |" + " --- |" * len(archs))
for label, target, what, fkey, pkey, high, t in [
    ("eval tokens/s (8 × 1024)", "≥ 1.3", "eval", "tokens_per_s", "tokens_per_s", True, 1.3),
    ("greedy generation new tokens/s, batch 1", "≥ 10", "generate", "new_tokens_per_s", "new_tokens_per_s", True, 10),
    ("load to first token, empty JIT caches", "≤ 0.1", "load first", "seconds", "seconds", False, 0.1),
    ("load to first token, again", "", "load again", "seconds", "seconds", False, float("inf")),
]:
    cells = [cell(val("forge", f"{a} {what}", fkey), val("peer", f"{a} {what}", pkey), high, t) for a in archs]
    print(f"| {label} forge ÷ peer | {target} | " + " | ".join(cells) + " |")
print("\n| measured | " + " | ".join(archs) + " |")
print("| --- |" + " --- |" * len(archs))
gib = lambda b: None if b is None else b / 2**30
for label, tool, what, key, scale, unit in [
    ("forge eval", "forge", "eval", "tokens_per_s", 1e-3, "k tokens/s"),
    ("peer eval", "peer", "eval", "tokens_per_s", 1e-3, "k tokens/s"),
    ("forge eval peak", "forge", "eval", "peak_memory_bytes", 2**-30, "GiB"),
    ("forge eval peak, predicted by the memory budget", "forge", "eval", "predicted_peak_bytes", 2**-30, "GiB"),
    ("peer eval peak", "peer", "eval", "peak_gib", 1, "GiB"),
    ("forge generation", "forge", "generate", "new_tokens_per_s", 1, "tokens/s"),
    ("forge generation peak", "forge", "generate", "peak_memory_bytes", 2**-30, "GiB"),
    ("peer generation peak", "peer", "generate", "peak_gib", 1, "GiB"),
    ("peer generation", "peer", "generate", "new_tokens_per_s", 1, "tokens/s"),
    ("forge load first / again", "forge", "load first", "seconds", 1, "s"),
    ("peer load first / again", "peer", "load first", "seconds", 1, "s"),
]:
    cells = []
    for a in archs:
        v = val(tool, f"{a} {what}", key)
        text = "—" if v is None else f"{v * scale:.1f} {unit}"
        if what == "load first":
            again = val(tool, f"{a} load again", key)
            text += "" if again is None else f" / {again:.1f} s"
        cells.append(text)
    print(f"| {label} | " + " | ".join(cells) + " |")
for a in archs:
    measured, predicted = val("forge", f"{a} eval", "peak_memory_bytes"), val("forge", f"{a} eval", "predicted_peak_bytes")
    if measured and predicted:
        print(f"\n{a}: the memory budget predicted {predicted / 2**30:.2f} GiB for a measured {measured / 2**30:.2f} GiB "
              f"({(predicted / measured - 1) * 100:+.1f}%).")
