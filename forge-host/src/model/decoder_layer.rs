//! One pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
use candle_core::{Module, Tensor};

use super::attention::{attention, Attention, AttentionObserver};
use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::mlp::{mlp, Mlp};
use super::norm::{rms_norm, RmsNorm};
use super::rope::RopeTables;
use crate::loader::ModelConfig;
use crate::loader::WeightScope;
use crate::Result;
use forge_kernels::profile::section;

/// A decoder layer.
#[derive(Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    /// The attention block.
    pub self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    /// The feed-forward block.
    pub mlp: Mlp,
}

/// Loads layer `layer` from `vb` (`model.layers.N`).
pub fn decoder_layer(config: &ModelConfig, layer: usize, vb: WeightScope) -> Result<DecoderLayer> {
    let norm = |name: &str| rms_norm(config.hidden, config.rms_norm_eps, vb.pp(name));
    Ok(DecoderLayer {
        input_layernorm: norm("input_layernorm")?,
        self_attn: attention(config, layer, vb.pp("self_attn"))?,
        post_attention_layernorm: norm("post_attention_layernorm")?,
        mlp: mlp(config, vb.pp("mlp"))?,
    })
}

/// The linear layers of a decoder layer, as `(module, parent)`: `model.layers.N.<parent>.<module>`.
pub const LINEAR_MODULES: [(&str, &str); 7] = [
    ("q_proj", "self_attn"),
    ("k_proj", "self_attn"),
    ("v_proj", "self_attn"),
    ("o_proj", "self_attn"),
    ("gate_proj", "mlp"),
    ("up_proj", "mlp"),
    ("down_proj", "mlp"),
];

impl DecoderLayer {
    /// The linear layer `module` (one of [`LINEAR_MODULES`]), for wiring adapters in.
    pub fn linear_mut(&mut self, module: &str) -> Option<&mut Linear> {
        Some(match module {
            "q_proj" => &mut self.self_attn.q_proj,
            "k_proj" => &mut self.self_attn.k_proj,
            "v_proj" => &mut self.self_attn.v_proj,
            "o_proj" => &mut self.self_attn.o_proj,
            "gate_proj" => &mut self.mlp.gate_proj,
            "up_proj" => &mut self.mlp.up_proj,
            "down_proj" => &mut self.mlp.down_proj,
            _ => return None,
        })
    }

    /// Runs the layer on `x` `(batch, seq, hidden)`; see [`Attention::forward`] for the other inputs.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        past: usize,
        head_mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Tensor> {
        let attended = self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            rope,
            past,
            head_mask,
            cache,
            observer,
        )?;
        let x = (x + attended)?;
        let fed = section("mlp + norm", x.device(), || {
            self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)
        })?;
        x + fed
    }
}
