//! Qwen3.5's linear attention, Gated DeltaNet, as transformers' `Qwen3_5GatedDeltaNet` computes it:
//!
//! 1. `in_proj_qkv` gives queries, keys and values side by side; a causal depthwise convolution
//!    (`conv1d`, `conv_kernel` taps, no bias) runs over them, then SiLU;
//! 2. q and k are L2-normalised per key head (q also scaled by `1/√dk`) and repeated to the value heads
//!    they serve (key head i serves value heads `i·r … i·r + r − 1`, `r = value_heads / key_heads`);
//! 3. `β = sigmoid(in_proj_b x)`, the decay `g = −exp(A_log) · softplus(in_proj_a x + dt_bias)`;
//! 4. the gated delta rule (forge-kernels' `gated_delta_rule`, which also does steps 2 and 3: chunked
//!    for a prompt, recurrent for one token with a state; on CUDA, two kernels for all of it);
//! 5. a gated RMS norm per value head, `w · norm(o) · silu(z)` with `z = in_proj_z x` (this norm scales
//!    by `w`, not `1 + w`), then `out_proj`. A value head's mask (a pruned head, or a trainable mask
//!    scorers differentiate through) multiplies its output here, so a pruned head never reaches
//!    `out_proj`: the meaning of `pruned_linear_heads`.
//!
//! A layer cache holds the last `conv_kernel − 1` convolution inputs and the recurrent state (f32), so
//! generation never recomputes the prompt.
use candle_core::{Module, Tensor};
use forge_kernels::gated_delta_rule::{Heads, Projections};
use forge_kernels::profile::section;
use forge_kernels::tape;

use super::attention::AttentionObserver;
use super::kv_cache::LayerCache;
use super::linear::{linear, Linear};
use crate::loader::{ModelConfig, WeightScope};
use crate::Result;

/// The linear attention of one decoder layer.
#[derive(Clone)]
pub struct GatedDeltaNet {
    pub in_proj_qkv: Linear,
    pub in_proj_z: Linear,
    pub in_proj_b: Linear,
    pub in_proj_a: Linear,
    pub out_proj: Linear,
    /// `(channels, taps)`.
    conv: Tensor,
    /// `−exp(A_log)` (the decay's rate per value head) and `dt_bias`, in f32 whatever they are stored in.
    neg_a: Tensor,
    dt_bias: Tensor,
    norm_weight: Tensor,
    eps: f64,
    layer: usize,
    heads: Heads,
}

/// Loads layer `layer`'s `linear_attn` weights from `vb` (`model.layers.N.linear_attn`).
pub fn gated_deltanet(config: &ModelConfig, layer: usize, vb: WeightScope) -> Result<GatedDeltaNet> {
    let g = config.hybrid.clone().expect("linear attention layers belong to hybrid models");
    let (h, value_heads, vd) = (config.hidden, g.value_heads[layer], g.value_width(layer));
    Ok(GatedDeltaNet {
        in_proj_qkv: linear(h, g.conv_channels(layer), false, vb.pp("in_proj_qkv"))?,
        in_proj_z: linear(h, vd, false, vb.pp("in_proj_z"))?,
        in_proj_b: linear(h, value_heads, false, vb.pp("in_proj_b"))?,
        in_proj_a: linear(h, value_heads, false, vb.pp("in_proj_a"))?,
        out_proj: linear(vd, h, false, vb.pp("out_proj"))?,
        conv: vb.get("conv1d.weight", &[g.conv_channels(layer), 1, g.conv_kernel])?.squeeze(1)?,
        neg_a: vb.get_f32_with("A_log", &[value_heads], |a| a.exp()?.neg())?,
        dt_bias: vb.get_f32_with("dt_bias", &[value_heads], Ok)?,
        norm_weight: vb.get("norm.weight", &[g.value_dim])?,
        eps: config.rms_norm_eps,
        layer,
        heads: Heads {
            key_heads: g.key_heads[layer],
            value_heads,
            key_dim: g.key_dim,
            value_dim: g.value_dim,
        },
    })
}

impl GatedDeltaNet {
    /// Mixes `x` `(batch, seq, hidden)`; with a cache, `x` continues the cached tokens. `head_mask` is
    /// `(value heads)`, 1 to keep a head and 0 to remove it; `observer` sees the heads' outputs.
    pub fn forward(
        &self,
        x: &Tensor,
        head_mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (conv_state, delta_state) = match &cache {
            Some(c) => (c.conv.clone(), c.delta.clone()),
            None => (None, None),
        };
        let device = x.device();
        let (convolved, conv_tail) = section("linear attention: in_proj_qkv + conv", device, || {
            crate::autograd::causal_conv_silu(&self.in_proj_qkv.forward(x)?, &self.conv, conv_state.as_ref())
        })?;
        let (out, state) = section("linear attention: delta rule", device, || {
            let (a, beta_logits) = (self.in_proj_a.forward(x)?, self.in_proj_b.forward(x)?);
            let projections = Projections {
                conv: &convolved,
                a: &a,
                b: &beta_logits,
                neg_a: &self.neg_a,
                dt_bias: &self.dt_bias,
            };
            crate::autograd::gated_delta_rule(&projections, delta_state.as_ref(), self.heads)
        })?;
        if let Some(cache) = cache {
            cache.keep_linear(conv_tail, state)?;
        }
        let Heads { value_heads, value_dim, .. } = self.heads;
        section("linear attention: gated norm + out_proj", device, || {
            let z = tape::reshape(&self.in_proj_z.forward(x)?, (b, s, value_heads, value_dim))?;
            let mut normed = crate::autograd::gated_rms_norm(&out, &z, &self.norm_weight, self.eps)?;
            if let Some(mask) = head_mask {
                normed = tape::mask(&normed, &mask.reshape((1, 1, value_heads, 1))?)?;
            }
            if let Some(observer) = observer {
                observer.observe_linear(self.layer, &normed.transpose(1, 2)?)?;
            }
            self.out_proj.forward(&tape::reshape(&normed, (b, s, value_heads * value_dim))?)
        })
    }
}
