//! `per-layer`: the same number of heads of a kind from every layer of that kind (its lowest-scored
//! ones), so the pruned model keeps a uniform shape and a standard `config.json`. Whole layers, one
//! unit each, are ranked across the model.
use forge_api::{HeadMask, HeadScores, ModelGeometry, PruneTarget, Pruner, StrategyError, UnitKind};

use super::{constraint_options, select, Constraints, KindView};
use crate::strategies::{Builtin, Factory};

struct PerLayer(Constraints);

impl Pruner for PerLayer {
    fn prune(
        &self,
        scores: &HeadScores,
        geometry: &ModelGeometry,
        target: PruneTarget,
    ) -> Result<HeadMask, StrategyError> {
        scores.validate(geometry)?;
        Constraints::shares_only(target, "per-layer")?;
        let mut mask = HeadMask::default();
        for kind in UnitKind::ALL {
            let Some(target) = self.0.target(kind, target, geometry) else { continue };
            let view = KindView::of(kind, scores, geometry)?;
            if kind == UnitKind::Layer {
                // One unit per layer: there is no per-layer count to keep even, so layers are
                // ranked across the model.
                let units = view.units(0..geometry.layers, false);
                *mask.of_mut(kind) = select(&view, units, target.heads(geometry.layers), 0)?;
                continue;
            }
            let layers = view.layers();
            let per_layer = match target {
                PruneTarget::Ratio(r) => {
                    (r * layers.iter().map(|&l| view.heads[l]).min().unwrap_or(0) as f64).round() as usize
                }
                PruneTarget::Count(n) if n % layers.len() == 0 => n / layers.len(),
                PruneTarget::Params { .. } => unreachable!("refused above"),
                PruneTarget::Count(n) => {
                    return Err(StrategyError::bad_input(format!(
                        "per-layer pruning removes the same number from each of the {} layers; --count {n} is not a multiple of {}",
                        layers.len(),
                        layers.len()
                    )))
                }
            };
            for layer in layers {
                let units = view.units(layer..layer + 1, self.0.whole_groups);
                mask.of_mut(kind).extend(select(&view, units, per_layer, self.0.min_per_layer)?);
            }
        }
        Ok(mask)
    }
}

inventory::submit! {
    Builtin {
        name: "per-layer",
        description: "remove the same number of lowest-scored heads of a kind from every layer (keeps a uniform shape)",
        options: constraint_options,
        factory: Factory::Pruner(|o| Ok(Box::new(PerLayer(Constraints::from_options(o)?)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_same_count_from_each_layer() {
        let geometry = ModelGeometry::uniform(2, 4, 2, 4, 16);
        let scores = HeadScores::attention(vec![vec![0.1, 0.2, 0.3, 0.4], vec![9.0, 0.5, 7.0, 8.0]]);
        let per_layer = PerLayer(Constraints {
            min_per_layer: 1,
            whole_groups: false,
            linear_ratio: -1.0,
            mlp_ratio: 0.0,
            layer_ratio: 0.0,
        });
        let mask = per_layer.prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!(mask.pruned_in(0), &[0, 1]);
        assert_eq!(mask.pruned_in(1), &[1, 2]);
        let err = per_layer.prune(&scores, &geometry, PruneTarget::Count(3)).unwrap_err();
        assert!(err.to_string().contains("--count 3 is not a multiple of 2"));
    }

    #[test]
    fn linear_heads_go_evenly_from_every_linear_layer() {
        let geometry = ModelGeometry {
            heads: vec![0, 2],
            kv_heads: vec![0, 1],
            linear_heads: vec![4, 0],
            linear_key_heads: vec![2, 0],
            mlp_channels: vec![4, 4],
            ..ModelGeometry::uniform(2, 0, 0, 4, 16)
        };
        let scores = HeadScores {
            scores: vec![vec![], vec![1.0, 2.0]],
            linear: vec![vec![3.0, 1.0, 2.0, 4.0], vec![]],
            mlp: vec![vec![0.5, 0.1, 0.9, 0.2], vec![7.0, 8.0, 6.0, 9.0]],
            layers: vec![vec![3.0], vec![1.0]],
        };
        let constraints = |mlp_ratio| Constraints {
            min_per_layer: 1,
            whole_groups: false,
            linear_ratio: 0.5,
            mlp_ratio,
            layer_ratio: 0.0,
        };
        let mask = PerLayer(constraints(0.0)).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!(mask.pruned_in(1), &[0]);
        assert_eq!(mask.pruned_of(UnitKind::LinearHead, 0), &[1, 2]);
        assert!(mask.pruned_mlp_channels.is_empty(), "MLP channels go only when mlp-ratio asks");
        // Half of each layer's channels, its own lowest: scale differs between layers, counts do not.
        let mask = PerLayer(constraints(0.5)).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!(mask.pruned_of(UnitKind::MlpChannel, 0), &[1, 3]);
        assert_eq!(mask.pruned_of(UnitKind::MlpChannel, 1), &[0, 2]);
        // Whole layers rank across the model (one unit each); a model keeps at least one.
        let layers = |layer_ratio| Constraints { layer_ratio, ..constraints(0.0) };
        let mask = PerLayer(layers(0.5)).prune(&scores, &geometry, PruneTarget::Count(0)).unwrap();
        assert_eq!(mask.pruned_layers.keys().collect::<Vec<_>>(), [&1]);
        let err = PerLayer(layers(0.9)).prune(&scores, &geometry, PruneTarget::Count(0)).unwrap_err();
        assert!(err.to_string().contains("leaves none"), "{err}");
    }
}
