use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ModelGeometry;

/// Which query heads are removed, per layer: the content of a mask file,
/// `{"pruned": {"<layer>": [<query head>, ...], ...}}`. Layers with nothing pruned may be absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadMask {
    /// Layer index → pruned query heads of that layer, sorted and unique once validated.
    pub pruned: BTreeMap<usize, Vec<usize>>,
}

/// Why a mask does not fit a model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadMaskError {
    /// The mask text is not a valid mask file.
    #[error("not a mask file ({0}); expected {{\"pruned\": {{\"<layer>\": [<head>, ...]}}}}")]
    Parse(String),
    /// The mask names a layer the model does not have.
    #[error("layer {layer} does not exist: the model has layers 0..={last}")]
    NoSuchLayer {
        /// The layer named by the mask.
        layer: usize,
        /// The model's last layer.
        last: usize,
    },
    /// The mask names a head the layer does not have.
    #[error("head {head} of layer {layer} does not exist: that layer has heads 0..={last}")]
    NoSuchHead {
        /// The layer.
        layer: usize,
        /// The head named by the mask.
        head: usize,
        /// The layer's last head.
        last: usize,
    },
    /// The mask names a head twice.
    #[error("head {head} of layer {layer} is listed twice")]
    Duplicate {
        /// The layer.
        layer: usize,
        /// The repeated head.
        head: usize,
    },
}

impl HeadMask {
    /// Parses a mask file's text; call [`HeadMask::validate`] before using it on a model.
    pub fn from_json(text: &str) -> Result<Self, HeadMaskError> {
        serde_json::from_str(text).map_err(|e| HeadMaskError::Parse(e.to_string()))
    }

    /// The mask file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a map of integers always serialises")
    }

    /// Checks every layer and head against the model, so a mask never silently misses its target.
    pub fn validate(&self, geometry: &ModelGeometry) -> Result<(), HeadMaskError> {
        for (&layer, heads) in &self.pruned {
            let Some(&count) = geometry.heads.get(layer) else {
                return Err(HeadMaskError::NoSuchLayer { layer, last: geometry.layers.saturating_sub(1) });
            };
            let mut seen = vec![false; count];
            for &head in heads {
                match seen.get_mut(head) {
                    None => {
                        return Err(HeadMaskError::NoSuchHead { layer, head, last: count.saturating_sub(1) })
                    }
                    Some(true) => return Err(HeadMaskError::Duplicate { layer, head }),
                    Some(s) => *s = true,
                }
            }
        }
        Ok(())
    }

    /// Pruned heads of one layer (empty when the layer is untouched).
    pub fn pruned_in(&self, layer: usize) -> &[usize] {
        self.pruned.get(&layer).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of pruned heads over all layers.
    pub fn count(&self) -> usize {
        self.pruned.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> ModelGeometry {
        ModelGeometry::uniform(2, 4, 2, 8, 32)
    }

    #[test]
    fn round_trips_through_json() {
        let mask = HeadMask::from_json(r#"{"pruned": {"0": [1, 3], "1": [0]}}"#).unwrap();
        assert_eq!(mask.pruned_in(0), &[1, 3]);
        assert_eq!(mask.count(), 3);
        assert_eq!(HeadMask::from_json(&mask.to_json()).unwrap(), mask);
        mask.validate(&geometry()).unwrap();
    }

    #[test]
    fn names_the_layer_or_head_that_does_not_exist() {
        let bad_layer = HeadMask::from_json(r#"{"pruned": {"2": [0]}}"#).unwrap();
        assert_eq!(
            bad_layer.validate(&geometry()).unwrap_err().to_string(),
            "layer 2 does not exist: the model has layers 0..=1"
        );
        let bad_head = HeadMask::from_json(r#"{"pruned": {"1": [4]}}"#).unwrap();
        assert_eq!(
            bad_head.validate(&geometry()).unwrap_err().to_string(),
            "head 4 of layer 1 does not exist: that layer has heads 0..=3"
        );
        let twice = HeadMask::from_json(r#"{"pruned": {"1": [2, 2]}}"#).unwrap();
        assert!(matches!(twice.validate(&geometry()), Err(HeadMaskError::Duplicate { layer: 1, head: 2 })));
    }

    #[test]
    fn refuses_what_is_not_a_mask_file() {
        assert!(matches!(HeadMask::from_json(r#"{"heads": {}}"#), Err(HeadMaskError::Parse(_))));
        assert!(matches!(HeadMask::from_json(r#"{"pruned": {"x": [0]}}"#), Err(HeadMaskError::Parse(_))));
    }
}
