use serde::{Deserialize, Serialize};

/// The shape of a decoder's attention, which is what head scores and head masks are laid out over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelGeometry {
    /// Number of decoder layers.
    pub layers: usize,
    /// Query heads of each layer (equal in a standard model, different after per-layer pruning; 0 in
    /// a layer without attention, such as Qwen3.5's linear-attention layers).
    pub heads: Vec<usize>,
    /// Key/value heads of each layer; query heads share them in groups (GQA). 0 where `heads` is.
    pub kv_heads: Vec<usize>,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the residual stream.
    pub hidden: usize,
}

impl ModelGeometry {
    /// A model with the same number of heads in every layer.
    pub fn uniform(layers: usize, heads: usize, kv_heads: usize, head_dim: usize, hidden: usize) -> Self {
        ModelGeometry {
            layers,
            heads: vec![heads; layers],
            kv_heads: vec![kv_heads; layers],
            head_dim,
            hidden,
        }
    }

    /// The layers with query heads (all but a hybrid's linear-attention layers), in order.
    pub fn attending_layers(&self) -> Vec<usize> {
        (0..self.layers).filter(|&l| self.heads[l] > 0).collect()
    }

    /// Query heads summed over layers.
    pub fn total_heads(&self) -> usize {
        self.heads.iter().sum()
    }
}
