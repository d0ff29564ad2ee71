//! Training adapters: the loop (batches, accumulation, clipping, schedule, stopping and resuming),
//! gradients with or without per-layer recomputation, data-parallel ranks, and the optimizer's state
//! on disk.
mod checkpoint;
pub mod checks;
mod comm;
mod nccl;
mod ranks;
mod schedule;
mod state;
mod teacher;
mod trainer;

pub use checkpoint::{loss_and_grads, Backprop, Distill, LossParts};
pub use comm::{Communicator, LocalGroup, LocalRank};
pub use ranks::{check_devices, gpu_ranks, launch, RankOuts, RankSpec};
pub use schedule::learning_rate;
pub use state::{load_optimizer_state, save_optimizer_state, OPTIMIZER_STATE_FILE};
pub use teacher::load_teacher;
pub use trainer::{
    train, train_from, DistillReport, OnStop, TrainConfig, TrainInputs, TrainProgress, TrainReport,
};
