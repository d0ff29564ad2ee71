//! Text generation with the KV cache: the prompt is run once, then one token per step. Greedy at
//! temperature 0; otherwise sampling from the temperature-scaled distribution, restricted to the
//! smallest set of tokens whose probability reaches `top_p`, with a seeded generator.
use candle_core::Tensor;

use crate::model::{CausalLm, KvCache};
use crate::{bad_input, Result};
use forge_kernels::SplitMix64;

/// How to pick each next token.
#[derive(Clone, Debug)]
pub struct SamplingConfig {
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// 0 for greedy decoding.
    pub temperature: f64,
    /// Nucleus threshold in (0, 1]; 1 keeps the whole distribution.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Generation stops after this token (it is included in the output).
    pub stop_token: Option<u32>,
}

/// Generates up to `config.max_new_tokens` tokens after `prompt`; returns the new tokens only.
pub fn generate(model: &CausalLm, prompt: &[u32], config: &SamplingConfig) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(bad_input!("the prompt is empty; give --prompt some text"));
    }
    if !(config.temperature >= 0.0 && config.temperature.is_finite()) {
        return Err(bad_input!(
            "--temperature is {}; use 0 (greedy) or a positive number",
            config.temperature
        ));
    }
    if !(config.top_p > 0.0 && config.top_p <= 1.0) {
        return Err(bad_input!("--top-p is {}; it must be in (0, 1]", config.top_p));
    }
    let mut cache = KvCache::new(model.config().layers);
    let mut rng = SplitMix64::new(config.seed);
    let mut input = Tensor::from_slice(prompt, (1, prompt.len()), model.device())?;
    let mut out = Vec::with_capacity(config.max_new_tokens);
    for _ in 0..config.max_new_tokens {
        // No graph: an adapter's parameters are read detached, and the fused kernels stay in use.
        let last = crate::autograd::no_grad(|| model.last_logits(&input, Some(&mut cache)))?;
        let next = if config.temperature == 0.0 {
            argmax(&last)
        } else {
            sample(&last, config.temperature, config.top_p, &mut rng)
        };
        out.push(next);
        if Some(next) == config.stop_token {
            break;
        }
        input = Tensor::from_slice(&[next], (1, 1), model.device())?;
    }
    Ok(out)
}

/// The first index of the largest logit, as candle's argmax picks on the CPU.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut SplitMix64) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp())).collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let cut = probs.iter().position(|p| {
        kept += p.1 / total;
        kept >= top_p
    });
    probs.truncate(cut.map_or(probs.len(), |c| c + 1));
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut target = rng.next_f64() * mass;
    for &(id, p) in &probs {
        target -= p;
        if target <= 0.0 {
            return id;
        }
    }
    probs.last().map_or(0, |p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Token 2 carries ~88% of the mass: with top_p 0.5 it is always chosen.
        let logits = [0.0f32, 1.0, 4.0, 0.5];
        let mut rng = SplitMix64::new(7);
        assert!((0..200).all(|_| sample(&logits, 1.0, 0.5, &mut rng) == 2));
        let mut seen = [false; 4];
        for _ in 0..2000 {
            seen[sample(&logits, 1.0, 1.0, &mut rng) as usize] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    /// Greedy decoding picks on the host: the largest logit, the first of equal ones (bf16 logits tie
    /// often), and the same index candle's argmax gives on the CPU.
    #[test]
    fn greedy_takes_the_first_of_the_largest_logits() -> candle_core::Result<()> {
        let logits = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(argmax(&logits), 1);
        assert_eq!(argmax(&[-2.0, -1.0]), 1);
        let on_cpu = Tensor::new(&logits, &candle_core::Device::Cpu)?.argmax(0)?.to_scalar::<u32>()?;
        assert_eq!(argmax(&logits), on_cpu);
        Ok(())
    }
}
