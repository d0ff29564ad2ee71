//! RMS norm from elementary ops. candle's fused `rms_norm` has no backward (gradients through it
//! silently vanish), and forge trains through every norm. Like transformers, the statistics are taken
//! in f32 whatever the model's dtype, and the result is cast back before the weight is applied.
use candle_core::{DType, Module, Tensor, D};

use super::scope::WeightScope;
use crate::Result;

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension.
#[derive(Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A norm from its weight and epsilon.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }
}

/// Loads `weight` of width `dim` from `vb`.
pub fn rms_norm(dim: usize, eps: f64, vb: WeightScope) -> Result<RmsNorm> {
    Ok(RmsNorm::new(vb.get("weight", &[dim])?, eps))
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let inv_rms = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        x32.broadcast_mul(&inv_rms)?.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}
