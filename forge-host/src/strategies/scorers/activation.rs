//! `activation`: how strongly each head writes — the mean L2 norm of its attention output (before
//! `o_proj`) per token over the calibration windows. A head that outputs little contributes little.
use forge_api::{HeadScores, ImportanceScorer, ScoringContext, StrategyError};

use crate::strategies::{Builtin, Factory};

struct Activation;

impl ImportanceScorer for Activation {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        Ok(HeadScores { scores: ctx.head_output_norms()? })
    }
}

inventory::submit! {
    Builtin {
        name: "activation",
        description: "mean norm of each head's attention output per token on calibration windows from --data",
        options: Vec::new,
        factory: Factory::Scorer(|_| Ok(Box::new(Activation))),
    }
}
