//! The evaluation protocol's token stream: each document tokenized without special tokens and followed
//! by end-of-text, all concatenated, cut into non-overlapping windows of `seq_len` tokens.
use super::Documents;
use crate::tokenizer::Tokenizer;
use crate::{bad_input, Result};

/// Documents tokenized per batch: large enough for the tokenizer's parallelism, small enough that
/// a protocol needing a few windows reads little past them.
const DOCS_PER_BATCH: usize = 64;

/// Consecutive windows of `seq_len` tokens from the start of a data file.
pub struct TokenWindows {
    tokens: Vec<u32>,
    seq_len: usize,
}

impl TokenWindows {
    /// Tokenizes `documents` until `max_windows` windows are filled (all of them if None).
    pub fn from_documents(
        documents: Documents,
        tokenizer: &Tokenizer,
        seq_len: usize,
        max_windows: Option<usize>,
    ) -> Result<Self> {
        if seq_len < 2 {
            return Err(bad_input!(
                "--seq-len is {seq_len}; a window needs at least 2 tokens to predict one"
            ));
        }
        let path = documents.path().to_path_buf();
        let wanted = max_windows.map(|w| w.saturating_mul(seq_len));
        let mut tokens = Vec::new();
        let mut docs = 0usize;
        let mut documents = documents.peekable();
        while documents.peek().is_some() && wanted.is_none_or(|w| tokens.len() < w) {
            let batch: Vec<String> = documents.by_ref().take(DOCS_PER_BATCH).collect::<Result<_>>()?;
            docs += batch.len();
            for ids in tokenizer.encode_batch(batch.iter().map(String::as_str).collect())? {
                tokens.extend_from_slice(&ids);
                tokens.push(tokenizer.eos_id());
            }
        }
        if docs == 0 {
            return Err(bad_input!("data file {} has no documents", path.display()));
        }
        if tokens.len() < seq_len {
            return Err(bad_input!(
                "data file {} has {} tokens, fewer than one window of --seq-len {seq_len}; give more text or a smaller --seq-len",
                path.display(),
                tokens.len()
            ));
        }
        let windows = (tokens.len() / seq_len).min(max_windows.unwrap_or(usize::MAX));
        tokens.truncate(windows * seq_len);
        Ok(TokenWindows { tokens, seq_len })
    }

    /// Windows cut from a token stream (a trailing partial window is dropped).
    pub fn from_tokens(mut tokens: Vec<u32>, seq_len: usize) -> Self {
        tokens.truncate(tokens.len() / seq_len * seq_len);
        TokenWindows { tokens, seq_len }
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.tokens.len() / self.seq_len
    }

    /// Whether there are no windows (never true for a successfully built set).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Tokens per window.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Windows `start..start + count`, flattened row-major.
    pub fn batch(&self, start: usize, count: usize) -> &[u32] {
        &self.tokens[start * self.seq_len..(start + count) * self.seq_len]
    }
}
