use serde::{Deserialize, Serialize};

use crate::{ModelGeometry, StrategyError};

/// One importance score per (layer, query head); higher means more important.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadScores {
    /// `scores[layer][head]`.
    pub scores: Vec<Vec<f32>>,
}

impl HeadScores {
    /// Checks that there is a finite score for every head of `geometry`.
    pub fn validate(&self, geometry: &ModelGeometry) -> Result<(), StrategyError> {
        if self.scores.len() != geometry.layers {
            return Err(StrategyError::bad_input(format!(
                "scores cover {} layers; the model has {}",
                self.scores.len(),
                geometry.layers
            )));
        }
        for (layer, (row, &heads)) in self.scores.iter().zip(&geometry.heads).enumerate() {
            if row.len() != heads {
                return Err(StrategyError::bad_input(format!(
                    "scores of layer {layer} cover {} heads; the layer has {heads}",
                    row.len()
                )));
            }
            if let Some(head) = row.iter().position(|s| !s.is_finite()) {
                return Err(StrategyError::bad_input(format!(
                    "score of layer {layer} head {head} is not finite"
                )));
            }
        }
        Ok(())
    }
}
