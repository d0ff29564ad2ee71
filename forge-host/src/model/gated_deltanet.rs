//! Qwen3.5's linear attention, Gated DeltaNet, as transformers' `Qwen3_5GatedDeltaNet` computes it:
//!
//! 1. `in_proj_qkv` gives queries, keys and values side by side; a causal depthwise convolution
//!    (`conv1d`, `conv_kernel` taps, no bias) runs over them, then SiLU;
//! 2. q and k are L2-normalised per key head (q also scaled by `1/√dk`) and repeated to the value heads
//!    they serve (key head i serves value heads `i·r … i·r + r − 1`, `r = value_heads / key_heads`);
//! 3. `β = sigmoid(in_proj_b x)`, the decay `g = −exp(A_log) · softplus(in_proj_a x + dt_bias)`;
//! 4. the gated delta rule (forge-kernels' `gated_delta_rule`: chunked for a prompt, recurrent for one
//!    token with a state);
//! 5. a gated RMS norm per value head, `w · norm(o) · silu(z)` with `z = in_proj_z x` (this norm scales
//!    by `w`, not `1 + w`), then `out_proj`.
//!
//! A layer cache holds the last `conv_kernel − 1` convolution inputs and the recurrent state (f32), so
//! generation never recomputes the prompt.
use candle_core::{DType, Module, Tensor, D};
use forge_kernels::gated_delta_rule;

use super::kv_cache::LayerCache;
use super::linear::{linear, Linear};
use crate::loader::{Hybrid, ModelConfig, WeightScope};
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
    geometry: Hybrid,
}

/// Loads layer `linear_attn` weights from `vb` (`model.layers.N.linear_attn`).
pub fn gated_deltanet(config: &ModelConfig, vb: WeightScope) -> Result<GatedDeltaNet> {
    let g = config.hybrid.clone().expect("linear attention layers belong to hybrid models");
    let (h, kd, vd) = (config.hidden, g.key_heads * g.key_dim, g.value_heads * g.value_dim);
    let f32_param =
        |name: &str| -> Result<Tensor> { Ok(vb.get(name, &[g.value_heads])?.to_dtype(DType::F32)?) };
    Ok(GatedDeltaNet {
        in_proj_qkv: linear(h, 2 * kd + vd, false, vb.pp("in_proj_qkv"))?,
        in_proj_z: linear(h, vd, false, vb.pp("in_proj_z"))?,
        in_proj_b: linear(h, g.value_heads, false, vb.pp("in_proj_b"))?,
        in_proj_a: linear(h, g.value_heads, false, vb.pp("in_proj_a"))?,
        out_proj: linear(vd, h, false, vb.pp("out_proj"))?,
        conv: vb.get("conv1d.weight", &[g.conv_channels(), 1, g.conv_kernel])?.squeeze(1)?,
        neg_a: f32_param("A_log")?.exp()?.neg()?,
        dt_bias: f32_param("dt_bias")?,
        norm_weight: vb.get("norm.weight", &[g.value_dim])?,
        eps: config.rms_norm_eps,
        geometry: g,
    })
}

impl GatedDeltaNet {
    /// Mixes `x` `(batch, seq, hidden)`; with a cache, `x` continues the cached tokens.
    pub fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let g = &self.geometry;
        let (conv_state, delta_state) = match &cache {
            Some(c) => (c.conv.clone(), c.delta.clone()),
            None => (None, None),
        };
        let mixed = self.in_proj_qkv.forward(x)?;
        let (convolved, conv_tail) = self.causal_conv(&mixed, conv_state.as_ref())?;
        let kd = g.key_heads * g.key_dim;
        let heads = |t: Tensor, n: usize, d: usize| t.reshape((b, s, n, d));
        let q = heads(convolved.narrow(2, 0, kd)?, g.key_heads, g.key_dim)?;
        let k = heads(convolved.narrow(2, kd, kd)?, g.key_heads, g.key_dim)?;
        let v = heads(convolved.narrow(2, 2 * kd, g.value_heads * g.value_dim)?, g.value_heads, g.value_dim)?;
        let q = (self.to_value_heads(&l2_normalise(&q)?)? / (g.key_dim as f64).sqrt())?;
        let k = self.to_value_heads(&l2_normalise(&k)?)?;
        let beta = candle_nn::ops::sigmoid(&self.in_proj_b.forward(x)?.to_dtype(DType::F32)?)?;
        let a = self.in_proj_a.forward(x)?.to_dtype(DType::F32)?.broadcast_add(&self.dt_bias)?;
        let decay = softplus(&a)?.broadcast_mul(&self.neg_a)?;
        let v = v.to_dtype(DType::F32)?;
        let (out, state) = if s == 1 && delta_state.is_some() {
            gated_delta_rule::recurrent(&q, &k, &v, &decay, &beta, delta_state.as_ref())?
        } else {
            gated_delta_rule::chunked(&q, &k, &v, &decay, &beta, delta_state.as_ref())?
        };
        if let Some(cache) = cache {
            cache.conv = Some(conv_tail);
            cache.delta = Some(state);
        }
        let z = self.in_proj_z.forward(x)?.reshape((b, s, g.value_heads, g.value_dim))?;
        let normed = self.gated_norm(&out.to_dtype(x.dtype())?, &z)?;
        self.out_proj.forward(&normed.reshape((b, s, g.value_heads * g.value_dim))?)
    }

    /// The causal depthwise convolution over `mixed` `(b, s, channels)` then SiLU, preceded by the
    /// cached inputs (zeros at the start); returns the output and the last `taps − 1` inputs.
    fn causal_conv(&self, mixed: &Tensor, state: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, s, channels) = mixed.dims3()?;
        let taps = self.geometry.conv_kernel;
        let before = match state {
            Some(state) => state.clone(),
            None => Tensor::zeros((b, taps - 1, channels), mixed.dtype(), mixed.device())?,
        };
        let padded = Tensor::cat(&[&before, mixed], 1)?;
        let weight = self.conv.to_dtype(mixed.dtype())?;
        let mut out = padded.narrow(1, 0, s)?.broadcast_mul(&weight.narrow(1, 0, 1)?.squeeze(1)?)?;
        for tap in 1..taps {
            out = (out + padded.narrow(1, tap, s)?.broadcast_mul(&weight.narrow(1, tap, 1)?.squeeze(1)?)?)?;
        }
        let tail = padded.narrow(1, s, taps - 1)?.contiguous()?;
        Ok((out.silu()?, tail))
    }

    /// Each key head's `(b, s, key_heads, d)` values repeated for the value heads it serves.
    fn to_value_heads(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let g = &self.geometry;
        let r = g.value_heads / g.key_heads;
        if r == 1 {
            return Ok(t.clone());
        }
        let (b, s, n, d) = t.dims4()?;
        t.unsqueeze(3)?.broadcast_as((b, s, n, r, d))?.reshape((b, s, n * r, d))
    }

    /// `w · (o / rms(o)) · silu(z)` per value head: statistics in f32, the normalised value cast back
    /// before the weight, the gate in f32 (transformers' `Qwen3_5RMSNormGated`).
    fn gated_norm(&self, o: &Tensor, z: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = o.dtype();
        let o32 = o.to_dtype(DType::F32)?;
        let inv = (o32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let normed = o32.broadcast_mul(&inv)?.to_dtype(dtype)?.broadcast_mul(&self.norm_weight)?;
        normed.to_dtype(DType::F32)?.mul(&z.to_dtype(DType::F32)?.silu()?)?.to_dtype(dtype)
    }
}

/// `x / sqrt(Σx² + 1e-6)` over the last dimension, in f32 (flash-linear-attention's convention).
fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    x.broadcast_mul(&(x.sqr()?.sum_keepdim(D::Minus1)? + 1e-6)?.sqrt()?.recip()?)
}

/// `log(1 + eˣ)`, as PyTorch computes it: x itself above 20.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let smooth = (x.exp()? + 1.0)?.log()?;
    x.gt(20.0)?.where_cond(x, &smooth)
}
