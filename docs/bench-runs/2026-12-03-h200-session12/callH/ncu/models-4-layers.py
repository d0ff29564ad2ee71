#!/usr/bin/env python3
"""Write a random-initialised Hugging Face checkpoint with the published geometry of a real model,
for speed and memory benchmarks (weights' values don't change speed). Runs on the GPU machine.

    python3 models.py --arch qwen2.5-0.5b --out /tmp/m/qwen2.5-0.5b [--tokenizer DIR]
"""
import argparse, shutil, torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

try:  # Qwen3.5 (hybrid Gated DeltaNet + gated attention) needs transformers >= 5.2
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
except ImportError:
    Qwen3_5ForCausalLM = Qwen3_5TextConfig = None

# Published configurations (config.json of each model on its hub page).
ARCHS = {
    "qwen2.5-0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2.5-1.5b": (Qwen2Config, Qwen2ForCausalLM, dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2.5-7b": (Qwen2Config, Qwen2ForCausalLM, dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e6)),
    "qwen3-0.6b": (Qwen3Config, Qwen3ForCausalLM, dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                   num_key_value_heads=8, head_dim=128, intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3-1.7b": (Qwen3Config, Qwen3ForCausalLM, dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
                   num_key_value_heads=8, head_dim=128, intermediate_size=6144, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3-4b": (Qwen3Config, Qwen3ForCausalLM, dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3-8b": (Qwen3Config, Qwen3ForCausalLM, dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False, rope_theta=1e6)),
    "llama-3.2-1b": (LlamaConfig, LlamaForCausalLM, dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rope_theta=5e5)),
}
# Qwen3.5 text geometry (text_config of each model's config.json): 3 of every 4 layers are Gated DeltaNet.
QWEN35 = dict(head_dim=256, linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4, vocab_size=248320,
              rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                               "mrope_interleaved": True, "mrope_section": [11, 11, 10]})
for name, kw in {
    "qwen3.5-0.8b": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=8, num_key_value_heads=2,
                         intermediate_size=3584, linear_num_key_heads=16, linear_num_value_heads=16, tie_word_embeddings=True),
    "qwen3.5-9b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=16, num_key_value_heads=4,
                       intermediate_size=12288, linear_num_key_heads=16, linear_num_value_heads=32, tie_word_embeddings=False),
    "qwen3.5-27b": dict(hidden_size=5120, num_hidden_layers=4, num_attention_heads=24, num_key_value_heads=4,
                        intermediate_size=17408, linear_num_key_heads=16, linear_num_value_heads=48, tie_word_embeddings=False),
}.items():
    ARCHS[name] = (Qwen3_5TextConfig, Qwen3_5ForCausalLM, {**QWEN35, **kw})

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS)); ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", help="folder whose tokenizer files are copied in (ids must fit the vocabulary)")
    a = ap.parse_args()
    C, M, kw = ARCHS[a.arch]
    if C is None:
        raise SystemExit(f"{a.arch} needs a transformers with Qwen3.5 (>= 5.2)")
    cfg = C(max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=0, **kw)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: a 27B model in f32 would not fit one GPU
    with torch.device("cuda"):
        m = M(cfg)
    m.save_pretrained(a.out)
    if a.tokenizer:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(f"{a.tokenizer}/{f}", f"{a.out}/{f}")
    print(f"{a.arch}: {sum(p.numel() for p in m.parameters())/1e9:.3f}B parameters -> {a.out}")
