//! `forge inspect`: what a model folder holds, from its config and safetensors headers alone.
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
    intermediate: usize,
    vocab: usize,
    parameters: usize,
    dtype: String,
    tie_word_embeddings: bool,
}

/// One number when every layer agrees, the per-layer list otherwise.
fn uniform_or_list(values: &[usize]) -> serde_json::Value {
    match values {
        [first, rest @ ..] if rest.iter().all(|v| v == first) => (*first).into(),
        _ => values.into(),
    }
}

pub fn run(args: InspectArgs) -> Result<()> {
    let folder = ModelFolder::open(&args.model)?;
    let c = &folder.config;
    let report = InspectReport {
        architecture: c.architecture.class_name(),
        layers: c.layers,
        heads: uniform_or_list(&c.heads),
        kv_heads: uniform_or_list(&c.kv_heads),
        head_dim: c.head_dim,
        hidden: c.hidden,
        intermediate: c.intermediate,
        vocab: c.vocab,
        parameters: folder.weights.parameter_count(),
        dtype: folder.weights.storage_dtype().map(|d| d.as_str().to_string()).unwrap_or_default(),
        tie_word_embeddings: c.tie_word_embeddings,
    };
    super::emit(&report, args.json, |r| {
        format!(
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
        )
    });
    Ok(())
}
