//! `forge inspect`: what a model folder holds, from its config and safetensors headers alone.
use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;

use crate::loader::ModelFolder;
use crate::Result;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model folder (config.json and safetensors).
    #[arg(long)]
    model: std::path::PathBuf,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct InspectReport {
    architecture: &'static str,
    layers: usize,
    /// Query heads per layer when all layers agree, else the list per layer.
    heads: serde_json::Value,
    kv_heads: serde_json::Value,
    head_dim: usize,
    hidden: usize,
    intermediate: serde_json::Value,
    vocab: usize,
    parameters: usize,
    dtype: String,
    tie_word_embeddings: bool,
    /// Parameters by what they belong to: `full_attention`, `linear_attention`, `mlp`, `embeddings`,
    /// `norms`, and `other` (tensors the text model does not use: a vision tower, MTP heads).
    parameters_by_kind: BTreeMap<&'static str, usize>,
    /// Hybrid models: each layer's kind, `L` (Gated DeltaNet) or `F` (full attention).
    #[serde(skip_serializing_if = "Option::is_none")]
    layer_pattern: Option<String>,
    /// Hybrid models: the linear attention's heads and widths, and RoPE's share of a full head.
    #[serde(skip_serializing_if = "Option::is_none")]
    linear_attention: Option<serde_json::Value>,
}

/// What a tensor of the checkpoint belongs to.
fn kind_of(name: &str, prefix: &str) -> &'static str {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else {
        return if name.starts_with("lm_head.") { "embeddings" } else { "other" };
    };
    if rest.starts_with("embed_tokens.") {
        "embeddings"
    } else if rest.contains(".self_attn.") {
        "full_attention"
    } else if rest.contains(".linear_attn.") {
        "linear_attention"
    } else if rest.contains(".mlp.") {
        "mlp"
    } else if rest.ends_with("norm.weight") {
        "norms"
    } else {
        "other"
    }
}

/// One number when every layer agrees, the per-layer list otherwise.
fn uniform_or_list(values: &[usize]) -> serde_json::Value {
    match values {
        [first, rest @ ..] if rest.iter().all(|v| v == first) => (*first).into(),
        _ => values.into(),
    }
}

/// The per-layer `counts` of a hybrid's linear-attention layers (the others have none).
fn linear_only(c: &crate::loader::ModelConfig, counts: &[usize]) -> Vec<usize> {
    (0..c.layers)
        .filter(|&l| c.layer_kind(l) == crate::loader::LayerKind::Linear)
        .map(|l| counts[l])
        .collect()
}

pub fn run(args: InspectArgs) -> Result<()> {
    let folder = ModelFolder::open(&args.model)?;
    let c = &folder.config;
    let mut by_kind = BTreeMap::new();
    for name in folder.weights.names() {
        let count: usize = folder.weights.shape(name).unwrap_or_default().iter().product();
        *by_kind.entry(kind_of(name, &c.weight_prefix)).or_default() += count;
    }
    let hybrid = c.hybrid.as_ref();
    let report = InspectReport {
        architecture: c.class_name,
        layers: c.layers,
        heads: uniform_or_list(&c.heads),
        kv_heads: uniform_or_list(&c.kv_heads),
        head_dim: c.head_dim,
        hidden: c.hidden,
        intermediate: uniform_or_list(&c.intermediates),
        vocab: c.vocab,
        parameters: folder.weights.parameter_count(),
        dtype: folder.weights.storage_dtype().map(|d| d.as_str().to_string()).unwrap_or_default(),
        tie_word_embeddings: c.tie_word_embeddings,
        parameters_by_kind: by_kind,
        layer_pattern: hybrid.map(|h| {
            h.kinds.iter().map(|k| if *k == crate::loader::LayerKind::Full { 'F' } else { 'L' }).collect()
        }),
        linear_attention: hybrid.map(|h| {
            serde_json::json!({
                "key_heads": uniform_or_list(&linear_only(c, &h.key_heads)),
                "value_heads": uniform_or_list(&linear_only(c, &h.value_heads)), "key_dim": h.key_dim,
                "value_dim": h.value_dim, "conv_kernel": h.conv_kernel, "rotary_dim": h.rotary_dim,
            })
        }),
    };
    super::emit(&report, args.json, |r| {
        let mut text = format!(
            "{} · {} layers × {} heads ({} kv, head_dim {}) · hidden {} · vocab {} · {:.2}M parameters in {}",
            r.architecture,
            r.layers,
            r.heads,
            r.kv_heads,
            r.head_dim,
            r.hidden,
            r.vocab,
            r.parameters as f64 / 1e6,
            r.dtype
        );
        if let (Some(pattern), Some(h)) = (&r.layer_pattern, hybrid) {
            text += &format!(
                "\nlayers {pattern} (L: Gated DeltaNet, {} key × {} value heads of {}/{}, conv {}; F: gated attention, RoPE on {} of {} dims)",
                uniform_or_list(&linear_only(c, &h.key_heads)),
                uniform_or_list(&linear_only(c, &h.value_heads)),
                h.key_dim,
                h.value_dim,
                h.conv_kernel,
                h.rotary_dim,
                r.head_dim
            );
        }
        let kinds: Vec<String> =
            r.parameters_by_kind.iter().map(|(k, n)| format!("{k} {:.2}M", *n as f64 / 1e6)).collect();
        text + "\nparameters: " + &kinds.join(", ")
    });
    Ok(())
}
