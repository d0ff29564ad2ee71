use serde::Serialize;

use crate::OptionSpec;

/// The five kinds of strategy a run is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    /// Scores each (layer, query head) by importance.
    Scorer,
    /// Turns scores into a head mask under a target and constraints.
    Pruner,
    /// Adds trainable parameters to linear layers.
    Adapter,
    /// Updates trainable parameters from their gradients.
    Optimizer,
    /// Measures a model and returns named metrics.
    Evaluator,
}

impl StrategyKind {
    /// Every kind, in the order `forge list` shows them.
    pub const ALL: [StrategyKind; 5] = [
        StrategyKind::Scorer,
        StrategyKind::Pruner,
        StrategyKind::Adapter,
        StrategyKind::Optimizer,
        StrategyKind::Evaluator,
    ];

    /// The kind's name in messages (`scorer`).
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Scorer => "scorer",
            StrategyKind::Pruner => "pruner",
            StrategyKind::Adapter => "adapter",
            StrategyKind::Optimizer => "optimizer",
            StrategyKind::Evaluator => "evaluator",
        }
    }

    /// The key of this kind's list in `forge list --json` (`scorers`).
    pub fn plural(self) -> &'static str {
        match self {
            StrategyKind::Scorer => "scorers",
            StrategyKind::Pruner => "pruners",
            StrategyKind::Adapter => "adapters",
            StrategyKind::Optimizer => "optimizers",
            StrategyKind::Evaluator => "evaluators",
        }
    }
}

/// What a strategy is: shown by `forge list`, and the schema its options are checked against.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrategyInfo {
    /// Which kind it is.
    #[serde(skip)]
    pub kind: StrategyKind,
    /// Unique within its kind: lower case, digits and `-` (`per-layer`).
    pub name: String,
    /// One line saying what it does.
    pub description: String,
    /// The options it takes, with defaults.
    pub options: Vec<OptionSpec>,
}

impl StrategyInfo {
    /// Whether `name` is a well-formed strategy name: non-empty, `[a-z0-9-]`, starting with a letter.
    pub fn is_valid_name(name: &str) -> bool {
        name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }
}
