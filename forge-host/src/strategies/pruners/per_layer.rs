//! `per-layer`: the same number of heads from every layer (its lowest-scored ones), so the pruned
//! model keeps a uniform shape and a standard `config.json`.
use forge_api::{HeadMask, HeadScores, ModelGeometry, PruneTarget, Pruner, StrategyError};

use super::{constraint_options, select, units, Constraints};
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
        let attending = geometry.attending_layers();
        let layers = attending.len();
        let per_layer = match target {
            PruneTarget::Ratio(r) => {
                (r * attending.iter().map(|&l| geometry.heads[l]).min().unwrap_or(0) as f64).round() as usize
            }
            PruneTarget::Count(n) if n % layers == 0 => n / layers,
            PruneTarget::Count(n) => {
                return Err(StrategyError::bad_input(format!(
                    "per-layer pruning removes the same number from each of the {layers} layers; --count {n} is not a multiple of {layers}"
                )))
            }
        };
        let mut mask = HeadMask::default();
        for layer in attending {
            let units = units(scores, geometry, layer..layer + 1, self.0.whole_groups);
            let one = select(units, &geometry.heads, per_layer, self.0.min_per_layer)?;
            mask.pruned.extend(one.pruned);
        }
        Ok(mask)
    }
}

inventory::submit! {
    Builtin {
        name: "per-layer",
        description: "remove the same number of lowest-scored heads from every layer (keeps a uniform shape)",
        options: constraint_options,
        factory: Factory::Pruner(|o| Ok(Box::new(PerLayer(Constraints::from_options(o))))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_same_count_from_each_layer() {
        let geometry = ModelGeometry::uniform(2, 4, 2, 4, 16);
        let scores = HeadScores { scores: vec![vec![0.1, 0.2, 0.3, 0.4], vec![9.0, 0.5, 7.0, 8.0]] };
        let per_layer = PerLayer(Constraints { min_per_layer: 1, whole_groups: false });
        let mask = per_layer.prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!(mask.pruned_in(0), &[0, 1]);
        assert_eq!(mask.pruned_in(1), &[1, 2]);
        let err = per_layer.prune(&scores, &geometry, PruneTarget::Count(3)).unwrap_err();
        assert!(err.to_string().contains("--count 3 is not a multiple of 2"));
    }
}
