#!/usr/bin/env python3
"""Perplexity of a model folder under forge's protocol, computed by Hugging Face transformers: the
cross-check that a model forge wrote loads in standard tools and means the same thing there.

    python3 bench/hf_perplexity.py --model DIR --data FILE.jsonl [--adapter PEFT_DIR] [--mask MASK.json] [--seq-len 512 --max-windows 32 --device cpu]

--mask applies a forge mask file the way its meaning reads: the input columns of `o_proj` of each pruned
query head and of `out_proj` of each pruned linear-attention value head are zeroed, so their outputs
reach nothing.

Protocol (DESIGN.md): each document tokenized without special tokens and followed by <|endoftext|>,
concatenated, the first N non-overlapping windows of seq_len tokens, exp(mean NLL of the seq_len - 1
next-token predictions of each window), float32.
"""
import argparse, json, math, torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True); ap.add_argument("--data", required=True)
ap.add_argument("--seq-len", type=int, default=512); ap.add_argument("--max-windows", type=int, default=32)
ap.add_argument("--device", default="cpu"); ap.add_argument("--adapter", help="a PEFT adapter folder to apply")
ap.add_argument("--mask", help="a forge mask file (pruned, pruned_linear_heads) to apply by zeroing columns")
a = ap.parse_args()
tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
eos = tok.token_to_id("<|endoftext|>")
ids, need = [], a.seq_len * a.max_windows
for line in open(a.data, encoding="utf-8"):
    if not line.strip():
        continue
    ids += tok.encode(json.loads(line)["text"], add_special_tokens=False).ids + [eos]
    if len(ids) >= need:
        break
windows = torch.tensor(ids[: need]).view(-1, a.seq_len)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
if a.mask:
    mask, cfg = json.load(open(a.mask)), model.config.get_text_config()
    layers = model.model.layers
    with torch.no_grad():
        for key, module, width in (("pruned", "self_attn.o_proj", getattr(cfg, "head_dim", None)),
                                   ("pruned_linear_heads", "linear_attn.out_proj", getattr(cfg, "linear_value_head_dim", None))):
            for layer, heads in mask.get(key, {}).items():
                w = layers[int(layer)].get_submodule(module).weight
                for h in heads:
                    w[:, h * width:(h + 1) * width] = 0
if a.adapter:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, a.adapter)
model = model.to(a.device).eval()
total, count = 0.0, 0
with torch.no_grad():
    for w in windows:
        x = w.unsqueeze(0).to(a.device)
        logits = model(input_ids=x).logits[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += a.seq_len - 1
print(json.dumps({"model": a.model, "adapter": a.adapter, "perplexity": math.exp(total / count), "tokens": count,
                  "num_attention_heads": model.config.num_attention_heads,
                  "num_key_value_heads": model.config.num_key_value_heads,
                  "linear_num_value_heads": getattr(model.config, "linear_num_value_heads", None),
                  "linear_num_key_heads": getattr(model.config, "linear_num_key_heads", None),
                  "parameters": sum(p.numel() for p in model.parameters())}))
