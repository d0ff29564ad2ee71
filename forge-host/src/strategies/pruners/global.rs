//! `global`: the lowest-scored heads across the whole model, so layers that matter less lose more.
use forge_api::{HeadMask, HeadScores, ModelGeometry, PruneTarget, Pruner, StrategyError};

use super::{constraint_options, select, units, Constraints};
use crate::strategies::{Builtin, Factory};

struct Global(Constraints);

impl Pruner for Global {
    fn prune(
        &self,
        scores: &HeadScores,
        geometry: &ModelGeometry,
        target: PruneTarget,
    ) -> Result<HeadMask, StrategyError> {
        scores.validate(geometry)?;
        let units = units(scores, geometry, 0..geometry.layers, self.0.whole_groups);
        select(units, &geometry.heads, target.heads(geometry.total_heads()), self.0.min_per_layer)
    }
}

inventory::submit! {
    Builtin {
        name: "global",
        description: "remove the lowest-scored heads across all layers",
        options: constraint_options,
        factory: Factory::Pruner(|o| Ok(Box::new(Global(Constraints::from_options(o))))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_lowest_scores_anywhere_but_keeps_a_head_per_layer() {
        let geometry = ModelGeometry::uniform(2, 3, 1, 4, 12);
        let scores = HeadScores { scores: vec![vec![0.1, 0.2, 0.3], vec![5.0, 6.0, 0.05]] };
        let global = |min_per_layer| Global(Constraints { min_per_layer, whole_groups: false });
        let mask = global(1).prune(&scores, &geometry, PruneTarget::Count(3)).unwrap();
        assert_eq!(mask.pruned_in(0), &[0, 1]);
        assert_eq!(mask.pruned_in(1), &[2]);
        let mask = global(1).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!(mask.count(), 3);
        let err = global(2).prune(&scores, &geometry, PruneTarget::Count(3)).unwrap_err();
        assert!(err.to_string().contains("keeping at least 2 per layer (at most 2 can go)"), "{err}");
    }

    #[test]
    fn whole_groups_go_together_by_their_mean_score() {
        // 4 heads in 2 KV groups per layer: groups (0,1) and (2,3).
        let geometry = ModelGeometry::uniform(2, 4, 2, 4, 16);
        let scores = HeadScores { scores: vec![vec![0.1, 0.9, 0.3, 0.4], vec![0.2, 0.2, 5.0, 5.0]] };
        let g = Global(Constraints { min_per_layer: 1, whole_groups: true });
        let mask = g.prune(&scores, &geometry, PruneTarget::Count(4)).unwrap();
        assert_eq!(mask.pruned_in(0), &[2, 3]);
        assert_eq!(mask.pruned_in(1), &[0, 1]);
        assert!(g.prune(&scores, &geometry, PruneTarget::Count(3)).is_err());
    }
}
