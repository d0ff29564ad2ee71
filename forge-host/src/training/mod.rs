//! Training adapters: the loop (batches, accumulation, clipping, schedule), gradients with or without
//! per-layer recomputation, and the switch that runs a forward pass without building a graph.
mod checkpoint;
mod grad_mode;
mod schedule;
mod trainer;

pub use checkpoint::loss_and_grads;
pub use grad_mode::{grad_enabled, no_grad};
pub use schedule::learning_rate;
pub use trainer::{train, TrainConfig, TrainReport};
