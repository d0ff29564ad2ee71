//! The whole decoder: embedding, layers, final norm and the output projection, with full-sequence
//! outputs (hidden states, logits, per-token NLL) rather than last-token logits only.
use candle_core::{DType, Device, Module, Tensor};

use super::attention::AttentionObserver;
use super::decoder_layer::{decoder_layer, DecoderLayer, LayerMasks, Residual, LINEAR_MODULES};
use super::kv_cache::KvCache;
use super::norm::{rms_norm, RmsNorm};
use super::rope::{RopeTables, RotaryEmbedding};
use crate::autograd::chunked_nll;
use crate::autograd::frozen_matmul;
use crate::loader::ModelConfig;
use crate::loader::{ModelFolder, WeightScope};
use crate::{bad_input, Result};
use forge_api::UnitKind;
use forge_kernels::profile::section;

/// A causal language model of any supported architecture.
#[derive(Clone)]
pub struct CausalLm {
    config: ModelConfig,
    embed_tokens: Tensor,
    /// The decoder layers, in order.
    pub layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rotary: RotaryEmbedding,
    head_masks: Vec<Option<Tensor>>,
    channel_masks: Vec<Option<Tensor>>,
    layer_gates: Vec<Option<Tensor>>,
    /// Layers a mask removed: not run at all, the residual stream passes them unchanged.
    removed_layers: Vec<bool>,
    device: Device,
    dtype: DType,
}

/// Builds the model from a checkpoint's root scope.
pub fn causal_lm(config: &ModelConfig, vb: WeightScope) -> Result<CausalLm> {
    let model = vb.pp(&config.weight_prefix);
    let embed_tokens = model.get("embed_tokens.weight", &[config.vocab, config.hidden])?;
    let layers = (0..config.layers)
        .map(|i| decoder_layer(config, i, model.pp("layers").pp(i)))
        .collect::<Result<_>>()?;
    let lm_head = if config.tie_word_embeddings {
        embed_tokens.clone()
    } else if vb.contains("lm_head.weight") {
        vb.get("lm_head.weight", &[config.vocab, config.hidden])?
    } else {
        return Err(bad_input!(
            "tensor `lm_head.weight` is missing and config.json has `tie_word_embeddings: false`; \
             if the model ties its output to the embedding, set `tie_word_embeddings` to true"
        ));
    };
    Ok(CausalLm {
        config: config.clone(),
        embed_tokens,
        layers,
        norm: rms_norm(config.hidden, config.rms_norm_eps, config.hybrid.is_some(), model.pp("norm"))?,
        lm_head,
        rotary: RotaryEmbedding::new(
            &config.rope,
            config.hybrid.as_ref().map_or(config.head_dim, |h| h.rotary_dim),
        ),
        head_masks: vec![None; config.layers],
        channel_masks: vec![None; config.layers],
        layer_gates: vec![None; config.layers],
        removed_layers: vec![false; config.layers],
        device: vb.device().clone(),
        dtype: vb.dtype(),
    })
}

impl CausalLm {
    /// Builds the decoder of an opened folder in `dtype` on `device`.
    pub fn load(folder: &ModelFolder, dtype: DType, device: &Device) -> Result<Self> {
        let model = causal_lm(&folder.config, WeightScope::new(&folder.weights, dtype, device))?;
        folder.warn_unread();
        Ok(model)
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Sets layer `layer`'s head mask: `(heads)` over its query heads, or over its value heads in a
    /// linear-attention layer; 1 keeps a head, 0 removes it; fractional or trainable values are
    /// allowed (scorers differentiate through it). None clears it.
    pub fn set_head_mask(&mut self, layer: usize, mask: Option<Tensor>) {
        self.head_masks[layer] = mask;
    }

    /// Layer `layer`'s current head mask.
    pub fn head_mask(&self, layer: usize) -> Option<&Tensor> {
        self.head_masks[layer].as_ref()
    }

    /// Sets layer `layer`'s MLP channel mask: `(channels)`, 1 keeps a channel, 0 removes it (its
    /// activation never reaches `down_proj`); trainable values are allowed. None clears it.
    pub fn set_channel_mask(&mut self, layer: usize, mask: Option<Tensor>) {
        self.channel_masks[layer] = mask;
    }

    /// Layer `layer`'s current MLP channel mask.
    pub fn channel_mask(&self, layer: usize) -> Option<&Tensor> {
        self.channel_masks[layer].as_ref()
    }

    /// Sets layer `layer`'s gate: `(1)`, scaling both its residual updates (trainable for scorers).
    /// None clears it.
    pub fn set_layer_gate(&mut self, layer: usize, gate: Option<Tensor>) {
        self.layer_gates[layer] = gate;
    }

    /// Layer `layer`'s current gate.
    pub fn layer_gate(&self, layer: usize) -> Option<&Tensor> {
        self.layer_gates[layer].as_ref()
    }

    /// Whether a mask removed layer `layer`.
    pub fn layer_removed(&self, layer: usize) -> bool {
        self.removed_layers[layer]
    }

    /// Stores every decoder linear layer's base weight as int8 rows (embeddings and the head stay as
    /// they are); returns the device bytes this saved. For training against a frozen base
    /// (`forge_kernels::Int8Rows` says what it costs).
    pub fn quantize_frozen_base(&mut self) -> candle_core::Result<usize> {
        let mut saved = 0;
        for layer in &mut self.layers {
            for (module, _) in LINEAR_MODULES {
                if let Some(linear) = layer.linear_mut(module) {
                    saved += linear.quantize_base()?;
                }
            }
        }
        Ok(saved)
    }

    /// The masks layer `i` runs under.
    fn masks(&self, i: usize) -> LayerMasks<'_> {
        LayerMasks {
            heads: self.head_masks[i].as_ref(),
            channels: self.channel_masks[i].as_ref(),
            gate: self.layer_gates[i].as_ref(),
        }
    }

    /// Applies a mask file's pruned units (query heads, linear-attention value heads, MLP channels)
    /// as 0/1 masks on every layer.
    pub fn apply_head_mask(&mut self, mask: &forge_api::HeadMask) -> Result<()> {
        let geometry = self.config.geometry();
        mask.validate(&geometry).map_err(|e| bad_input!("mask: {e}"))?;
        for layer in 0..self.config.layers {
            let kind = self.config.layer_kind(layer).head_kind();
            let heads = self.keep_mask(&geometry, kind, layer, mask)?;
            self.set_head_mask(layer, heads);
            let channels = self.keep_mask(&geometry, UnitKind::MlpChannel, layer, mask)?;
            self.set_channel_mask(layer, channels);
            self.removed_layers[layer] = !mask.pruned_of(UnitKind::Layer, layer).is_empty();
        }
        Ok(())
    }

    /// The 0/1 mask of layer `layer`'s units of `kind` under `mask`; None when none is pruned.
    fn keep_mask(
        &self,
        geometry: &forge_api::ModelGeometry,
        kind: UnitKind,
        layer: usize,
        mask: &forge_api::HeadMask,
    ) -> Result<Option<Tensor>> {
        let pruned = mask.pruned_of(kind, layer);
        if pruned.is_empty() {
            return Ok(None);
        }
        let values: Vec<f32> =
            (0..geometry.of(kind).0[layer]).map(|u| if pruned.contains(&u) { 0.0 } else { 1.0 }).collect();
        Ok(Some(Tensor::new(values, &self.device)?.to_dtype(self.dtype)?))
    }

    /// Final hidden states `(batch, seq, hidden)` for `ids` `(batch, seq)`, after the final norm.
    /// With a cache, `ids` continue the cached positions and the cache is extended.
    pub fn hidden_states(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        self.hidden_states_observed(ids, cache, None)
    }

    /// [`CausalLm::hidden_states`], showing every layer's attention to `observer`.
    pub fn hidden_states_observed(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Tensor> {
        let last = self.trunk(ids, cache, observer)?;
        Ok(self.norm.add_forward(&last.x, last.pending.as_ref())?.1)
    }

    /// The last layer's output (before the final norm), its MLP update still to add: each layer's
    /// update joins the next norm's kernel (`Residual`), except where an observer sees every layer's
    /// output.
    fn trunk(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mut observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Residual> {
        let seq = ids.dim(1)?;
        let past = cache.as_ref().map_or(0, |c| c.seen());
        let rope = match cache.as_ref().and_then(|c| c.rope_at_position()) {
            Some(rope) => rope?,
            None => self.rope(past, seq)?,
        };
        let mut x = Residual { x: self.embed(ids)?, pending: None };
        for (i, layer) in self.layers.iter().enumerate().filter(|&(i, _)| !self.removed_layers[i]) {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            let layer_observer = observer.as_mut().map(|o| &mut **o as &mut dyn AttentionObserver);
            let out = layer.forward_residual(&x, &rope, past, self.masks(i), layer_cache, layer_observer)?;
            x = match observer.as_mut() {
                Some(o) => {
                    let out = out.sum()?;
                    o.observe_layer(i, &x.x, &out)?;
                    Residual { x: out, pending: None }
                }
                None => out,
            };
        }
        if let Some(cache) = cache {
            cache.advance(seq);
        }
        Ok(x)
    }

    /// Token embeddings `(batch, seq, hidden)` of `ids` `(batch, seq)`: the first layer's input.
    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, seq) = ids.dims2()?;
        forge_kernels::embedding(&self.embed_tokens, &ids.flatten_all()?)?.reshape((
            b,
            seq,
            self.config.hidden,
        ))
    }

    /// Rotary tables for positions `past..past + seq`.
    pub fn rope(&self, past: usize, seq: usize) -> candle_core::Result<RopeTables> {
        self.rotary.tables(past, seq, self.dtype, &self.device)
    }

    /// Runs decoder layer `i` alone on `x` (no cache): the unit gradient checkpointing recomputes.
    pub fn layer_forward(&self, i: usize, x: &Tensor, rope: &RopeTables) -> candle_core::Result<Tensor> {
        if self.removed_layers[i] {
            return Ok(x.clone());
        }
        self.layers[i].forward(x, rope, 0, self.masks(i), None, None)
    }

    /// The last layer's output `(batch, seq, hidden)` for `ids` (before the final norm), no cache.
    pub fn last_layer(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.trunk(ids, None, None)?.sum()
    }

    /// The hidden states that predict tokens 1.. of `ids`, `(batch · (seq − 1), hidden)`: the final
    /// norm of the last layer's output `x` at every position but the last.
    pub fn predicting_rows(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        forge_kernels::narrow(&self.norm.forward(x)?, 1, 0, s - 1)?.reshape((b * (s - 1), ()))
    }

    /// The output projection `(vocab, hidden)` (the embeddings when tied).
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// Next-token NLL `(batch, seq - 1)` from the last layer's output `x` (before the final norm).
    pub fn nll_from_last_layer(&self, x: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let hidden = self.predicting_rows(x)?;
        // Shifted on the host: on CUDA the strided copy would load candle's unary PTX module.
        let targets =
            ids.to_device(&Device::Cpu)?.narrow(1, 1, s - 1)?.flatten_all()?.to_device(ids.device())?;
        section("final norm + lm_head + nll", x.device(), || {
            chunked_nll(&hidden, &self.lm_head, &targets)?.reshape((b, s - 1))
        })
    }

    /// Logits `(batch, seq, vocab)` for every position, in f32.
    pub fn logits(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        let hidden = self.hidden_states(ids, cache)?;
        frozen_matmul(&hidden, &self.lm_head)?.to_dtype(DType::F32)
    }

    /// The last position's logits of a one-sequence batch, on the host in f32 (what decoding picks the
    /// next token from): the logits' cast and the pick happen on the host, so on CUDA decoding needs none
    /// of candle's cast and reduce PTX modules, which a fresh machine compiles on first use.
    pub fn last_logits(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> candle_core::Result<Vec<f32>> {
        let logits = frozen_matmul(&self.hidden_states(ids, cache)?, &self.lm_head)?;
        let last = logits.narrow(1, logits.dim(1)? - 1, 1)?.flatten_all()?;
        last.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.to_vec1::<f32>()
    }

    /// Next-token NLL `(batch, seq - 1)` in f32: position t predicts token t + 1. Logits are never
    /// materialised for the whole batch (see [`chunked_nll`]).
    pub fn next_token_nll(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.next_token_nll_observed(ids, None)
    }

    /// [`CausalLm::next_token_nll`], showing every layer's attention to `observer`.
    pub fn next_token_nll_observed(
        &self,
        ids: &Tensor,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Tensor> {
        self.nll_from_last_layer(&self.trunk(ids, None, observer)?.sum()?, ids)
    }
}
