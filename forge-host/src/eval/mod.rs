//! Evaluation of a model on data.
mod perplexity;

pub use perplexity::{perplexity, rows_nll, PerplexityReport};
