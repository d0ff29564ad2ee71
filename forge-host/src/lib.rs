//! forge: find the attention heads that matter for a domain, remove the rest, recover with adapters,
//! and write a smaller model — on Candle, CPU or CUDA.
//!
//! The modules follow the flow of work: [`data`] → [`tokenizer`] → [`model`] → [`eval`] and
//! [`generate`] → [`cli`], with [`runtime`] for devices and memory.
pub mod cli;
pub mod data;
mod error;
pub mod eval;
pub mod generate;
pub mod model;
pub mod outputs;
pub mod pipeline;
mod progress;
pub mod runtime;
pub mod strategies;
pub mod tokenizer;
pub mod training;

pub use error::{Error, Result};
