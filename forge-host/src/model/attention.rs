//! Grouped-query self-attention with a per-head output mask; for Qwen3.5, gated: `q_proj` gives each
//! head a query and an output gate, RoPE turns only the first `rotary_dim` dimensions of a head, and
//! the output is multiplied by `sigmoid(gate)` before `o_proj`.
//!
//! The mask multiplies each query head's attention output before `o_proj`, which is exactly what
//! removing the head does to the model (its `o_proj` columns see zeros), and it stays a tensor in the
//! graph so importance scorers can take its gradient. The softmax computes in f32 whatever the model's
//! dtype, as transformers' attention does.
use candle_core::{Module, Tensor};

use super::kv_cache::{Cached, LayerCache};
use super::linear::{linear, Linear};
use super::norm::{rms_norm, RmsNorm};
use super::rope::RopeTables;
use crate::autograd::causal_attention;
use crate::loader::ModelConfig;
use crate::loader::WeightScope;
use crate::Result;
use forge_kernels::profile::section;
use forge_kernels::tape;

/// Sees what each attention block computed, for probes that score heads: the attention probabilities
/// `(batch, heads, seq, past + seq)` in f32 and the per-head outputs `(batch, heads, seq, head_dim)`
/// after the head mask.
pub trait AttentionObserver {
    /// Called once per layer per forward pass.
    fn observe(&mut self, layer: usize, probs: &Tensor, heads_out: &Tensor) -> candle_core::Result<()>;

    /// Called once per linear-attention layer per forward pass with its value heads' outputs
    /// `(batch, value heads, seq, value_dim)` after the gated norm and the head mask, as they enter
    /// `out_proj`. Observers of attention probabilities alone need not look.
    fn observe_linear(&mut self, _layer: usize, _heads_out: &Tensor) -> candle_core::Result<()> {
        Ok(())
    }

    /// Called once per layer per forward pass with its MLP channels' activations `(batch, seq,
    /// channels)` after the channel mask, as they enter `down_proj`.
    fn observe_mlp(&mut self, _layer: usize, _activations: &Tensor) -> candle_core::Result<()> {
        Ok(())
    }

    /// Called once per layer run per forward pass with its input and output hidden states
    /// `(batch, seq, hidden)` (a removed layer is not run and not shown).
    fn observe_layer(&mut self, _layer: usize, _input: &Tensor, _output: &Tensor) -> candle_core::Result<()> {
        Ok(())
    }
}

/// The attention block of one decoder layer.
#[derive(Clone)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Qwen3.5's output gate: `q_proj` gives each head `2 · head_dim` values, query then gate.
    gated: bool,
    layer: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Loads layer `layer`'s attention from `vb` (`model.layers.N.self_attn`).
pub fn attention(config: &ModelConfig, layer: usize, vb: WeightScope) -> Result<Attention> {
    let (heads, kv_heads, d) = (config.heads[layer], config.kv_heads[layer], config.head_dim);
    let h = config.hidden;
    let hybrid = config.hybrid.as_ref();
    let qk_norm = |name: &str| -> Result<Option<RmsNorm>> {
        Ok(if config.qk_norm {
            Some(rms_norm(d, config.rms_norm_eps, hybrid.is_some(), vb.pp(name))?)
        } else {
            None
        })
    };
    let gated = hybrid.is_some();
    Ok(Attention {
        q_proj: linear(h, heads * config.query_rows_per_head(), config.qkv_bias, vb.pp("q_proj"))?,
        k_proj: linear(h, kv_heads * d, config.qkv_bias, vb.pp("k_proj"))?,
        v_proj: linear(h, kv_heads * d, config.qkv_bias, vb.pp("v_proj"))?,
        o_proj: linear(heads * d, h, config.o_bias, vb.pp("o_proj"))?,
        q_norm: qk_norm("q_norm")?,
        k_norm: qk_norm("k_norm")?,
        gated,
        layer,
        heads,
        kv_heads,
        head_dim: d,
    })
}

impl Attention {
    /// Attends over `x` `(batch, seq, hidden)`.
    ///
    /// `past` is the number of cached positions before `x` (causality is counted from them);
    /// `head_mask` is `(heads)`, 1 to keep a head and 0 to remove it; `cache` holds earlier positions.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        past: usize,
        head_mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let d = self.head_dim;
        // RoPE tables narrower than a head (Qwen3.5's partial RoPE) turn only its first dimensions.
        let split = |t: Tensor, n: usize, norm: &Option<RmsNorm>| -> candle_core::Result<Tensor> {
            let t = tape::reshape(&t, (b, s, n, d))?;
            match norm {
                Some(norm) => norm.forward_rope(&t, rope),
                None => rope.apply_heads_first(&t),
            }
        };
        let (q, gate, k, v) = section("attention q/k/v + rope", x.device(), || {
            let (q, k, v) = self.projections(x)?;
            let (q, gate) = self.query_and_gate(q)?;
            let q = split(q, self.heads, &self.q_norm)?;
            let k = split(k, self.kv_heads, &self.k_norm)?;
            let v = forge_kernels::transpose12(&tape::reshape(&v, (b, s, self.kv_heads, d))?)?;
            Ok((q, gate, k, v))
        })?;
        let cached = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => Cached::All(k, v),
        };
        let (out, probs) = match cached {
            Cached::At { k, v, past_at } => (forge_kernels::flash_attention_at(&q, &k, &v, &past_at)?, None),
            Cached::All(k, v) => causal_attention(&q, &k, &v, past, observer.is_some())?,
        };
        let out = match gate {
            Some(projected) => crate::autograd::sigmoid_gate(&out, &projected, d)?,
            None => out,
        };
        // The heads' outputs side by side, `(b, s, heads · d)`: a head's mask covers its d columns.
        let out = match head_mask {
            Some(mask) => {
                let columns =
                    mask.reshape((self.heads, 1))?.repeat((1, d))?.reshape((1, 1, self.heads * d))?;
                tape::mask(&out, &columns)?
            }
            None => out,
        };
        if let (Some(observer), Some(probs)) = (observer, probs) {
            let heads_out = out.reshape((b, s, self.heads, d))?.transpose(1, 2)?;
            observer.observe(self.layer, &probs, &heads_out)?;
        }
        section("attention o_proj", x.device(), || self.o_proj.forward(&out))
    }

    /// `q_proj`, `k_proj` and `v_proj` of `x` `(b, s, hidden)`. Decoding's one row takes the three
    /// as one launch where each is its weight alone: on qwen3-4b two of three launches a layer were
    /// too small to reach the card's bandwidth (`forge-kernels/cuda/matvec.cu`).
    fn projections(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let weights = [&self.q_proj, &self.k_proj, &self.v_proj].map(Linear::plain_weight);
        if let [Some(q), Some(k), Some(v)] = weights {
            let (b, s, hidden) = x.dims3()?;
            if let Some(all) = forge_kernels::matvec(&x.reshape((b * s, hidden))?, &[q, k, v])? {
                let (nq, nk, nv) = (q.dim(0)?, k.dim(0)?, v.dim(0)?);
                let part = |from: usize, len: usize| all.narrow(1, from, len)?.reshape((b, s, len));
                return Ok((part(0, nq)?, part(nq, nk)?, part(nq + nk, nv)?));
            }
        }
        Ok((self.q_proj.forward(x)?, self.k_proj.forward(x)?, self.v_proj.forward(x)?))
    }

    /// The queries `(b, s, heads · d)` of `q_proj`'s output `projected` and, for a gated attention,
    /// `projected` whole, whose second half of each head's `2d` values is the head's gate (read there
    /// by `sigmoid_gate`).
    fn query_and_gate(&self, projected: Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        if !self.gated {
            return Ok((projected, None));
        }
        let (b, s, _) = projected.dims3()?;
        let per_head = tape::reshape(&projected, (b, s, self.heads, 2 * self.head_dim))?;
        let query = forge_kernels::narrow(&per_head, 3, 0, self.head_dim)?;
        let query = tape::reshape(&query, (b, s, self.heads * self.head_dim))?;
        Ok((query, Some(projected)))
    }

    /// Query heads of this layer.
    pub fn heads(&self) -> usize {
        self.heads
    }
}
