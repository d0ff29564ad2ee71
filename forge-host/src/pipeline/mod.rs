//! `forge run`: the whole job from a recipe — baseline evaluation, then cycles of score → prune →
//! train → evaluate → merge → save, then the final compact model, samples and a report — with a memory
//! budget checked before any work, guard rails between cycles, and resume after an interruption.
mod budget;
mod provenance;
mod recipe;
mod report;
mod run;

pub use budget::{estimate, parse_size, Estimate};
pub use recipe::{Recipe, TrainSection};
pub use run::{run, CycleRecord, Metrics, RunOptions};
