//! `angular`: the angular distance of each layer, `arccos(cos(input, output)) / π` (Gromov et al.,
//! 2024, "The Unreasonable Ineffectiveness of the Deeper Layers", for one layer), from the mean cosine
//! over the calibration windows. Orders layers as `block-influence` does on a scale linear in the
//! angle. Scores whole layers only.
use forge_api::{HeadScores, ImportanceScorer, ScoringContext, StrategyError};

use crate::strategies::{Builtin, Factory};

struct Angular;

impl ImportanceScorer for Angular {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let angle = |c: &f32| c.clamp(-1.0, 1.0).acos() / std::f32::consts::PI;
        let layers = ctx.layer_cosines()?.into_iter().map(|row| row.iter().map(angle).collect()).collect();
        Ok(HeadScores { layers, ..HeadScores::default() })
    }
}

inventory::submit! {
    Builtin {
        name: "angular",
        description: "layers only: angular distance arccos(cos(layer input, output)) / pi on calibration windows from --data",
        options: Vec::new,
        factory: Factory::Scorer(|_| Ok(Box::new(Angular))),
    }
}
