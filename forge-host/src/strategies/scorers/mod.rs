//! Built-in importance scorers, one per file.
mod activation;
mod angular;
mod block_influence;
mod l2;
mod random;
mod taylor;

use forge_api::{HeadScores, ScoringContext, StrategyError, UnitKind};

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
