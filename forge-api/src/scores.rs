use serde::{Deserialize, Serialize};

use crate::{HeadKind, ModelGeometry, StrategyError};

/// One importance score per head of each kind; higher means more important.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeadScores {
    /// `scores[layer][query head]` (an empty row in a layer without attention).
    pub scores: Vec<Vec<f32>>,
    /// `linear[layer][value head]` for a hybrid's linear-attention heads; empty when the scorer does
    /// not score them (a model without them, or a plugin built before they existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linear: Vec<Vec<f32>>,
}

impl HeadScores {
    /// Scores of query heads only.
    pub fn attention(scores: Vec<Vec<f32>>) -> Self {
        HeadScores { scores, linear: Vec::new() }
    }

    /// The rows of `kind`; None when the scorer left that kind unscored.
    pub fn of(&self, kind: HeadKind) -> Option<&[Vec<f32>]> {
        match kind {
            HeadKind::Attention => Some(&self.scores),
            HeadKind::Linear if self.linear.is_empty() => None,
            HeadKind::Linear => Some(&self.linear),
        }
    }

    /// Checks that there is a finite score for every head of `geometry` (of the linear-attention
    /// heads too, when they are scored).
    pub fn validate(&self, geometry: &ModelGeometry) -> Result<(), StrategyError> {
        for kind in HeadKind::ALL {
            let Some(rows) = self.of(kind) else { continue };
            let (counts, _) = geometry.of(kind);
            check_rows(rows, &counts, kind)?;
        }
        Ok(())
    }
}

fn check_rows(rows: &[Vec<f32>], counts: &[usize], kind: HeadKind) -> Result<(), StrategyError> {
    let noun = kind.noun();
    if rows.len() != counts.len() {
        return Err(StrategyError::bad_input(format!(
            "{noun} scores cover {} layers; the model has {}",
            rows.len(),
            counts.len()
        )));
    }
    for (layer, (row, &heads)) in rows.iter().zip(counts).enumerate() {
        if row.len() != heads {
            return Err(StrategyError::bad_input(format!(
                "scores of layer {layer} cover {} {noun}s; the layer has {heads}",
                row.len()
            )));
        }
        if let Some(head) = row.iter().position(|s| !s.is_finite()) {
            return Err(StrategyError::bad_input(format!(
                "score of layer {layer} {noun} {head} is not finite"
            )));
        }
    }
    Ok(())
}
