//! A Hugging Face model folder (`config.json`, `*.safetensors`, `tokenizer.json`), opened and checked
//! before anything is allocated.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::{causal_lm, CausalLm, ModelConfig, WeightScope, WeightStore};
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
        Ok(ModelFolder { path: path.to_path_buf(), config, weights })
    }

    /// Builds the decoder in `dtype` on `device`.
    pub fn load(&self, dtype: DType, device: &Device) -> Result<CausalLm> {
        causal_lm(&self.config, WeightScope::new(&self.weights, dtype, device))
    }

    /// Loads the folder's `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_file(&self.path.join("tokenizer.json"), self.config.eos_token_id)
    }
}
