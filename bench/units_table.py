#!/usr/bin/env python3
"""The markdown table of bench/units_table.sh's lines: one row per units × recovery at each share of
parameters kept, a refused pruning as one row saying so.

    python3 bench/units_table.py OUT_DIR/table.jsonl [...]
"""
import json, sys

UNITS = {"heads": "heads", "heads,linear-heads": "both kinds of heads", "mlp": "MLP channels", "layers": "layers"}
RECOVERY = {"none": "none", "lora": "LoRA", "lora+distil": "LoRA + distillation"}
rows = [json.loads(l) for path in sys.argv[1:] for l in open(path) if l.strip()]
seen = set()
print("| removed | units | recovery | parameters | code-valid | code-test | prose-valid | code choice | prose choice |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    key = (r["keep"], r["units"], r.get("recovery"))
    if key in seen:  # the unpruned row, repeated by each run
        continue
    seen.add(key)
    units = UNITS.get(r["units"], "mixed: " + r["units"].replace(",", ", ")) if r["units"] != "none" else "(unpruned)"
    removed = "—" if r["keep"] == 1 else f"{round((1 - r['keep']) * 100)}%"
    if "error" in r:
        print(f"| {removed} | {units} | refused (see below) | | | | | | |")
        continue
    print(f"| {removed} | {units} | {RECOVERY[r['recovery']] if r['units'] != 'none' else '—'} | {r['parameters']:,} | "
          f"{r['code']:.4f} | {r['code_test']:.4f} | {r['prose']:.4f} | {r['code_choice']:.3f} | {r['prose_choice']:.3f} |")
