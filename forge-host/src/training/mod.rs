//! Training adapters: the loop (batches, accumulation, clipping, schedule) and gradients with or
//! without per-layer recomputation.
mod checkpoint;
mod schedule;
mod trainer;

pub use checkpoint::loss_and_grads;
pub use schedule::learning_rate;
pub use trainer::{train, TrainConfig, TrainReport};
