//! Built-in importance scorers, one per file.
mod activation;
mod l2;
mod random;
mod taylor;

use forge_api::{HeadScores, ScoringContext, StrategyError};

/// Scores of both kinds: `attention` rows, beside the linear-attention rows `linear` gives when the
/// model has linear-attention heads (asked after `attention`, so probes can share a pass).
fn both_kinds(
    ctx: &mut dyn ScoringContext,
    attention: Vec<Vec<f32>>,
    linear: impl FnOnce(&mut dyn ScoringContext) -> Result<Vec<Vec<f32>>, StrategyError>,
) -> Result<HeadScores, StrategyError> {
    let linear = if ctx.geometry().total_linear_heads() > 0 { linear(ctx)? } else { Vec::new() };
    Ok(HeadScores { scores: attention, linear })
}
