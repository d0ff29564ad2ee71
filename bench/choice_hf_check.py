#!/usr/bin/env python3
"""The `choice` evaluator's log-likelihoods, recomputed by Hugging Face transformers: for each of the
first N records of a choice JSONL, each choice's summed log-probability after the context, with the
conventions forge's evaluator documents (the context and `context + " " + choice` tokenized apart
without special tokens, the choice's tokens those past the context's), in float32 on the CPU; then
compared with forge's (`forge eval --evaluator choice --evaluator-opt log-likelihoods=true --json`).

    python3 bench/choice_hf_check.py --model DIR --data FILE.jsonl --forge FORGE_JSON [--items 10]
"""
import argparse, json, torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True); ap.add_argument("--data", required=True)
ap.add_argument("--forge", required=True, help="forge's eval --json output with log_likelihoods")
ap.add_argument("--items", type=int, default=10)
a = ap.parse_args()
tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
encode = lambda text: tok.encode(text, add_special_tokens=False).ids
records = [json.loads(l) for l in open(a.data, encoding="utf-8") if l.strip()][: a.items]
forge = json.load(open(a.forge))
forge = forge.get("metrics", forge)["log_likelihoods"]
worst, rows = 0.0, []
with torch.no_grad():
    for i, r in enumerate(records):
        context = encode(r["context"])
        for j, choice in enumerate(r["choices"]):
            whole = encode(f"{r['context']} {choice}")
            start = min(max(len(context), 1), len(whole) - 1)
            logits = model(input_ids=torch.tensor([whole])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            ll = sum(logp[t - 1, whole[t]].item() for t in range(start, len(whole)))
            rel = abs(ll - forge[i][j]) / max(abs(ll), 1e-12)
            worst = max(worst, rel)
            rows.append((i, j, len(whole) - start, forge[i][j], ll, rel))
print("| record | choice | tokens | forge | transformers | relative difference |")
print("| --- | --- | --- | --- | --- | --- |")
for i, j, n, f, t, rel in rows:
    print(f"| {i} | {j} | {n} | {f:.6f} | {t:.6f} | {rel:.1e} |")
print(f"\n{len(rows)} log-likelihoods of {len(records)} records; largest relative difference {worst:.2e}.")
