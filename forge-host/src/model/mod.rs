//! forge's decoder: one implementation for Llama, Qwen2 and Qwen3, built like candle-nn (one layer per
//! file, builders taking a [`WeightScope`] whose prefixes mirror the checkpoint keys) but only from ops
//! that have a backward, so every part of it can be trained through.
pub mod attention;
pub mod causal_attention;
pub mod causal_lm;
pub mod causal_softmax;
pub mod config;
#[cfg(feature = "cuda")]
mod cuda_kernels;
pub mod custom_grad;
pub mod decoder_layer;
mod folder;
pub mod frozen_matmul;
pub mod kv_cache;
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod scope;
pub mod weights;

pub use causal_lm::{causal_lm, CausalLm};
pub use config::{Architecture, ModelConfig};
pub use folder::ModelFolder;
pub use kv_cache::KvCache;
pub use scope::WeightScope;
pub use weights::WeightStore;
