//! `block-influence`: ShortGPT's Block Influence (Men et al., 2024), `1 − cos(input, output)` of each
//! layer's hidden states, averaged per token over the calibration windows. A layer that barely turns
//! the residual stream changes little when removed. Scores whole layers only: combine it with
//! `--pruner-opt layer-ratio=R`.
use forge_api::{HeadScores, ImportanceScorer, ScoringContext, StrategyError};

use crate::strategies::{Builtin, Factory};

struct BlockInfluence;

impl ImportanceScorer for BlockInfluence {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let layers =
            ctx.layer_cosines()?.into_iter().map(|row| row.iter().map(|c| 1.0 - c).collect()).collect();
        Ok(HeadScores { layers, ..HeadScores::default() })
    }
}

inventory::submit! {
    Builtin {
        name: "block-influence",
        description: "layers only: 1 - cos(layer input, layer output) on calibration windows from --data (ShortGPT)",
        options: Vec::new,
        factory: Factory::Scorer(|_| Ok(Box::new(BlockInfluence))),
    }
}
