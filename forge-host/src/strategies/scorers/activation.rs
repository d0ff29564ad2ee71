//! `activation`: how strongly each head writes — the mean L2 norm, per token over the calibration
//! windows, of the head's attention output as it enters the residual stream (through its own `o_proj`
//! columns; a linear-attention value head's output through its `out_proj` columns; an MLP channel's
//! activation through its `down_proj` column; a layer's whole update, output minus input). A unit that
//! writes little contributes little.
//!
//! Output norms grow with depth (the residual stream does), so raw norms would make a global pruner
//! empty the first layers first. By default each layer's scores are divided by the layer's mean, which
//! ranks a head against its own layer's scale; `normalize=none` keeps raw norms. (A layer is alone in
//! its row: layers keep raw norms.)
use forge_api::{
    HeadScores, ImportanceScorer, OptionKind, OptionSpec, ScoringContext, StrategyError, UnitKind,
};

use crate::strategies::{Builtin, Factory};

struct Activation {
    per_layer_mean: bool,
}

impl ImportanceScorer for Activation {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let attention = ctx.head_output_norms()?;
        let mut scores = super::all_kinds(ctx, attention, |ctx, kind| match kind {
            UnitKind::LinearHead => ctx.linear_head_output_norms(),
            UnitKind::Layer => ctx.layer_output_norms(),
            _ => ctx.mlp_channel_output_norms(),
        })?;
        if self.per_layer_mean {
            for row in scores.scores.iter_mut().chain(&mut scores.linear).chain(&mut scores.mlp) {
                let mean = row.iter().sum::<f32>() / row.len().max(1) as f32;
                if mean > 0.0 {
                    row.iter_mut().for_each(|s| *s /= mean);
                }
            }
        }
        Ok(scores)
    }
}

inventory::submit! {
    Builtin {
        name: "activation",
        description: "mean norm of what each head writes to the residual stream, on calibration windows from --data",
        options: || vec![OptionSpec::new(
            "normalize",
            OptionKind::String,
            "layer-mean",
            "layer-mean divides each layer's scores by their mean (comparable across layers); none keeps raw norms",
        )],
        factory: Factory::Scorer(|o| match o.string("normalize") {
            "layer-mean" => Ok(Box::new(Activation { per_layer_mean: true })),
            "none" => Ok(Box::new(Activation { per_layer_mean: false })),
            other => Err(StrategyError::bad_input(format!(
                "option `normalize` of scorer `activation` is `{other}`; use layer-mean or none"
            ))),
        }),
    }
}
