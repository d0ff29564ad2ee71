//! Built-in importance scorers, one per file.
mod activation;
mod angular;
mod block_influence;
mod l2;
mod random;
mod taylor;

use forge_api::{HeadScores, ScoringContext, StrategyError, UnitKind};

use crate::strategies::Registry;
use crate::{bad_input, Result};

/// Replaces the layer scores in `scores` with those of the scorer `name` (`--layer-scorer`,
/// `score.layer_scorer`), run on the same probes. A first-order scorer such as `taylor` ranks a
/// layer by the gradient at its gate, which misses what removing it does: on tiny-qwen35 it ranked
/// layer 0 among the cheapest (0.032 against 0.148 for the last), and a 40% budget that removed it
/// left code-valid at 8,020. `block-influence` (1 − cos between a layer's input and output) ranks
/// that layer first (0.65, the next 0.23).
pub fn use_layer_scores_of(
    name: &str,
    registry: &Registry,
    probes: &mut dyn ScoringContext,
    scores: &mut HeadScores,
) -> Result<()> {
    let (scorer, _) = registry.scorer(name, &Default::default())?;
    let layers = scorer.score(probes)?.layers;
    if layers.is_empty() {
        return Err(bad_input!(
            "layer scorer `{name}` scores no layers; give one that does (block-influence, angular, taylor)"
        ));
    }
    scores.layers = layers;
    Ok(())
}

/// Scores of every kind the model has: `attention` rows, then each other kind from `score` (asked
/// after `attention`, so probes can share a pass).
fn all_kinds(
    ctx: &mut dyn ScoringContext,
    attention: Vec<Vec<f32>>,
    mut score: impl FnMut(&mut dyn ScoringContext, UnitKind) -> Result<Vec<Vec<f32>>, StrategyError>,
) -> Result<HeadScores, StrategyError> {
    let mut scores = HeadScores::attention(attention);
    for kind in [UnitKind::LinearHead, UnitKind::MlpChannel, UnitKind::Layer] {
        if ctx.geometry().total(kind) > 0 {
            *scores.of_mut(kind) = score(ctx, kind)?;
        }
    }
    Ok(scores)
}
