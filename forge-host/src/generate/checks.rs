//! `forge kernels`' check of captured decoding: a model of random weights decodes the same tokens
//! with the step replayed as a CUDA graph over a fixed cache as op by op over a growing one, greedy
//! and sampled. The two paths share every kernel but the attention's form, the cache's writes and
//! the greedy pick, and read the same bf16 numbers, so they agree token for token; a position read
//! wrong on the device, a cache write missed or a stale buffer would part them within a few tokens.
use candle_core::{DType, Device};
use forge_kernels::checks::Check;
use forge_kernels::SplitMix64;

use super::{generate_as, SamplingConfig};
use crate::loader::{ModelConfig, ModelFolder};
use crate::model::CausalLm;
use crate::Result;

/// A Qwen3 of four layers with heads of 128 (the flash kernel's; q/k norms as Qwen3 has them).
const RANDOM_DENSE: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
  "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "vocab_size": 8192,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128, "attention_bias": false,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
  "tie_word_embeddings": true
}"#;

/// The checks on `device` (none on the CPU, which has no graphs), greedy and sampled, on a dense
/// model and on a Qwen3.5 hybrid whose attention has heads of 256 (Qwen3.5's): 300 new tokens after a
/// 37-token prompt, so the fixed cache's position runs past its first 256.
pub fn all(device: &Device, rng: &mut SplitMix64) -> Result<Vec<Check>> {
    if device.is_cpu() {
        return Ok(Vec::new());
    }
    let mut hybrid: serde_json::Value =
        serde_json::from_str(crate::training::checks::RANDOM_HYBRID).map_err(candle_core::Error::wrap)?;
    hybrid["head_dim"] = 256.into();
    let models = [
        (
            ModelConfig::from_json(RANDOM_DENSE.as_bytes())?,
            [
                "decoding as a CUDA graph vs op by op, dense, greedy",
                "decoding as a CUDA graph vs op by op, dense, sampled",
            ],
        ),
        (
            ModelConfig::from_json(hybrid.to_string().as_bytes())?,
            [
                "decoding as a CUDA graph vs op by op, hybrid, greedy",
                "decoding as a CUDA graph vs op by op, hybrid, sampled",
            ],
        ),
    ];
    let mut checks = Vec::new();
    for (config, names) in models {
        checks.extend(on_model(config, names, device, rng)?);
    }
    Ok(checks)
}

/// Greedy and sampled decoding of `config`'s model of random weights, captured against op by op.
fn on_model(
    config: ModelConfig,
    names: [&'static str; 2],
    device: &Device,
    rng: &mut SplitMix64,
) -> Result<Vec<Check>> {
    let (layers, heads, head_dim, vocab) = (config.layers, config.heads[0], config.head_dim, config.vocab);
    let model = CausalLm::load(&ModelFolder::random(config, rng.next_u64()), DType::BF16, device)?;
    let prompt: Vec<u32> = (0..37).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    let mut checks = Vec::new();
    for (what, temperature) in names.into_iter().zip([0.0, 1.0]) {
        let sampling = SamplingConfig {
            max_new_tokens: 300,
            temperature,
            top_p: 0.95,
            seed: rng.next_u64(),
            stop_token: None,
        };
        let (captured, graph) = generate_as(&model, &prompt, &sampling, true)?;
        let (stepped, _) = generate_as(&model, &prompt, &sampling, false)?;
        let differ = captured.iter().zip(&stepped).filter(|(a, b)| a != b).count();
        let fraction = (differ + captured.len().abs_diff(stepped.len())) as f64 / stepped.len() as f64;
        checks.push(Check {
            kernel: what,
            shape: vec![layers, heads, head_dim, sampling.max_new_tokens],
            past: prompt.len(),
            forward_rel_err: fraction,
            backward_rel_err: None,
            tolerance: 0.0,
            pass: graph && fraction == 0.0,
        });
    }
    Ok(checks)
}
