//! The SwiGLU feed-forward block: `down(silu(gate(x)) · up(x))`.
use candle_core::{Module, Tensor};

use super::config::ModelConfig;
use super::linear::{linear, Linear};
use super::scope::WeightScope;
use crate::Result;

/// The MLP of one decoder layer.
#[derive(Clone)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

/// Loads an MLP from `vb` (`model.layers.N.mlp`).
pub fn mlp(config: &ModelConfig, vb: WeightScope) -> Result<Mlp> {
    let (h, i, bias) = (config.hidden, config.intermediate, config.mlp_bias);
    Ok(Mlp {
        gate_proj: linear(h, i, bias, vb.pp("gate_proj"))?,
        up_proj: linear(h, i, bias, vb.pp("up_proj"))?,
        down_proj: linear(i, h, bias, vb.pp("down_proj"))?,
    })
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gated = (self.gate_proj.forward(x)?.silu()? * self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}
