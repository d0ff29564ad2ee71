#!/usr/bin/env python3
"""The table of bench/gpu_vs_peer.sh: forge / peer per target and model, and what bounds each side.

    python3 bench/ratio_table.py OUT_DIR [OUT_DIR ...]   # reads results.jsonl, card.txt and ARCH.config.json there

Several OUT_DIRs (calls of one session on one card, e.g. the dense checkpoints and Qwen3.5's, which do
not fit one call's 10 minutes together) make one table; the card is the first's.

Achieved rates use useful work only: FLOPs per token from the model's geometry (linear layers, lm_head,
causal attention at half the context on average; training = forward + input gradients, the base being
frozen, plus one more forward with checkpointing), and for generation the bytes of all weights read
once per new token. Each is given as a fraction of the ceilings measured in the same run.
"""
import json, sys, os

outs = sys.argv[1:]
rows = [json.loads(l) for out in outs for l in open(os.path.join(out, "results.jsonl"))]
get = lambda tool, what: next((r for r in rows if r["tool"] == tool and r["what"] == what), None)
card = open(os.path.join(outs[0], "card.txt")).read().strip()
ceil = get("card", "ceilings") or {}
configs = {f[: -len(".config.json")]: os.path.join(out, f) for out in outs for f in sorted(os.listdir(out))
           if f.endswith(".config.json")}
order = ["qwen2.5-0.5b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3.5-0.8b", "qwen3.5-9b"]
archs = sorted(configs, key=lambda a: order.index(a) if a in order else 99)

def geometry(arch):
    """Parameters and useful FLOPs a token; Qwen3.5's linear-attention layers count their products
    (the delta rule's own work, about 4·dk·dv a head and token, is left out, as attention's softmax)."""
    c = json.load(open(configs[arch]))
    c = c.get("text_config", c)
    H, L, h, kv, I, V = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"], c["vocab_size"]
    d = c.get("head_dim") or H // h
    kinds = c.get("layer_types") or ["full_attention"] * L
    q_width = h * d * (2 if "layer_types" in c else 1)  # Qwen3.5's q_proj gives a gate per query value
    full = H * q_width + 2 * H * kv * d + h * d * H
    if "linear_num_value_heads" in c:
        kd, vd = c["linear_num_key_heads"] * c["linear_key_head_dim"], c["linear_num_value_heads"] * c["linear_value_head_dim"]
        lin = H * (2 * kd + vd) + H * vd + 2 * H * c["linear_num_value_heads"] + vd * H
    linear = sum((full if k == "full_attention" else lin) + 3 * H * I for k in kinds)
    params = linear + V * H * (1 if c.get("tie_word_embeddings") else 2)
    seq = 1024
    attn = kinds.count("full_attention") * 2 * h * d * seq  # QKᵀ and P·V per token, causal: half the context on average
    fwd = 2 * linear + 2 * H * V + attn
    return dict(params=params, fwd=fwd, attn=attn)

def ratio(f, p, better_high=True, target=None):
    if f is None or p is None:
        return "n/a", None
    r = f / p
    ok = None if target is None else (r >= target if better_high else r <= target)
    return f"{r:.2f}" + ("" if ok is None else (" ✓" if ok else " ✗")), ok

def val(tool, what, key):
    r = get(tool, what)
    return None if r is None or "error" in r else r.get(key)

print(f"Card: {card}; measured ceilings: bf16 matmul {ceil.get('matmul_tflops', float('nan')):.0f} TFLOP/s, "
      f"device copy {ceil.get('copy_tb_s', float('nan')):.2f} TB/s.\n")
head = "| work | target | " + " | ".join(archs) + " |"
print(head); print("| --- | --- |" + " --- |" * len(archs))
lines = [
    ("eval tokens/s", "≥ 1.3", "eval", "tokens_per_s", "tokens_per_s", True, 1.3),
    ("LoRA train tokens/s (no checkpointing)", "≥ 1.3", "train plain", "tokens_per_s", "tokens_per_s", True, 1.3),
    ("LoRA train peak memory (no checkpointing)", "≤ 0.5", "train plain", "peak_memory_bytes", "peak_gib", False, 0.5),
    ("LoRA train tokens/s (checkpointing)", "", "train checkpointed", "tokens_per_s", "tokens_per_s", True, None),
    ("LoRA train peak memory (checkpointing)", "", "train checkpointed", "peak_memory_bytes", "peak_gib", False, None),
    ("generation new tokens/s, batch 1", "≥ 5", "generate", "new_tokens_per_s", "new_tokens_per_s", True, 5.0),
    ("load to first forward, first on a fresh machine (empty JIT cache)", "≤ 0.5", "load first", "seconds", "seconds", False, 0.5),
    ("load to first forward, again", "≤ 0.5", "load again", "seconds", "seconds", False, 0.5),
    ("load again, forge to its process's end", "", "load again", "exit_seconds", "seconds", False, None),
]
def fmt(v, key):
    if v is None: return "—"
    if key in ("peak_memory_bytes",): return f"{v / 2**30:.2f} GiB"
    if key == "peak_gib": return f"{v:.2f} GiB"
    if key in ("seconds", "exit_seconds"): return f"{v:.2f} s"
    return f"{v:,.0f}"
for name, target, what, fk, pk, high, t in lines:
    cells = []
    for a in archs:
        f, p = val("forge", f"{a} {what}", fk), val("peer", f"{a} {what}", pk)
        fr = get("forge", f"{a} {what}")
        if fr is not None and "error" in fr:
            cells.append(f"forge failed ({fr['error']}) / {fmt(p, pk)}")
            continue
        fv = f / 2**30 if (f is not None and fk == "peak_memory_bytes") else f
        r, _ = ratio(fv, p, high, t)
        cells.append(f"{fmt(f, fk)} / {fmt(p, pk)} = **{r}**")
    print(f"| {name} | {target} | " + " | ".join(cells) + " |")

print("\nWhat bounds each side (useful work over the measured ceilings):\n")
print("| model | work | forge | peer |")
print("| --- | --- | --- | --- |")
mm, bw = ceil.get("matmul_tflops"), ceil.get("copy_tb_s")
for a in archs:
    g = geometry(a)
    for what, flops in [("eval", g["fwd"]), ("train plain", 2 * g["fwd"] + g["attn"]), ("train checkpointed", 3 * g["fwd"] + g["attn"])]:
        cells = []
        for tool in ("forge", "peer"):
            tps = val(tool, f"{a} {what}", "tokens_per_s")
            cells.append("—" if tps is None or not mm else f"{tps * flops / 1e12:.0f} TFLOP/s = {tps * flops / 1e12 / mm:.0%} of matmul")
        print(f"| {a} | {what} | {cells[0]} | {cells[1]} |")
    cells = []
    for tool in ("forge", "peer"):
        tps = val(tool, f"{a} generate", "new_tokens_per_s")
        cells.append("—" if tps is None or not bw else f"{tps * 2 * g['params'] / 1e12:.2f} TB/s of weights = {tps * 2 * g['params'] / 1e12 / bw:.0%} of copy")
    print(f"| {a} | generate | {cells[0]} | {cells[1]} |")
for name in ("eval", "train"):
    path = os.path.join(outs[0], f"profile-{name}.txt")
    if os.path.exists(path):
        prof = [json.loads(l) for l in open(path) if l.startswith('{"profile"')]
        if prof:
            parts = ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in sorted(prof[-1]["profile"].items(), key=lambda kv: -kv[1]["seconds"]))
            print(f"\nforge {name} profile ({archs[0]}, seconds in synchronised sections; train's forward + backward contains the rest): {parts}")
