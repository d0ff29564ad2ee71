#!/usr/bin/env python3
"""Writes a LoRA adapter with PEFT itself (r 8 on every linear layer by default, B drawn at random so the adapter
changes the model), to check that forge loads what PEFT saves.

    python3 bench/make_peft_adapter.py --model DIR --out ADAPTER_DIR [--targets q_proj,k_proj,...]
"""
import argparse, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser(); ap.add_argument("--model", required=True); ap.add_argument("--out", required=True)
ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
a = ap.parse_args()
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
targets = a.targets.split(",")
peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
with torch.no_grad():
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.02)
peft.save_pretrained(a.out)
print(a.out)
