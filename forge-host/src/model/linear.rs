//! A linear layer with a frozen base weight (no gradient is ever computed for it) and an injection
//! point for adapters (LoRA and others): every projection of the decoder goes through here, so an
//! adapter can target any of them by name.
use std::sync::Arc;

use candle_core::{Module, Tensor};

use super::frozen_matmul::frozen_matmul;
use super::scope::WeightScope;
use crate::Result;

/// What an adapter adds to a linear layer: given the layer's input and its base output, the adapted
/// output. Implementations hold their own trainable parameters; the base weight stays frozen.
pub trait LinearAdapter: Send + Sync {
    /// `base` is `x · Wᵀ (+ b)`; return what the layer should output instead.
    fn forward(&self, x: &Tensor, base: &Tensor) -> candle_core::Result<Tensor>;
}

/// `y = x · Wᵀ + b`, then the adapter, if any.
#[derive(Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Arc<dyn LinearAdapter>>,
}

impl Linear {
    /// A layer from its weight `(out, in)` and optional bias `(out)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias, adapter: None }
    }

    /// The base weight, `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Wires an adapter into the forward pass (replacing any earlier one).
    pub fn set_adapter(&mut self, adapter: Option<Arc<dyn LinearAdapter>>) {
        self.adapter = adapter;
    }
}

/// Loads `weight` (and `bias` when `bias` is true) from `vb`.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: WeightScope) -> Result<Linear> {
    let weight = vb.get("weight", &[out_dim, in_dim])?;
    let bias = if bias { Some(vb.get("bias", &[out_dim])?) } else { None };
    Ok(Linear::new(weight, bias))
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // One 2-D product over all rows: candle's batched matmul would broadcast the weight per batch.
        let dims = x.dims();
        let (rows, in_dim) = (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
        let flat = frozen_matmul(&x.reshape((rows, in_dim))?, &self.weight)?;
        let flat = match &self.bias {
            Some(b) => flat.broadcast_add(b)?,
            None => flat,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("a linear input has at least one dimension") = self.weight.dim(0)?;
        let base = flat.reshape(out_dims)?;
        match &self.adapter {
            Some(adapter) => adapter.forward(x, &base),
            None => Ok(base),
        }
    }
}
