//! forge's stable contract: the types and traits every part of forge — the host, built-in strategies
//! and plugins — agree on. Nothing here depends on candle, so the contract does not move when the
//! tensor library does: strategies see the model through plain data (host `f32` buffers, shapes) and
//! through context traits the host implements.
//!
//! Five strategy kinds make up a run (see `DESIGN.md`): importance scorers, pruners, adapters,
//! optimizers and evaluators. Each strategy has a [`StrategyInfo`]: a unique name, a one-line
//! description and typed [`OptionSpec`]s with defaults, resolved into [`Options`] before it is built —
//! an option a strategy does not declare is an error, never silently ignored.
#![deny(missing_docs)]

mod adapter;
mod error;
mod evaluator;
mod geometry;
mod head_mask;
mod optimizer;
mod options;
pub mod plugin;
mod pruner;
mod scorer;
mod scores;
mod strategy;

pub use adapter::{AdapterKernel, LinearDims};
pub use error::StrategyError;
pub use evaluator::{EvalContext, EvalInput, Evaluator, Metrics};
pub use geometry::{ModelGeometry, UnitCosts, UnitKind};
pub use head_mask::{HeadMask, HeadMaskError};
pub use optimizer::{Optimizer, StateData, StateTensor};
pub use options::{OptionKind, OptionSpec, Options};
pub use pruner::{PruneTarget, Pruner, UnitSet};
pub use scorer::{HostTensor, ImportanceScorer, ScoringContext};
pub use scores::HeadScores;
pub use strategy::{StrategyInfo, StrategyKind};
