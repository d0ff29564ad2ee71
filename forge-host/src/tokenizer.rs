//! `tokenizer.json` through the tokenizers crate, with the one convention forge's protocols need: text
//! is encoded without special tokens, and documents are separated by the end-of-text token.
use std::path::Path;

use crate::{bad_input, Result};

/// A loaded tokenizer and its end-of-text id.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_id: u32,
}

/// The separator token of Qwen-family tokenizers, preferred over the config's id when present.
const END_OF_TEXT: &str = "<|endoftext|>";

impl Tokenizer {
    /// Loads `path`; `config_eos` is the model config's `eos_token_id`, used when the vocabulary has no
    /// `<|endoftext|>`.
    pub fn from_file(path: &Path, config_eos: Option<u32>) -> Result<Self> {
        if !path.is_file() {
            return Err(bad_input!(
                "{} not found: forge needs the model's tokenizer.json (the fast-tokenizer file transformers saves)",
                path.display()
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| bad_input!("{} is not a valid tokenizer.json: {e}", path.display()))?;
        let eos_id = inner.token_to_id(END_OF_TEXT).or(config_eos).ok_or_else(|| {
            bad_input!("{} has no {END_OF_TEXT} token and config.json no `eos_token_id`", path.display())
        })?;
        Ok(Tokenizer { inner, eos_id })
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(|e| bad_input!("cannot tokenize text: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Token ids of several texts at once (in parallel), without special tokens.
    pub fn encode_batch(&self, texts: Vec<&str>) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .inner
            .encode_batch_fast(texts, false)
            .map_err(|e| bad_input!("cannot tokenize text: {e}"))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| bad_input!("cannot decode token ids: {e}"))
    }

    /// The end-of-text id that separates documents and ends generation.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Size of the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
