//! `forge run`: the whole job from a recipe — baseline evaluation, then cycles of score → prune →
//! train → evaluate → merge → save, then the final compact model, samples and a report — with every
//! input and the memory budget checked before any work, guard rails between cycles (against the cycle
//! before and the baseline), and resume after an interruption.
mod budget;
mod context;
mod cycle;
mod provenance;
mod recipe;
mod record;
mod report;
mod run;

pub use budget::{estimate, eval_estimate, human, parse_size, Estimate};
pub use context::RunOptions;
pub use recipe::{Recipe, TrainSection, TrainState};
pub use record::{CycleRecord, RunReport};
pub use run::{check_budget, open_and_estimate};
pub use run::{kept_in, run};
