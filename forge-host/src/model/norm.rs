//! The decoder's RMS norm layers. Two conventions, which must not be mixed up:
//! - Llama, Qwen2 and Qwen3 scale by `w`: forge-kernels' `rms_norm` (statistics in f32, the result
//!   cast back before the weight is applied; the fused kernel while the weight is frozen);
//! - Qwen3.5's decoder norms (input, post-attention, final, and attention's q/k norm) store `w` as an
//!   offset and scale by `1 + w`, multiplying in f32 before the cast (transformers'
//!   `Qwen3_5RMSNorm`).
//!
//! Qwen3.5's linear attention has a third, gated norm; it lives with that layer.
use candle_core::{Module, Tensor};

use super::rope::RopeTables;
use crate::loader::WeightScope;
use crate::Result;

/// `x / sqrt(mean(x²) + eps)` scaled by `w` (or by `1 + w`) over the last dimension.
#[derive(Clone)]
pub struct RmsNorm {
    /// `w`, or for the offset convention `1 + w` in f32, formed once at load.
    weight: Tensor,
    eps: f64,
    /// Scale by `1 + w`, in f32 (Qwen3.5).
    offset: bool,
}

impl RmsNorm {
    /// A norm from its weight and epsilon, scaling by `w`.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps, offset: false }
    }
}

/// Loads `weight` of width `dim` from `vb`; `offset` picks the `1 + w` convention.
pub fn rms_norm(dim: usize, eps: f64, offset: bool, vb: WeightScope) -> Result<RmsNorm> {
    let weight =
        if offset { vb.get_f32_with("weight", &[dim], |w| w + 1.0)? } else { vb.get("weight", &[dim])? };
    Ok(RmsNorm { weight, eps, offset })
}

impl RmsNorm {
    /// `(x + y, norm(x + y))` for a residual update `y` not yet added (none: `x` as it is): one
    /// kernel where forge-kernels' `add_rms_norm` applies (CUDA, no gradient), else the add and the
    /// norm, the same values either way.
    pub fn add_forward(&self, x: &Tensor, y: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        let Some(y) = y else { return Ok((x.clone(), self.forward(x)?)) };
        if let Some(both) = forge_kernels::add_rms_norm(x, y, &self.weight, self.eps)? {
            return Ok(both);
        }
        let sum = forge_kernels::residual_add(x, y)?;
        let normed = self.forward(&sum)?;
        Ok((sum, normed))
    }

    /// `rope.apply_heads_first(norm(x))` for a head's norm (`x` `(batch, seq, heads, head_dim)`): one
    /// kernel where forge-kernels' `rms_norm_rope` applies (CUDA, no gradient), else the norm and the
    /// rotation, the same values either way.
    pub fn forward_rope(&self, x: &Tensor, rope: &RopeTables) -> candle_core::Result<Tensor> {
        let (cos, sin) = rope.tables();
        if let Some(y) = forge_kernels::rms_norm_rope(x, &self.weight, self.eps, cos, sin)? {
            return Ok(y);
        }
        rope.apply_heads_first(&self.forward(x)?)
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !self.offset {
            return forge_kernels::rms_norm(x, &self.weight, self.eps);
        }
        forge_kernels::rms_norm_f32_weight(x, &self.weight, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_offset_convention_scales_by_one_plus_w_in_f32() -> candle_core::Result<()> {
        let x = Tensor::new(&[[3f32, -4.0], [1.0, 1.0]], &Device::Cpu)?;
        let w = Tensor::new(&[0.5f32, -1.0], &Device::Cpu)?;
        let norm = RmsNorm { weight: (&w + 1.0)?, eps: 0.0, offset: true };
        // Row 0: rms = √12.5; scaled by (1.5, 0).
        let want = [[3.0 / 12.5f32.sqrt() * 1.5, 0.0], [1.5, 0.0]];
        let got = norm.forward(&x)?.to_vec2::<f32>()?;
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let plain = RmsNorm::new(w, 0.0).forward(&x)?.to_vec2::<f32>()?;
        assert!((plain[1][0] - 0.5).abs() < 1e-6, "the plain convention scales by w: {plain:?}");
        Ok(())
    }
}
