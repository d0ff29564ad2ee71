//! The decoder's RMS norm layer: a weight and an epsilon, applied by forge-kernels' `rms_norm`
//! (statistics in f32, the fused kernel while the weight is frozen).
use candle_core::{Module, Tensor};

use crate::loader::WeightScope;
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
        forge_kernels::rms_norm(x, &self.weight, self.eps)
    }
}
