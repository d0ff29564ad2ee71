//! forge: find the attention heads that matter for a domain, remove the rest, recover with adapters,
//! and write a smaller model — on Candle, CPU or CUDA.
//!
//! The modules follow the flow of work: [`data`] → [`tokenizer`] → [`loader`] → [`model`] (layers,
//! on [`autograd`] and the fused ops of `forge-kernels`) → [`strategies`] → [`training`] → [`eval`]
//! and [`generate`] → [`pipeline`] → [`outputs`], driven by [`cli`] or by the [`worker`] of `forge serve` (which follows runs through [`events`]);
//! [`runtime`] for devices and memory.
pub mod autograd;
pub mod cli;
pub mod data;
pub mod defaults;
mod error;
pub mod eval;
pub mod events;
pub mod generate;
pub mod loader;
pub mod model;
pub mod outputs;
pub mod pipeline;
mod progress;
pub mod runtime;
pub mod strategies;
pub mod tokenizer;
pub mod training;
pub mod worker;

pub use error::{Error, Result};
