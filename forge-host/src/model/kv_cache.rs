//! What each layer keeps of the tokens seen so far, so generation computes each position once:
//! keys and values for attention; for Qwen3.5's linear attention, the last convolution inputs and the
//! recurrent state (constant in sequence length).
use candle_core::{Tensor, D};

/// One layer's cache.
#[derive(Clone, Default)]
pub struct LayerCache {
    /// Attention: keys and values, `(batch, kv_heads, seen, head_dim)` each.
    kv: Option<(Tensor, Tensor)>,
    /// Linear attention: the last `conv_kernel − 1` inputs of the convolution `(batch, taps − 1, channels)`.
    pub(crate) conv: Option<Tensor>,
    /// Linear attention: the delta rule's state `(batch, value_heads, key_dim, value_dim)`, f32.
    pub(crate) delta: Option<Tensor>,
}

impl LayerCache {
    /// Appends this step's keys and values and returns all of them.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let kv = match &self.kv {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], D::Minus2)?, Tensor::cat(&[pv, v], D::Minus2)?),
        };
        self.kv = Some(kv.clone());
        Ok(kv)
    }
}

/// The cache of a whole model.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    seen: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        KvCache { layers: vec![LayerCache::default(); layers], seen: 0 }
    }

    /// Positions already cached: where the next token's position starts.
    pub fn seen(&self) -> usize {
        self.seen
    }

    pub(crate) fn layer(&mut self, index: usize) -> &mut LayerCache {
        &mut self.layers[index]
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.seen += tokens;
    }
}
