//! A linear layer with a frozen base weight (no gradient is ever computed for it) and an injection
//! point for adapters (LoRA and others): every projection of the decoder goes through here, so an
//! adapter can target any of them by name.
use std::sync::Arc;

use candle_core::{Module, Tensor};
use forge_kernels::Int8Rows;

use crate::autograd::frozen_matmul;
use crate::loader::WeightScope;
use crate::Result;

/// What an adapter adds to a linear layer: given the layer's input and its base output, the adapted
/// output. Implementations hold their own trainable parameters; the base weight stays frozen.
pub trait LinearAdapter: Send + Sync {
    /// `base` is `x · Wᵀ (+ b)`; return what the layer should output instead.
    fn forward(&self, x: &Tensor, base: &Tensor) -> candle_core::Result<Tensor>;

    /// The whole adapted layer for `x` `(…, in)` as one op with its own backward, when the adapter
    /// has one: the graph then keeps neither the base output nor the adapter's intermediates. `None`
    /// (the default) runs `forward` on the base output instead.
    fn fused(
        &self,
        _x: &Tensor,
        _weight: &Tensor,
        _bias: Option<&Tensor>,
    ) -> Option<candle_core::Result<Tensor>> {
        None
    }
}

/// A layer's base weight: as loaded, or in int8 rows (`forge train --frozen-base int8`), made dense
/// for each product that uses it.
#[derive(Clone)]
enum Base {
    Dense(Tensor),
    Int8(Int8Rows),
}

/// `y = x · Wᵀ + b`, then the adapter, if any.
#[derive(Clone)]
pub struct Linear {
    base: Base,
    bias: Option<Tensor>,
    adapter: Option<Arc<dyn LinearAdapter>>,
}

impl Linear {
    /// A layer from its weight `(out, in)` and optional bias `(out)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { base: Base::Dense(weight), bias, adapter: None }
    }

    /// The base weight, `(out, in)`, in the model's dtype (made dense from int8 rows, if stored so).
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        match &self.base {
            Base::Dense(w) => Ok(w.clone()),
            Base::Int8(rows) => rows.dequantize(),
        }
    }

    /// `(out, in)`.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match &self.base {
            Base::Dense(w) => w.dims2(),
            Base::Int8(rows) => rows.dims(),
        }
    }

    /// Stores the base weight as int8 rows from now on; returns the bytes this saved.
    pub fn quantize_base(&mut self) -> candle_core::Result<usize> {
        let Base::Dense(w) = &self.base else { return Ok(0) };
        let rows = Int8Rows::quantize(w)?;
        let saved = (w.elem_count() * w.dtype().size_in_bytes()).saturating_sub(rows.bytes());
        self.base = Base::Int8(rows);
        Ok(saved)
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight when the layer is its weight alone (stored dense, no bias, no adapter), for
    /// products that take several layers' weights at once (decoding's fused one-row products).
    pub fn plain_weight(&self) -> Option<&Tensor> {
        match (&self.base, &self.bias, &self.adapter) {
            (Base::Dense(w), None, None) => Some(w),
            _ => None,
        }
    }

    /// Whether an adapter is wired in (a layer without one has nothing to train).
    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
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
        let weight = self.weight()?;
        if let Some(fused) = self.adapter.as_ref().and_then(|a| a.fused(x, &weight, self.bias.as_ref())) {
            return fused;
        }
        let base = frozen_matmul(x, &weight)?;
        let base = match &self.bias {
            Some(b) => forge_kernels::add_bias(&base, b)?,
            None => base,
        };
        match &self.adapter {
            Some(adapter) => adapter.forward(x, &base),
            None => Ok(base),
        }
    }
}
