//! One pre-norm decoder layer: `x + mix(norm(x))`, then `x + mlp(norm(x))`, where the token mixer is
//! attention, or in Qwen3.5's linear layers Gated DeltaNet.
use candle_core::Tensor;

use super::attention::{attention, Attention, AttentionObserver};
use super::gated_deltanet::{gated_deltanet, GatedDeltaNet};
use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::mlp::{mlp, Mlp};
use super::norm::{rms_norm, RmsNorm};
use super::rope::RopeTables;
use crate::loader::WeightScope;
use crate::loader::{LayerKind, ModelConfig};
use crate::Result;
use forge_kernels::profile::section;

/// What mixes tokens in a layer.
#[derive(Clone)]
pub enum Mixer {
    /// `self_attn`.
    Attention(Attention),
    /// `linear_attn` (Qwen3.5).
    Linear(GatedDeltaNet),
}

/// The masks a layer runs under: over its mixer's heads (query heads, or value heads in a
/// linear-attention layer) and over its MLP channels; 1 keeps a unit, 0 removes it.
#[derive(Clone, Copy, Default)]
pub struct LayerMasks<'a> {
    pub heads: Option<&'a Tensor>,
    pub channels: Option<&'a Tensor>,
    /// `(1)`: scales both of the layer's residual updates (a trainable gate scorers differentiate
    /// through; a removed layer is skipped outright, see `CausalLm`).
    pub gate: Option<&'a Tensor>,
}

/// A decoder layer.
#[derive(Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    /// The token mixer.
    pub mixer: Mixer,
    post_attention_layernorm: RmsNorm,
    /// The feed-forward block.
    pub mlp: Mlp,
    layer: usize,
}

/// Loads layer `layer` from `vb` (`model.layers.N`).
pub fn decoder_layer(config: &ModelConfig, layer: usize, vb: WeightScope) -> Result<DecoderLayer> {
    let offset = config.hybrid.is_some();
    let norm = |name: &str| rms_norm(config.hidden, config.rms_norm_eps, offset, vb.pp(name));
    // Loaded in checkpoint order, so a truncated checkpoint names its first missing tensor.
    let input_layernorm = norm("input_layernorm")?;
    let mixer = match config.layer_kind(layer) {
        LayerKind::Full => Mixer::Attention(attention(config, layer, vb.pp("self_attn"))?),
        LayerKind::Linear => Mixer::Linear(gated_deltanet(config, layer, vb.pp("linear_attn"))?),
    };
    Ok(DecoderLayer {
        input_layernorm,
        mixer,
        post_attention_layernorm: norm("post_attention_layernorm")?,
        mlp: mlp(config, layer, vb.pp("mlp"))?,
        layer,
    })
}

/// The linear layers of a decoder layer, as `(module, parent)`: `model.layers.N.<parent>.<module>`
/// (transformers' names, so PEFT's adapters and forge's name the same modules). A layer has the
/// attention's or, in Qwen3.5's linear layers, Gated DeltaNet's, and always the MLP's.
pub const LINEAR_MODULES: [(&str, &str); 12] = [
    ("q_proj", "self_attn"),
    ("k_proj", "self_attn"),
    ("v_proj", "self_attn"),
    ("o_proj", "self_attn"),
    ("in_proj_qkv", "linear_attn"),
    ("in_proj_z", "linear_attn"),
    ("in_proj_b", "linear_attn"),
    ("in_proj_a", "linear_attn"),
    ("out_proj", "linear_attn"),
    ("gate_proj", "mlp"),
    ("up_proj", "mlp"),
    ("down_proj", "mlp"),
];

impl DecoderLayer {
    /// The linear layer `module` (one of [`LINEAR_MODULES`]), for wiring adapters in.
    /// None where this layer has no such module (an attention module in a linear layer, or the
    /// reverse).
    pub fn linear_mut(&mut self, module: &str) -> Option<&mut Linear> {
        Some(match (&mut self.mixer, module) {
            (Mixer::Attention(a), "q_proj") => &mut a.q_proj,
            (Mixer::Attention(a), "k_proj") => &mut a.k_proj,
            (Mixer::Attention(a), "v_proj") => &mut a.v_proj,
            (Mixer::Attention(a), "o_proj") => &mut a.o_proj,
            (Mixer::Linear(l), "in_proj_qkv") => &mut l.in_proj_qkv,
            (Mixer::Linear(l), "in_proj_z") => &mut l.in_proj_z,
            (Mixer::Linear(l), "in_proj_b") => &mut l.in_proj_b,
            (Mixer::Linear(l), "in_proj_a") => &mut l.in_proj_a,
            (Mixer::Linear(l), "out_proj") => &mut l.out_proj,
            (_, "gate_proj") => &mut self.mlp.gate_proj,
            (_, "up_proj") => &mut self.mlp.up_proj,
            (_, "down_proj") => &mut self.mlp.down_proj,
            _ => return None,
        })
    }

    /// The attention block, in a layer that has one.
    pub fn self_attn(&self) -> Option<&Attention> {
        match &self.mixer {
            Mixer::Attention(a) => Some(a),
            Mixer::Linear(_) => None,
        }
    }

    /// Runs the layer on `x` `(batch, seq, hidden)` under `masks`; see [`Attention::forward`] for the
    /// other inputs.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        past: usize,
        masks: LayerMasks<'_>,
        cache: Option<&mut LayerCache>,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Tensor> {
        let input = Residual { x: x.clone(), pending: None };
        self.forward_residual(&input, rope, past, masks, cache, observer)?.sum()
    }

    /// [`DecoderLayer::forward`] on a residual stream whose last update may not be added yet, leaving
    /// this layer's MLP update unadded in turn: each residual add then runs in one kernel with the norm
    /// after it (`RmsNorm::add_forward`).
    pub fn forward_residual(
        &self,
        input: &Residual,
        rope: &RopeTables,
        past: usize,
        masks: LayerMasks<'_>,
        cache: Option<&mut LayerCache>,
        mut observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Residual> {
        let (x, normed) = self.input_layernorm.add_forward(&input.x, input.pending.as_ref())?;
        let head_mask = masks.heads;
        let mixer_observer = observer.as_mut().map(|o| &mut **o as &mut dyn AttentionObserver);
        let attended = match &self.mixer {
            Mixer::Attention(a) => a.forward(&normed, rope, past, head_mask, cache, mixer_observer)?,
            Mixer::Linear(l) => section("linear attention", x.device(), || {
                l.forward(&normed, head_mask, cache, mixer_observer)
            })?,
        };
        let gated = |t: Tensor| match masks.gate {
            Some(g) => forge_kernels::tape::mask(&t, g),
            None => Ok(t),
        };
        let attended = gated(attended)?;
        let (x, fed) = section("mlp + norm", x.device(), || {
            let (x, normed) = self.post_attention_layernorm.add_forward(&x, Some(&attended))?;
            Ok((x, self.mlp.forward_masked(&normed, masks.channels, self.layer, observer)?))
        })?;
        Ok(Residual { x, pending: Some(gated(fed)?) })
    }
}

/// The residual stream between layers: `x`, and an update not yet added to it (a layer's MLP
/// output), which the next norm adds in its own kernel.
pub struct Residual {
    pub x: Tensor,
    pub pending: Option<Tensor>,
}

impl Residual {
    /// The stream with its update added.
    pub fn sum(self) -> candle_core::Result<Tensor> {
        match self.pending {
            Some(update) => forge_kernels::residual_add(&self.x, &update),
            None => Ok(self.x),
        }
    }
}
