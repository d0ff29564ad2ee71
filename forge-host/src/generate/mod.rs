//! Text generation with the KV cache: the prompt is run once, then one token per step. Greedy at
//! temperature 0; otherwise sampling from the temperature-scaled distribution, restricted to the
//! smallest set of tokens whose probability reaches `top_p`, with a seeded generator.
use candle_core::Tensor;

use crate::model::{CausalLm, KvCache};
use crate::{bad_input, Result};
use forge_kernels::{first_argmax, SplitMix64};

pub mod checks;
#[cfg(feature = "cuda")]
mod graph;

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
///
/// The prompt runs once, filling the cache; on CUDA, the model then decodes from a fixed cache, one
/// captured CUDA graph replayed a token ([`graph`]): one launch a token where the step is otherwise
/// hundreds, each paying the host's launch cost (generation was launch-bound).
/// Elsewhere, or where capture fails (said on stderr), each step runs op by op.
pub fn generate(model: &CausalLm, prompt: &[u32], config: &SamplingConfig) -> Result<Vec<u32>> {
    Ok(generate_as(model, prompt, config, true)?.0)
}

/// [`generate`], with the graph allowed or not; also says whether the tokens after the first came
/// from a captured graph.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(crate) fn generate_as(
    model: &CausalLm,
    prompt: &[u32],
    config: &SamplingConfig,
    graph: bool,
) -> Result<(Vec<u32>, bool)> {
    check(prompt, config)?;
    if config.max_new_tokens == 0 {
        return Ok((Vec::new(), false));
    }
    let mut cache = KvCache::new(model.config().layers);
    let mut picker =
        Picker { temperature: config.temperature, top_p: config.top_p, rng: SplitMix64::new(config.seed) };
    let input = Tensor::from_slice(prompt, (1, prompt.len()), model.device())?;
    let mut out = vec![next_op_by_op(model, &input, &mut cache, &mut picker)?];
    #[cfg(feature = "cuda")]
    if graph {
        let positions = prompt.len() + config.max_new_tokens;
        if let Some(mut decoder) = graph::Decoder::new(model, &cache, positions, &picker)? {
            decode(&mut out, config, |last| decoder.next(last, &mut picker))?;
            return Ok((out, decoder.replays()));
        }
    }
    decode(&mut out, config, |last| {
        let input = Tensor::from_slice(&[last], (1, 1), model.device())?;
        next_op_by_op(model, &input, &mut cache, &mut picker)
    })?;
    Ok((out, false))
}

/// The token after `input` `(1, seq)`, run op by op over the growing cache.
fn next_op_by_op(
    model: &CausalLm,
    input: &Tensor,
    cache: &mut KvCache,
    picker: &mut Picker,
) -> candle_core::Result<u32> {
    // No graph: an adapter's parameters are read detached, and the fused kernels stay in use.
    Ok(picker.pick(&crate::autograd::no_grad(|| model.last_logits(input, Some(cache)))?))
}

fn check(prompt: &[u32], config: &SamplingConfig) -> Result<()> {
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
    Ok(())
}

/// Extends `out` (the first new token in it) one token at a time with `next(last token)` until
/// `config.max_new_tokens` or the stop token.
fn decode(
    out: &mut Vec<u32>,
    config: &SamplingConfig,
    mut next: impl FnMut(u32) -> candle_core::Result<u32>,
) -> Result<()> {
    while let Some(&last) = out.last() {
        if out.len() >= config.max_new_tokens || Some(last) == config.stop_token {
            break;
        }
        out.push(next(last)?);
    }
    Ok(())
}

/// Picks each next token from the last position's logits.
pub(crate) struct Picker {
    temperature: f64,
    top_p: f64,
    rng: SplitMix64,
}

impl Picker {
    /// Greedy decoding: the first of the largest logits (the device's pick, `argmax_rows`, is the same).
    pub(crate) fn greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub(crate) fn pick(&mut self, logits: &[f32]) -> u32 {
        match self.greedy() {
            true => first_argmax(logits),
            false => sample(logits, self.temperature, self.top_p, &mut self.rng),
        }
    }
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
        let mut picker = Picker { temperature: 0.0, top_p: 1.0, rng: SplitMix64::new(1) };
        assert_eq!(picker.pick(&logits), 1);
        let on_cpu = Tensor::new(&logits, &candle_core::Device::Cpu)?.argmax(0)?.to_scalar::<u32>()?;
        assert_eq!(picker.pick(&logits), on_cpu);
        Ok(())
    }

    #[test]
    fn decoding_stops_at_the_stop_token_or_the_limit() -> Result<()> {
        let config = |stop_token| SamplingConfig {
            max_new_tokens: 5,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_token,
        };
        let mut out = vec![1];
        decode(&mut out, &config(Some(3)), |last| Ok(last + 1))?;
        assert_eq!(out, [1, 2, 3]);
        let mut out = vec![1];
        decode(&mut out, &config(None), |last| Ok(last + 1))?;
        assert_eq!(out, [1, 2, 3, 4, 5]);
        Ok(())
    }
}
