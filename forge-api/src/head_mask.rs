use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ModelGeometry, UnitKind};

/// Which units are removed, per layer: the content of a mask file,
/// `{"pruned": {"<layer>": [<query head>, ...]}, "pruned_linear_heads": {"<layer>": [<value head>, ...]},
/// "pruned_mlp_channels": {"<layer>": [<channel>, ...]}, "pruned_layers": [<layer>, ...]}`. Layers with
/// nothing pruned may be absent, and so may the keys beside `pruned`. A pruned unit's output never
/// reaches `o_proj` (query heads), `out_proj` (linear-attention value heads), `down_proj` (MLP
/// channels) or the residual stream (layers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadMask {
    /// Layer index → pruned query heads of that layer, sorted and unique once validated.
    pub pruned: BTreeMap<usize, Vec<usize>>,
    /// Layer index → pruned linear-attention value heads of that layer (Qwen3.5's Gated DeltaNet).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pruned_linear_heads: BTreeMap<usize, Vec<usize>>,
    /// Layer index → pruned MLP channels of that layer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pruned_mlp_channels: BTreeMap<usize, Vec<usize>>,
    /// Whole layers removed, written as a list (`"pruned_layers": [3, 5]`); held as layer → `[0]`,
    /// the one unit of a layer, so every kind reads alike.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "layer_list")]
    pub pruned_layers: BTreeMap<usize, Vec<usize>>,
}

/// `pruned_layers` as the mask file writes it: a list of layers.
mod layer_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(layers: &BTreeMap<usize, Vec<usize>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(layers.keys())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<usize, Vec<usize>>, D::Error> {
        let list = Vec::<usize>::deserialize(d)?;
        let mut layers = BTreeMap::new();
        for layer in list {
            if layers.insert(layer, vec![0]).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "layer {layer} is listed twice in `pruned_layers`"
                )));
            }
        }
        Ok(layers)
    }
}

/// Why a mask does not fit a model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadMaskError {
    /// The mask text is not a valid mask file.
    #[error(
        "not a mask file ({0}); expected {{\"pruned\": {{\"<layer>\": [<head>, ...]}}}}, optionally with \
         \"pruned_linear_heads\" of the same form"
    )]
    Parse(String),
    /// The mask names a layer the model does not have.
    #[error("layer {layer} does not exist: the model has layers 0..={last}")]
    NoSuchLayer {
        /// The layer named by the mask.
        layer: usize,
        /// The model's last layer.
        last: usize,
    },
    /// The mask names a layer without heads of that kind.
    #[error("layer {layer} has no {}s, but `{}` names it", kind.noun(), kind.mask_key())]
    NoHeadsOfKind {
        /// The layer.
        layer: usize,
        /// The kind of head the mask names there.
        kind: UnitKind,
    },
    /// The mask names a head the layer does not have.
    #[error("{} {head} of layer {layer} does not exist: that layer has {}s 0..={last}", kind.noun(), kind.noun())]
    NoSuchHead {
        /// The layer.
        layer: usize,
        /// The head named by the mask.
        head: usize,
        /// The layer's last head of that kind.
        last: usize,
        /// The kind of head.
        kind: UnitKind,
    },
    /// The mask names a head twice.
    #[error("{} {head} of layer {layer} is listed twice", kind.noun())]
    Duplicate {
        /// The layer.
        layer: usize,
        /// The repeated head.
        head: usize,
        /// The kind of head.
        kind: UnitKind,
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

    /// Checks every layer and head of both kinds against the model, so a mask never silently misses
    /// its target.
    pub fn validate(&self, geometry: &ModelGeometry) -> Result<(), HeadMaskError> {
        for kind in UnitKind::ALL {
            let (counts, _) = geometry.of(kind);
            for (&layer, heads) in self.of(kind) {
                let Some(&count) = counts.get(layer) else {
                    return Err(HeadMaskError::NoSuchLayer {
                        layer,
                        last: geometry.layers.saturating_sub(1),
                    });
                };
                if count == 0 && !heads.is_empty() {
                    return Err(HeadMaskError::NoHeadsOfKind { layer, kind });
                }
                let mut seen = vec![false; count];
                for &head in heads {
                    match seen.get_mut(head) {
                        None => return Err(HeadMaskError::NoSuchHead { layer, head, last: count - 1, kind }),
                        Some(true) => return Err(HeadMaskError::Duplicate { layer, head, kind }),
                        Some(s) => *s = true,
                    }
                }
            }
        }
        Ok(())
    }

    /// The pruned heads of `kind`, by layer.
    pub fn of(&self, kind: UnitKind) -> &BTreeMap<usize, Vec<usize>> {
        match kind {
            UnitKind::QueryHead => &self.pruned,
            UnitKind::LinearHead => &self.pruned_linear_heads,
            UnitKind::MlpChannel => &self.pruned_mlp_channels,
            UnitKind::Layer => &self.pruned_layers,
        }
    }

    /// The pruned heads of `kind`, by layer, to change.
    pub fn of_mut(&mut self, kind: UnitKind) -> &mut BTreeMap<usize, Vec<usize>> {
        match kind {
            UnitKind::QueryHead => &mut self.pruned,
            UnitKind::LinearHead => &mut self.pruned_linear_heads,
            UnitKind::MlpChannel => &mut self.pruned_mlp_channels,
            UnitKind::Layer => &mut self.pruned_layers,
        }
    }

    /// Pruned query heads of one layer (empty when the layer is untouched).
    pub fn pruned_in(&self, layer: usize) -> &[usize] {
        self.pruned_of(UnitKind::QueryHead, layer)
    }

    /// Pruned heads of `kind` in one layer (empty when none).
    pub fn pruned_of(&self, kind: UnitKind, layer: usize) -> &[usize] {
        self.of(kind).get(&layer).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of pruned query heads over all layers.
    pub fn count(&self) -> usize {
        self.count_of(UnitKind::QueryHead)
    }

    /// Number of pruned heads of `kind` over all layers.
    pub fn count_of(&self, kind: UnitKind) -> usize {
        self.of(kind).values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> ModelGeometry {
        ModelGeometry::uniform(2, 4, 2, 8, 32)
    }

    /// Layer 0 attends (4 query heads), layer 1 is Gated DeltaNet (6 value heads, 3 key heads).
    fn hybrid() -> ModelGeometry {
        ModelGeometry {
            heads: vec![4, 0],
            kv_heads: vec![2, 0],
            linear_heads: vec![0, 6],
            linear_key_heads: vec![0, 3],
            ..geometry()
        }
    }

    #[test]
    fn round_trips_through_json() {
        let mask = HeadMask::from_json(r#"{"pruned": {"0": [1, 3], "1": [0]}}"#).unwrap();
        assert_eq!(mask.pruned_in(0), &[1, 3]);
        assert_eq!(mask.count(), 3);
        assert_eq!(HeadMask::from_json(&mask.to_json()).unwrap(), mask);
        assert!(!mask.to_json().contains("pruned_linear_heads"), "an attention-only mask keeps its old form");
        mask.validate(&geometry()).unwrap();
    }

    #[test]
    fn carries_linear_heads_beside_query_heads() {
        let mask =
            HeadMask::from_json(r#"{"pruned": {"0": [2]}, "pruned_linear_heads": {"1": [0, 5]}}"#).unwrap();
        mask.validate(&hybrid()).unwrap();
        assert_eq!(mask.pruned_of(UnitKind::LinearHead, 1), &[0, 5]);
        assert_eq!((mask.count(), mask.count_of(UnitKind::LinearHead)), (1, 2));
        assert_eq!(HeadMask::from_json(&mask.to_json()).unwrap(), mask);
    }

    #[test]
    fn names_the_layer_or_head_that_does_not_exist() {
        let err = |text: &str, g: &ModelGeometry| HeadMask::from_json(text).unwrap().validate(g).unwrap_err();
        assert_eq!(
            err(r#"{"pruned": {"2": [0]}}"#, &geometry()).to_string(),
            "layer 2 does not exist: the model has layers 0..=1"
        );
        assert_eq!(
            err(r#"{"pruned": {"1": [4]}}"#, &geometry()).to_string(),
            "query head 4 of layer 1 does not exist: that layer has query heads 0..=3"
        );
        let twice = err(r#"{"pruned": {"1": [2, 2]}}"#, &geometry());
        assert!(matches!(twice, HeadMaskError::Duplicate { layer: 1, head: 2, kind: UnitKind::QueryHead }));
        assert_eq!(
            err(r#"{"pruned": {}, "pruned_linear_heads": {"0": [1]}}"#, &hybrid()).to_string(),
            "layer 0 has no linear-attention value heads, but `pruned_linear_heads` names it"
        );
        assert_eq!(
            err(r#"{"pruned": {}, "pruned_linear_heads": {"1": [6]}}"#, &hybrid()).to_string(),
            "linear-attention value head 6 of layer 1 does not exist: that layer has linear-attention value heads 0..=5"
        );
        assert_eq!(
            err(r#"{"pruned": {"1": [0]}}"#, &hybrid()).to_string(),
            "layer 1 has no query heads, but `pruned` names it"
        );
    }

    #[test]
    fn writes_removed_layers_as_a_list() {
        let mask = HeadMask::from_json(r#"{"pruned": {}, "pruned_layers": [1, 0]}"#).unwrap();
        mask.validate(&geometry()).unwrap();
        assert_eq!(mask.pruned_of(UnitKind::Layer, 1), &[0]);
        assert!(mask.to_json().contains("\"pruned_layers\": [\n    0,\n    1\n  ]"), "{}", mask.to_json());
        assert_eq!(HeadMask::from_json(&mask.to_json()).unwrap(), mask);
        let err =
            HeadMask::from_json(r#"{"pruned": {}, "pruned_layers": [2]}"#).unwrap().validate(&geometry());
        assert_eq!(err.unwrap_err().to_string(), "layer 2 does not exist: the model has layers 0..=1");
        assert!(HeadMask::from_json(r#"{"pruned": {}, "pruned_layers": [1, 1]}"#).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_mask_file() {
        assert!(matches!(HeadMask::from_json(r#"{"heads": {}}"#), Err(HeadMaskError::Parse(_))));
        assert!(matches!(HeadMask::from_json(r#"{"pruned": {"x": [0]}}"#), Err(HeadMaskError::Parse(_))));
    }
}
