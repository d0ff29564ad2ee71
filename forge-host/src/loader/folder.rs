//! A Hugging Face model folder (`config.json`, `*.safetensors`, `tokenizer.json`), opened and checked
//! before anything is allocated.
use std::path::{Path, PathBuf};

use super::{ModelConfig, WeightStore};
use crate::tokenizer::Tokenizer;
use crate::{bad_input, Result};

/// An opened model folder: its parsed config and memory-mapped weights.
pub struct ModelFolder {
    /// The folder.
    pub path: PathBuf,
    /// Its parsed `config.json`.
    pub config: ModelConfig,
    /// Its weights, mapped but not yet read.
    pub weights: WeightStore,
}

impl ModelFolder {
    /// Opens `path`, parsing the config and the safetensors headers.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            return Err(bad_input!("model folder {} does not exist or is not a folder", path.display()));
        }
        let config = ModelConfig::from_file(&path.join("config.json"))?;
        let weights = WeightStore::open(path)?;
        let folder = ModelFolder { path: path.to_path_buf(), config, weights };
        folder.check_layer_count()?;
        Ok(folder)
    }

    /// A model of `config` with random weights ([`WeightStore::random`]) and no folder behind it.
    pub fn random(config: ModelConfig, seed: u64) -> Self {
        ModelFolder { path: PathBuf::from("(random weights)"), config, weights: WeightStore::random(seed) }
    }

    /// A config with fewer layers than the weights would silently run a truncated model (perplexity
    /// 178 instead of 10 on tiny-qwen3 cut to 4 of 8 layers); fewer weights than layers fail at load
    /// with the missing tensor's name.
    fn check_layer_count(&self) -> Result<()> {
        let prefix = format!("{}.layers.", self.config.weight_prefix);
        let layer_of = |name: &str| name.strip_prefix(&prefix)?.split('.').next()?.parse::<usize>().ok();
        let top = self.weights.names().into_iter().filter_map(layer_of).max();
        match top {
            Some(top) if top >= self.config.layers => Err(bad_input!(
                "{}: config.json says `num_hidden_layers` is {} but the weights hold layers 0–{top} \
                 (`{prefix}{top}.*`); fix num_hidden_layers to {} or use the matching weights",
                self.path.display(),
                self.config.layers,
                top + 1
            )),
            _ => Ok(()),
        }
    }

    /// Warns of tensors the loaded model did not read (a config that disagrees with its weights, or
    /// weights of another model), except families checkpoints carry for other tools: rotary tables
    /// (`*.rotary_emb.inv_freq`), a tied model's copy of `lm_head.weight`, a vision tower
    /// (`visual.*`, `model.visual.*`) and multi-token-prediction heads (`mtp.*`).
    pub fn warn_unread(&self) {
        let carried = |n: &str| {
            n.ends_with("rotary_emb.inv_freq")
                || (n == "lm_head.weight" && self.config.tie_word_embeddings)
                || is_carried_through(n)
        };
        let unread: Vec<String> = self.weights.unread().into_iter().filter(|n| !carried(n)).collect();
        if !unread.is_empty() {
            let shown: Vec<&str> = unread.iter().take(5).map(String::as_str).collect();
            tracing::warn!(
                "{} tensors in {} are not used by the model its config.json describes and are ignored: {}{}",
                unread.len(),
                self.path.display(),
                shown.join(", "),
                if unread.len() > shown.len() { ", …" } else { "" }
            );
        }
    }

    /// Values of the tensors the text model loads, which go to the device (the vision tower and MTP
    /// heads stay on disk): what a memory estimate counts.
    pub fn loaded_parameter_count(&self) -> u64 {
        let names = self.weights.names();
        let loaded = names.iter().filter(|n| !is_carried_through(n));
        loaded.map(|n| self.weights.shape(n).unwrap_or_default().iter().product::<usize>() as u64).sum()
    }

    /// Loads the folder's `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_file(&self.path.join("tokenizer.json"), self.config.eos_token_id)
    }
}

/// Tensors of a checkpoint that forge never runs but carries through into the models it writes: a
/// vision tower (`visual.*`, `model.visual.*`) and multi-token-prediction heads (`mtp.*`).
pub fn is_carried_through(name: &str) -> bool {
    name.starts_with("visual.") || name.starts_with("model.visual.") || name.starts_with("mtp.")
}
