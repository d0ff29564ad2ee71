use serde::{Deserialize, Serialize};

use crate::{ModelGeometry, StrategyError, UnitKind};

/// One importance score per head of each kind; higher means more important.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeadScores {
    /// `scores[layer][query head]` (an empty row in a layer without attention; no rows at all when
    /// the scorer scores no query heads, as a layer-only scorer does).
    pub scores: Vec<Vec<f32>>,
    /// `linear[layer][value head]` for a hybrid's linear-attention heads; empty when the scorer does
    /// not score them (a model without them, or a plugin built before they existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linear: Vec<Vec<f32>>,
    /// `mlp[layer][channel]` for MLP channels; empty when the scorer does not score them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mlp: Vec<Vec<f32>>,
    /// `layers[layer][0]` for whole layers; empty when the scorer does not score them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Vec<f32>>,
}

impl HeadScores {
    /// Scores of query heads only.
    pub fn attention(scores: Vec<Vec<f32>>) -> Self {
        HeadScores { scores, ..HeadScores::default() }
    }

    /// The rows of `kind`, to set.
    pub fn of_mut(&mut self, kind: UnitKind) -> &mut Vec<Vec<f32>> {
        match kind {
            UnitKind::QueryHead => &mut self.scores,
            UnitKind::LinearHead => &mut self.linear,
            UnitKind::MlpChannel => &mut self.mlp,
            UnitKind::Layer => &mut self.layers,
        }
    }

    /// The rows of `kind`; None when the scorer left that kind unscored.
    pub fn of(&self, kind: UnitKind) -> Option<&[Vec<f32>]> {
        match kind {
            UnitKind::QueryHead if self.scores.is_empty() => None,
            UnitKind::QueryHead => Some(&self.scores),
            UnitKind::LinearHead if self.linear.is_empty() => None,
            UnitKind::LinearHead => Some(&self.linear),
            UnitKind::MlpChannel if self.mlp.is_empty() => None,
            UnitKind::MlpChannel => Some(&self.mlp),
            UnitKind::Layer if self.layers.is_empty() => None,
            UnitKind::Layer => Some(&self.layers),
        }
    }

    /// Checks that there is a finite score for every head of `geometry` (of the linear-attention
    /// heads too, when they are scored).
    pub fn validate(&self, geometry: &ModelGeometry) -> Result<(), StrategyError> {
        for kind in UnitKind::ALL {
            let Some(rows) = self.of(kind) else { continue };
            let (counts, _) = geometry.of(kind);
            check_rows(rows, &counts, kind)?;
        }
        Ok(())
    }
}

fn check_rows(rows: &[Vec<f32>], counts: &[usize], kind: UnitKind) -> Result<(), StrategyError> {
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
