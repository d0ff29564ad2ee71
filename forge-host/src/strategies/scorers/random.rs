//! `random`: uniform scores from a seed — the baseline every informed scorer must beat.
use forge_api::{
    HeadScores, ImportanceScorer, OptionKind, OptionSpec, ScoringContext, StrategyError, UnitKind,
};

use crate::strategies::{Builtin, Factory};
use forge_kernels::SplitMix64;

struct Random {
    seed: Option<u64>,
}

impl ImportanceScorer for Random {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let mut rng = SplitMix64::new(self.seed.unwrap_or(ctx.seed()));
        let mut draw = |counts: &[usize]| -> Vec<Vec<f32>> {
            counts.iter().map(|&h| (0..h).map(|_| rng.next_f64() as f32).collect()).collect()
        };
        let g = ctx.geometry();
        let mut scores = HeadScores::attention(draw(&g.heads));
        for kind in [UnitKind::LinearHead, UnitKind::MlpChannel, UnitKind::Layer] {
            if g.total(kind) > 0 {
                *scores.of_mut(kind) = draw(&g.of(kind).0);
            }
        }
        Ok(scores)
    }
}

inventory::submit! {
    Builtin {
        name: "random",
        description: "uniform random scores from a seed: the baseline to beat",
        options: || vec![OptionSpec::new("seed", OptionKind::Int, serde_json::Value::Null, "seed of the scores [default: the run's --seed]")],
        factory: Factory::Scorer(|o| Ok(Box::new(Random { seed: o.values()["seed"].as_u64() }))),
    }
}
