//! Strategies chosen by name. Built-ins register themselves with `inventory::submit!` (one strategy
//! per file, beside its implementation); the [`Registry`] collects them, and nothing selects a
//! strategy by matching on its name.
pub mod adapters;
pub mod evaluators;
mod optimizers;
mod plugins;
mod probes;
pub mod pruners;
mod registry;
pub mod scorers;

pub use optimizers::{checks as optimizer_checks, TrainOptimizer};
pub use plugins::{plugin_paths, PLUGIN_PATH_VAR};
pub use probes::ModelProbes;
pub use registry::{Builtin, Entry, Factory, Registry};
