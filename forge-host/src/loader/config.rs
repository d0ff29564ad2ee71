//! `config.json` → [`ModelConfig`]: one description for the three supported families. Parsing is
//! strict where a silent default would give wrong numbers (architecture, activation, rope type) and
//! lenient where transformers itself has defaults (head_dim, biases, tying).
use std::path::Path;

use serde::Deserialize;

use crate::{bad_input, Error, Result};

/// The decoder families forge runs. They differ only in details the decoder switches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM`: optional bias on all attention projections and on the MLP.
    Llama,
    /// `Qwen2ForCausalLM`: bias on q/k/v, none on o.
    Qwen2,
    /// `Qwen3ForCausalLM`: RMS norm on each query and key head before rope.
    Qwen3,
    /// `Qwen3_5ForCausalLM` and `Qwen3_5ForConditionalGeneration` (Qwen3.5 and 3.6): Gated DeltaNet
    /// linear attention and gated full attention, per [`ModelConfig::hybrid`].
    Qwen35,
}

impl Architecture {
    const SUPPORTED: [(&'static str, &'static str, Architecture); 5] = [
        ("LlamaForCausalLM", "llama", Architecture::Llama),
        ("Qwen2ForCausalLM", "qwen2", Architecture::Qwen2),
        ("Qwen3ForCausalLM", "qwen3", Architecture::Qwen3),
        ("Qwen3_5ForCausalLM", "qwen3_5_text", Architecture::Qwen35),
        ("Qwen3_5ForConditionalGeneration", "qwen3_5", Architecture::Qwen35),
    ];

    /// Families whose name forge knows but whose layers it does not run yet.
    const NOT_YET: [&'static str; 2] = ["Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeForCausalLM"];

    /// The family and the transformers class it was named by (`architectures`, else `model_type`).
    fn from_names(architectures: &[String], model_type: Option<&str>) -> Result<(Self, &'static str)> {
        // The class names what transformers would build; `model_type` speaks only when no class is named.
        let found = if architectures.is_empty() {
            model_type.and_then(|t| Self::SUPPORTED.iter().find(|s| s.1 == t))
        } else {
            architectures.iter().find_map(|a| Self::SUPPORTED.iter().find(|s| s.0 == a))
        };
        match found {
            Some(s) => Ok((s.2, s.0)),
            None if architectures.iter().any(|a| Self::NOT_YET.contains(&a.as_str())) => Err(bad_input!(
                "architecture `{}` (Qwen3.5 with mixture-of-experts MLPs) is not supported yet; forge runs the \
                 dense Qwen3.5 models (Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration)",
                architectures[0]
            )),
            None => {
                let named = architectures.first().map(String::as_str).or(model_type).unwrap_or("none given");
                let supported: Vec<_> = Self::SUPPORTED.iter().map(|s| s.0).collect();
                Err(bad_input!(
                    "architecture `{named}` is not supported; forge runs {}",
                    supported.join(", ")
                ))
            }
        }
    }
}

/// How rotary position frequencies are derived.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain `1 / theta^(2i/d)`.
    Default,
    /// Every frequency divided by `factor`.
    Linear {
        /// Divisor of all frequencies.
        factor: f64,
    },
    /// Llama 3's piecewise rescaling of low frequencies.
    Llama3 {
        /// Divisor of the lowest frequencies.
        factor: f64,
        /// Wavelength bound (in units of the original context) above which frequencies are divided.
        low_freq_factor: f64,
        /// Wavelength bound below which frequencies are kept.
        high_freq_factor: f64,
        /// The context length the model was first trained with.
        original_max_position_embeddings: f64,
    },
}

/// Rotary embedding parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// Base of the frequencies.
    pub theta: f64,
    /// How the base frequencies are rescaled.
    pub scaling: RopeScaling,
}

/// Everything the decoder needs to know about a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The model family.
    pub architecture: Architecture,
    /// The transformers class of the checkpoint (`Qwen3_5ForConditionalGeneration`, …).
    pub class_name: &'static str,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the MLP.
    pub intermediate: usize,
    /// MLP channels of each layer: `intermediate` everywhere, or forge's
    /// `forge_intermediate_size_per_layer` after uneven channel pruning (`intermediate` is then
    /// their maximum).
    pub intermediates: Vec<usize>,
    /// Number of decoder layers.
    pub layers: usize,
    /// Query heads per layer (all equal in a standard checkpoint; forge's compact format may vary them).
    pub heads: Vec<usize>,
    /// Key/value heads per layer.
    pub kv_heads: Vec<usize>,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Epsilon of every RMS norm.
    pub rms_norm_eps: f64,
    /// Rotary embedding parameters.
    pub rope: RopeConfig,
    /// Whether the output projection reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// RMS norm on query and key heads (Qwen3).
    pub qk_norm: bool,
    /// End-of-sequence token id, if the config names one.
    pub eos_token_id: Option<u32>,
    /// The dtype the checkpoint says it is stored in (informational).
    pub torch_dtype: Option<String>,
    /// The longest context the model was made for (`max_position_embeddings`), when the config says.
    pub max_positions: Option<usize>,
    /// Where the text model's weights live: `model` (`model.layers.N…`), or `model.language_model`
    /// in a `Qwen3_5ForConditionalGeneration` checkpoint, beside its vision tower.
    pub weight_prefix: String,
    /// Qwen3.5's layer mix and linear-attention geometry (None for the dense families).
    pub hybrid: Option<Hybrid>,
}

/// What a layer of a hybrid model mixes tokens with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Gated full attention (`full_attention`): softmax attention with an output gate.
    Full,
    /// Gated DeltaNet (`linear_attention`): a recurrent state per value head.
    Linear,
}

impl LayerKind {
    /// The kind of prunable head this layer's mixer has.
    pub fn head_kind(self) -> forge_api::UnitKind {
        match self {
            LayerKind::Full => forge_api::UnitKind::QueryHead,
            LayerKind::Linear => forge_api::UnitKind::LinearHead,
        }
    }
}

/// The hybrid geometry of a Qwen3.5 model.
#[derive(Clone, Debug, PartialEq)]
pub struct Hybrid {
    /// Each layer's kind (`layer_types`).
    pub kinds: Vec<LayerKind>,
    /// Key heads of each layer's linear attention (`linear_num_key_heads`, or forge's
    /// `forge_linear_num_key_heads_per_layer` after uneven pruning); each serves
    /// `value_heads / key_heads` consecutive value heads. Read in linear-attention layers only.
    pub key_heads: Vec<usize>,
    /// Value heads of each layer (`linear_num_value_heads`, or `forge_linear_num_value_heads_per_layer`).
    pub value_heads: Vec<usize>,
    /// Width of a key (and query) head (`linear_key_head_dim`).
    pub key_dim: usize,
    /// Width of a value head (`linear_value_head_dim`).
    pub value_dim: usize,
    /// Taps of the causal depthwise convolution (`linear_conv_kernel_dim`).
    pub conv_kernel: usize,
    /// Dimensions of each full-attention head that RoPE rotates (`partial_rotary_factor × head_dim`).
    pub rotary_dim: usize,
}

impl Hybrid {
    /// Channels of layer `layer`'s causal convolution: queries, keys and values side by side.
    pub fn conv_channels(&self, layer: usize) -> usize {
        2 * self.key_heads[layer] * self.key_dim + self.value_width(layer)
    }

    /// Width of layer `layer`'s values, all heads side by side.
    pub fn value_width(&self, layer: usize) -> usize {
        self.value_heads[layer] * self.value_dim
    }
}

/// The keys of `config.json` forge reads. Unknown keys are fine: configs carry many forge has no use for.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    layer_types: Option<Vec<String>>,
    linear_num_key_heads: Option<usize>,
    linear_num_value_heads: Option<usize>,
    linear_key_head_dim: Option<usize>,
    linear_value_head_dim: Option<usize>,
    linear_conv_kernel_dim: Option<usize>,
    partial_rotary_factor: Option<f64>,
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RawRope>,
    rope_scaling: Option<RawRope>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    eos_token_id: Option<EosId>,
    #[serde(alias = "torch_dtype")]
    dtype: Option<String>,
    /// forge's extension for compact models pruned unevenly: query and key/value heads per layer.
    forge_heads_per_layer: Option<Vec<usize>>,
    forge_kv_heads_per_layer: Option<Vec<usize>>,
    /// The same for a hybrid's linear-attention key and value heads.
    forge_linear_num_key_heads_per_layer: Option<Vec<usize>>,
    forge_linear_num_value_heads_per_layer: Option<Vec<usize>>,
    /// The same for MLP channels.
    forge_intermediate_size_per_layer: Option<Vec<usize>>,
}

#[derive(Deserialize)]
struct RawRope {
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
    #[serde(alias = "type")]
    rope_type: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EosId {
    One(u32),
    Many(Vec<u32>),
}

/// Sizes beyond any real model; a config above them is corrupt, and refusing it early keeps a
/// garbage file from asking for terabytes.
const MAX_DIM: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;

impl ModelConfig {
    /// Reads and validates `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad_input!(
                "{} not found: a model folder needs config.json, *.safetensors and tokenizer.json \
                 (the layout `save_pretrained` writes)",
                path.display()
            ),
            _ => Error::io(path, e),
        })?;
        Self::from_json(&text).map_err(|e| bad_input!("{}: {e}", path.display()))
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        let (raw, weight_prefix) = raw_config(text)?;
        let (architecture, class_name) =
            Architecture::from_names(&raw.architectures, raw.model_type.as_deref())?;
        let need = |value: Option<usize>, key: &str, max: usize| -> Result<usize> {
            match value {
                None => Err(bad_input!("`{key}` is missing")),
                Some(0) => Err(bad_input!("`{key}` is 0")),
                Some(v) if v > max => Err(bad_input!("`{key}` is {v}, larger than any model forge can hold")),
                Some(v) => Ok(v),
            }
        };
        let hidden = need(raw.hidden_size, "hidden_size", MAX_DIM)?;
        let intermediate = need(raw.intermediate_size, "intermediate_size", MAX_DIM)?;
        let layers = need(raw.num_hidden_layers, "num_hidden_layers", 4096)?;
        let intermediates = per_layer_intermediates(&raw, layers, intermediate)?;
        let heads = need(raw.num_attention_heads, "num_attention_heads", MAX_DIM)?;
        let kv_heads = need(raw.num_key_value_heads.or(Some(heads)), "num_key_value_heads", MAX_DIM)?;
        let vocab = need(raw.vocab_size, "vocab_size", MAX_VOCAB)?;
        let head_dim = head_dim(&raw, hidden, heads)?;
        let (heads, kv_heads) = per_layer_heads(&raw, layers, heads, kv_heads)?;
        let rope = rope_config(&raw)?;
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(bad_input!(
                "`rms_norm_eps` is {rms_norm_eps}; it must be a finite non-negative number"
            ));
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Llama | Architecture::Qwen3 | Architecture::Qwen35 => {
                (attention_bias, attention_bias)
            }
        };
        let hybrid = match architecture {
            Architecture::Qwen35 => Some(hybrid_config(&raw, layers, head_dim)?),
            _ => None,
        };
        Ok(ModelConfig {
            architecture,
            class_name,
            hidden,
            intermediate: intermediates.iter().copied().max().unwrap_or(intermediate),
            intermediates,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            rms_norm_eps,
            rope,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: architecture == Architecture::Llama && raw.mlp_bias.unwrap_or(false),
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Qwen35),
            eos_token_id: match raw.eos_token_id {
                Some(EosId::One(id)) => Some(id),
                Some(EosId::Many(ids)) => ids.first().copied(),
                None => None,
            },
            torch_dtype: raw.dtype,
            max_positions: raw.max_position_embeddings.filter(|&n| n > 0),
            weight_prefix,
            hybrid,
        })
    }

    /// Refuses `tokens` positions beyond the model's context, naming `what` asked for them (a flag or
    /// recipe key) and the fix.
    pub fn check_context(&self, tokens: usize, what: &str) -> Result<()> {
        match self.max_positions {
            Some(max) if tokens > max => Err(bad_input!(
                "{what} asks for {tokens} positions, but the model's context is {max} \
                 (`max_position_embeddings` in config.json); give at most {max}"
            )),
            _ => Ok(()),
        }
    }

    /// What mixes tokens in `layer`: full attention in the dense families, `layer_types` in a hybrid.
    pub fn layer_kind(&self, layer: usize) -> LayerKind {
        self.hybrid.as_ref().map_or(LayerKind::Full, |h| h.kinds[layer])
    }

    /// Rows of `q_proj` one query head owns: `head_dim`, or twice that in Qwen3.5's gated attention
    /// (its query, then its output gate).
    pub fn query_rows_per_head(&self) -> usize {
        if self.hybrid.is_some() {
            2 * self.head_dim
        } else {
            self.head_dim
        }
    }

    /// `(in, out)` of linear layer `module` (one of the model's `LINEAR_MODULES`) of `layer`; None
    /// where the layer has no such module (Qwen3.5: attention modules in its linear layers, Gated
    /// DeltaNet's in its full-attention ones).
    pub fn linear_dims(&self, layer: usize, module: &str) -> Option<(usize, usize)> {
        let (h, i) = (self.hidden, self.intermediates[layer]);
        let (q, kv) = (self.heads[layer] * self.head_dim, self.kv_heads[layer] * self.head_dim);
        let linear = self.hybrid.as_ref().filter(|_| self.layer_kind(layer) == LayerKind::Linear);
        Some(match (module, linear) {
            ("q_proj", None) => (h, self.heads[layer] * self.query_rows_per_head()),
            ("k_proj" | "v_proj", None) => (h, kv),
            ("o_proj", None) => (q, h),
            ("in_proj_qkv", Some(g)) => (h, g.conv_channels(layer)),
            ("in_proj_z", Some(g)) => (h, g.value_width(layer)),
            ("in_proj_b" | "in_proj_a", Some(g)) => (h, g.value_heads[layer]),
            ("out_proj", Some(g)) => (g.value_width(layer), h),
            ("gate_proj" | "up_proj", _) => (h, i),
            ("down_proj", _) => (i, h),
            _ => return None,
        })
    }

    /// The head geometry, as strategies see it: in a hybrid, the linear-attention layers have no
    /// query heads (0) and the full-attention layers no linear-attention heads, so each kind's scores
    /// and masks cover its own layers.
    pub fn geometry(&self) -> forge_api::ModelGeometry {
        let only = |kind: LayerKind, counts: &[usize]| -> Vec<usize> {
            counts.iter().enumerate().map(|(l, &n)| if self.layer_kind(l) == kind { n } else { 0 }).collect()
        };
        let (linear_heads, linear_key_heads) = match &self.hybrid {
            Some(h) => (only(LayerKind::Linear, &h.value_heads), only(LayerKind::Linear, &h.key_heads)),
            None => (Vec::new(), Vec::new()),
        };
        forge_api::ModelGeometry {
            layers: self.layers,
            heads: only(LayerKind::Full, &self.heads),
            kv_heads: only(LayerKind::Full, &self.kv_heads),
            head_dim: self.head_dim,
            hidden: self.hidden,
            linear_heads,
            linear_key_heads,
            mlp_channels: self.intermediates.clone(),
            // Counted from the weights, where a parameter target needs them (outputs::costed_geometry).
            costs: None,
        }
    }
}

/// The width of an attention head: `head_dim`, else `hidden_size / num_attention_heads`; even, as RoPE
/// needs. (Checked here with the activation, the one forge's MLP computes.)
fn head_dim(raw: &RawConfig, hidden: usize, heads: usize) -> Result<usize> {
    let head_dim = match raw.head_dim {
        Some(d) if d > 0 && d <= MAX_DIM => d,
        Some(d) => return Err(bad_input!("`head_dim` is {d}; give a positive head width")),
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(bad_input!(
                "`hidden_size` {hidden} is not a multiple of `num_attention_heads` {heads}; give `head_dim`"
            ))
        }
    };
    if head_dim % 2 != 0 {
        return Err(bad_input!("`head_dim` is {head_dim}; rotary embeddings need an even head width"));
    }
    match raw.hidden_act.as_deref() {
        None | Some("silu") => Ok(head_dim),
        Some(other) => Err(bad_input!("`hidden_act` is `{other}`; forge's MLP supports `silu` only")),
    }
}

/// The text model's keys and where its weights live. A `Qwen3_5ForConditionalGeneration` config keeps
/// them under `text_config` (its weights under `model.language_model`), with `tie_word_embeddings`
/// sometimes only at the top.
fn raw_config(text: &[u8]) -> Result<(RawConfig, String)> {
    let invalid = |e: serde_json::Error| bad_input!("not a valid config: {e}");
    let mut value: serde_json::Value = serde_json::from_slice(text).map_err(invalid)?;
    let outer_tie = value.get("tie_word_embeddings").cloned();
    let conditional = value["architectures"]
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n == "Qwen3_5ForConditionalGeneration"));
    if !conditional {
        return Ok((serde_json::from_value(value).map_err(invalid)?, "model".into()));
    }
    let mut text_config = value
        .get_mut("text_config")
        .map(serde_json::Value::take)
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| bad_input!("`text_config` is missing: a Qwen3_5ForConditionalGeneration config keeps its text model there"))?;
    text_config["architectures"] = serde_json::json!(["Qwen3_5ForConditionalGeneration"]);
    if text_config.get("tie_word_embeddings").is_none() {
        if let Some(tie) = outer_tie {
            text_config["tie_word_embeddings"] = tie;
        }
    }
    Ok((serde_json::from_value(text_config).map_err(invalid)?, "model.language_model".into()))
}

/// Qwen3.5's layer mix and linear-attention geometry, checked: `layer_types` of the right length and
/// known kinds (default: every fourth layer full, as transformers has it), value heads a multiple of
/// key heads, a rotary width that is even and within the head.
fn hybrid_config(raw: &RawConfig, layers: usize, head_dim: usize) -> Result<Hybrid> {
    let kinds = match &raw.layer_types {
        None => (0..layers).map(|i| if (i + 1) % 4 == 0 { LayerKind::Full } else { LayerKind::Linear }).collect(),
        Some(types) if types.len() != layers => {
            return Err(bad_input!(
                "`layer_types` lists {} layers but `num_hidden_layers` is {layers}; give one kind per layer",
                types.len()
            ))
        }
        Some(types) => types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "full_attention" => Ok(LayerKind::Full),
                "linear_attention" => Ok(LayerKind::Linear),
                other => Err(bad_input!(
                    "`layer_types[{i}]` is `{other}`; a Qwen3.5 layer is `full_attention` or `linear_attention`"
                )),
            })
            .collect::<Result<_>>()?,
    };
    let need = |v: Option<usize>, key: &str| match v {
        Some(v) if v > 0 && v <= MAX_DIM => Ok(v),
        _ => Err(bad_input!("`{key}` is missing or not a positive size; a Qwen3.5 config needs it")),
    };
    let key_heads = need(raw.linear_num_key_heads, "linear_num_key_heads")?;
    let value_heads = need(raw.linear_num_value_heads, "linear_num_value_heads")?;
    let (key_heads, value_heads) = per_layer_linear_heads(raw, layers, key_heads, value_heads)?;
    let factor = raw
        .rope_parameters
        .as_ref()
        .and_then(|p| p.partial_rotary_factor)
        .or(raw.partial_rotary_factor)
        .unwrap_or(1.0);
    let rotary_dim = (head_dim as f64 * factor) as usize;
    if !(factor > 0.0 && factor <= 1.0) || rotary_dim == 0 || rotary_dim % 2 == 1 {
        return Err(bad_input!(
            "`partial_rotary_factor` {factor} × `head_dim` {head_dim} gives {rotary_dim} rotated dimensions; it must be even and positive"
        ));
    }
    Ok(Hybrid {
        kinds,
        key_heads,
        value_heads,
        key_dim: need(raw.linear_key_head_dim, "linear_key_head_dim")?,
        value_dim: need(raw.linear_value_head_dim, "linear_value_head_dim")?,
        conv_kernel: need(raw.linear_conv_kernel_dim, "linear_conv_kernel_dim")?,
        rotary_dim,
    })
}

/// MLP channels per layer: `intermediate_size`, or forge's per-layer extension after uneven pruning.
fn per_layer_intermediates(raw: &RawConfig, layers: usize, intermediate: usize) -> Result<Vec<usize>> {
    let widths = raw.forge_intermediate_size_per_layer.clone().unwrap_or_else(|| vec![intermediate; layers]);
    if widths.len() != layers || widths.iter().any(|&w| w == 0 || w > MAX_DIM) {
        return Err(bad_input!(
            "`forge_intermediate_size_per_layer` must list {layers} positive widths (found {widths:?})"
        ));
    }
    Ok(widths)
}

/// Linear-attention key and value heads per layer: the config's counts, or forge's per-layer
/// extension after uneven pruning; value heads a non-zero multiple of key heads in every layer.
fn per_layer_linear_heads(
    raw: &RawConfig,
    layers: usize,
    key_heads: usize,
    value_heads: usize,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let k = raw.forge_linear_num_key_heads_per_layer.clone().unwrap_or_else(|| vec![key_heads; layers]);
    let v = raw.forge_linear_num_value_heads_per_layer.clone().unwrap_or_else(|| vec![value_heads; layers]);
    if k.len() != layers || v.len() != layers {
        return Err(bad_input!(
            "`forge_linear_num_key_heads_per_layer`/`forge_linear_num_value_heads_per_layer` must list {layers} \
             layers (found {} and {})",
            k.len(),
            v.len()
        ));
    }
    for (layer, (&k, &v)) in k.iter().zip(&v).enumerate() {
        if k == 0 || v > MAX_DIM || v % k != 0 || v == 0 {
            return Err(bad_input!(
                "`linear_num_value_heads` ({v}) is not a multiple of `linear_num_key_heads` ({k}) (layer \
                 {layer}); each key head serves a whole group of value heads"
            ));
        }
    }
    Ok((k, v))
}

fn per_layer_heads(
    raw: &RawConfig,
    layers: usize,
    heads: usize,
    kv_heads: usize,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let q = raw.forge_heads_per_layer.clone().unwrap_or_else(|| vec![heads; layers]);
    let kv = raw.forge_kv_heads_per_layer.clone().unwrap_or_else(|| vec![kv_heads; layers]);
    if q.len() != layers || kv.len() != layers {
        return Err(bad_input!(
            "`forge_heads_per_layer`/`forge_kv_heads_per_layer` must list {layers} layers (found {} and {})",
            q.len(),
            kv.len()
        ));
    }
    for (layer, (&h, &k)) in q.iter().zip(&kv).enumerate() {
        if h == 0 || k == 0 || h > MAX_DIM || h % k != 0 {
            return Err(bad_input!(
                "layer {layer} has {h} query heads and {k} key/value heads; query heads must be a \
                 non-zero multiple of key/value heads"
            ));
        }
    }
    Ok((q, kv))
}

fn rope_config(raw: &RawConfig) -> Result<RopeConfig> {
    let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
    let theta = params.and_then(|p| p.rope_theta).or(raw.rope_theta).unwrap_or(10_000.0);
    if !(theta.is_finite() && theta > 1.0) {
        return Err(bad_input!("`rope_theta` is {theta}; it must be a finite number above 1"));
    }
    let positive = |v: Option<f64>, key: &str| -> Result<f64> {
        match v {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            Some(v) => Err(bad_input!("rope `{key}` is {v}; it must be a finite positive number")),
            None => Err(bad_input!("rope scaling needs `{key}`")),
        }
    };
    let scaling = match params.and_then(|p| p.rope_type.as_deref()).unwrap_or("default") {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: positive(params.and_then(|p| p.factor), "factor")? },
        "llama3" => {
            let p = params.expect("a rope type comes from rope parameters");
            let low = positive(p.low_freq_factor, "low_freq_factor")?;
            let high = positive(p.high_freq_factor, "high_freq_factor")?;
            if high <= low {
                return Err(bad_input!(
                    "rope `high_freq_factor` ({high}) must exceed `low_freq_factor` ({low})"
                ));
            }
            RopeScaling::Llama3 {
                factor: positive(p.factor, "factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: positive(
                    p.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            }
        }
        other => {
            return Err(bad_input!(
                "rope type `{other}` is not supported; forge supports default, linear and llama3"
            ))
        }
    };
    Ok(RopeConfig { theta, scaling })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3: &str = r#"{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 256, "intermediate_size": 768,
        "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
        "vocab_size": 8192, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": true, "eos_token_id": 0, "hidden_act": "silu"}"#;

    fn with(extra: &str) -> String {
        format!("{}, {extra}}}", QWEN3.trim_end().trim_end_matches('}'))
    }

    #[test]
    fn reads_a_qwen3_config() {
        let c = ModelConfig::from_json(QWEN3.as_bytes()).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!((c.layers, c.head_dim, c.vocab), (8, 32, 8192));
        assert_eq!(c.heads, vec![8; 8]);
        assert_eq!(c.kv_heads, vec![4; 8]);
        assert!(c.qk_norm && c.tie_word_embeddings && !c.qkv_bias);
        assert_eq!(c.rope, RopeConfig { theta: 10000.0, scaling: RopeScaling::Default });
    }

    #[test]
    fn names_unsupported_architectures_and_lists_the_supported_ones() {
        let e = ModelConfig::from_json(br#"{"architectures": ["GPT2LMHeadModel"]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "architecture `GPT2LMHeadModel` is not supported; forge runs LlamaForCausalLM, Qwen2ForCausalLM, \
             Qwen3ForCausalLM, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration"
        );
    }

    #[test]
    fn reads_llama3_rope_scaling_from_the_old_key() {
        let c = ModelConfig::from_json(
            with(
                r#""rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, "rope_theta": 500000.0"#,
            )
            .replace("rope_parameters", "unused")
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.rope.theta, 500000.0);
        assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
    }

    #[test]
    fn refuses_what_would_compute_the_wrong_thing() {
        let gelu = ModelConfig::from_json(
            with(r#""hidden_act": "gelu""#).replacen(r#""hidden_act": "silu""#, "\"x\": 0", 1).as_bytes(),
        );
        assert!(gelu.unwrap_err().to_string().contains("`hidden_act` is `gelu`"));
        let yarn = ModelConfig::from_json(QWEN3.replace("\"default\"", "\"yarn\"").as_bytes());
        assert!(yarn.unwrap_err().to_string().contains("rope type `yarn` is not supported"));
        let groups = ModelConfig::from_json(
            QWEN3.replace("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 3").as_bytes(),
        );
        assert!(groups.unwrap_err().to_string().contains("8 query heads and 3 key/value heads"));
        let missing = ModelConfig::from_json(QWEN3.replace("\"vocab_size\": 8192,", "").as_bytes());
        assert_eq!(missing.unwrap_err().to_string(), "`vocab_size` is missing");
    }
}
