#!/usr/bin/env python3
"""Builds a multiple-choice set for `forge eval --evaluator choice` from a held-out JSONL split:
"which comes next" -- the context is the end of a document up to a line (code) or sentence (prose),
the right choice is the line or sentence that follows, and the distractors are lines or sentences of
the same kind drawn from other documents. Deterministic for a seed.

    python3 bench/make_choice_set.py --data examples/data/code-valid.jsonl --unit line --out examples/data/code-choice.jsonl
"""
import argparse, json, random, re

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True); ap.add_argument("--out", required=True)
ap.add_argument("--unit", choices=["line", "sentence"], required=True)
ap.add_argument("--items", type=int, default=40); ap.add_argument("--choices", type=int, default=4)
ap.add_argument("--context-chars", type=int, default=400); ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()

def units(text):
    if a.unit == "line":
        return [u for u in text.split("\n") if len(u.strip()) >= 12]
    return [u.strip() for u in re.split(r"(?<=[.!?])\s+", text) if len(u.strip()) >= 20]

docs = [units(json.loads(l)["text"]) for l in open(a.data, encoding="utf-8") if l.strip()]
docs = [d for d in docs if len(d) >= 3]
rng = random.Random(a.seed)
items = []
while len(items) < a.items:
    d = rng.randrange(len(docs))
    i = rng.randrange(1, len(docs[d]))
    joiner = "\n" if a.unit == "line" else " "
    context = joiner.join(docs[d][:i])[-a.context_chars:]
    answer = docs[d][i].strip()
    distractors = set()
    while len(distractors) < a.choices - 1:
        o = rng.randrange(len(docs))
        if o != d:
            candidate = rng.choice(docs[o]).strip()
            if candidate != answer:
                distractors.add(candidate)
    choices = sorted(distractors) + [answer]
    rng.shuffle(choices)
    items.append({"context": context, "choices": choices, "answer": choices.index(answer)})
with open(a.out, "w", encoding="utf-8") as f:
    for item in items:
        f.write(json.dumps(item, ensure_ascii=False) + "\n")
print(f"{len(items)} items -> {a.out}")
