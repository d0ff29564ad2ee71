//! forge's decoder layers: one implementation for Llama, Qwen2 and Qwen3, built like candle-nn (one
//! layer per file, builders taking a [`WeightScope`](crate::loader::WeightScope) whose prefixes mirror
//! the checkpoint keys) from ops that have a backward, so every part of it can be trained through.
pub mod attention;
pub mod causal_lm;
pub mod decoder_layer;
pub mod gated_deltanet;
pub mod kv_cache;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;

pub use causal_lm::{causal_lm, CausalLm};
pub use kv_cache::KvCache;
