//! `global`: the lowest-scored heads of each kind across the whole model, so layers that matter less
//! lose more.
use forge_api::{HeadMask, HeadScores, ModelGeometry, PruneTarget, Pruner, StrategyError, UnitKind};

use super::{constraint_options, select, Constraints, KindView};
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
        Constraints::shares_only(target, "global")?;
        let mut mask = HeadMask::default();
        for kind in UnitKind::ALL {
            let Some(target) = self.0.target(kind, target, geometry) else { continue };
            let view = KindView::of(kind, scores, geometry)?;
            let count = target.heads(view.heads.iter().sum());
            let units = view.units(0..geometry.layers, self.0.whole_groups);
            *mask.of_mut(kind) = select(&view, units, count, self.0.min_per_layer)?;
        }
        Ok(mask)
    }
}

inventory::submit! {
    Builtin {
        name: "global",
        description: "remove the lowest-scored heads of each kind across all layers",
        options: constraint_options,
        factory: Factory::Pruner(|o| Ok(Box::new(Global(Constraints::from_options(o)?)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(min_per_layer: usize, whole_groups: bool, linear_ratio: f64) -> Global {
        Global(Constraints { min_per_layer, whole_groups, linear_ratio, mlp_ratio: 0.0, layer_ratio: 0.0 })
    }

    #[test]
    fn removes_the_lowest_scores_anywhere_but_keeps_a_head_per_layer() {
        let geometry = ModelGeometry::uniform(2, 3, 1, 4, 12);
        let scores = HeadScores::attention(vec![vec![0.1, 0.2, 0.3], vec![5.0, 6.0, 0.05]]);
        let mask = global(1, false, -1.0).prune(&scores, &geometry, PruneTarget::Count(3)).unwrap();
        assert_eq!(mask.pruned_in(0), &[0, 1]);
        assert_eq!(mask.pruned_in(1), &[2]);
        let mask = global(1, false, -1.0).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!(mask.count(), 3);
        let err = global(2, false, -1.0).prune(&scores, &geometry, PruneTarget::Count(3)).unwrap_err();
        assert!(err.to_string().contains("keeping at least 2 per layer (at most 2 can go)"), "{err}");
    }

    #[test]
    fn whole_groups_go_together_by_their_mean_score() {
        // 4 heads in 2 KV groups per layer: groups (0,1) and (2,3).
        let geometry = ModelGeometry::uniform(2, 4, 2, 4, 16);
        let scores = HeadScores::attention(vec![vec![0.1, 0.9, 0.3, 0.4], vec![0.2, 0.2, 5.0, 5.0]]);
        let g = global(1, true, -1.0);
        let mask = g.prune(&scores, &geometry, PruneTarget::Count(4)).unwrap();
        assert_eq!(mask.pruned_in(0), &[2, 3]);
        assert_eq!(mask.pruned_in(1), &[0, 1]);
        assert!(g.prune(&scores, &geometry, PruneTarget::Count(3)).is_err());
    }

    /// Layers 0 and 2 are Gated DeltaNet (4 value heads over 2 key heads), layer 1 attends (2 heads,
    /// each with its own KV head).
    fn hybrid() -> (ModelGeometry, HeadScores) {
        let geometry = ModelGeometry {
            heads: vec![0, 2, 0],
            kv_heads: vec![0, 2, 0],
            linear_heads: vec![4, 0, 4],
            linear_key_heads: vec![2, 0, 2],
            ..ModelGeometry::uniform(3, 0, 0, 4, 16)
        };
        // Linear scores far below attention ones: ranked together, every linear head would go first.
        let scores = HeadScores {
            scores: vec![vec![], vec![5.0, 9.0], vec![]],
            linear: vec![vec![0.4, 0.3, 0.2, 0.1], vec![], vec![0.01, 0.02, 0.5, 0.6]],
            ..HeadScores::default()
        };
        (geometry, scores)
    }

    #[test]
    fn each_kind_is_ranked_within_itself_with_its_own_share() {
        let (geometry, scores) = hybrid();
        let mask = global(1, false, -1.0).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!(mask.pruned_in(1), &[0]);
        assert_eq!(mask.pruned_of(UnitKind::LinearHead, 0), &[2, 3]);
        assert_eq!(mask.pruned_of(UnitKind::LinearHead, 2), &[0, 1]);
        // linear-ratio sets the linear share apart; with --count only query heads go.
        let mask = global(1, false, 0.25).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!((mask.count(), mask.count_of(UnitKind::LinearHead)), (1, 2));
        let mask = global(1, false, -1.0).prune(&scores, &geometry, PruneTarget::Count(1)).unwrap();
        assert_eq!((mask.count(), mask.count_of(UnitKind::LinearHead)), (1, 0));
        // Whole key heads: the pair (0, 1) of layer 2 scores lowest.
        let mask = global(1, true, 0.25).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!(mask.pruned_of(UnitKind::LinearHead, 2), &[0, 1]);
        assert!(mask.pruned_of(UnitKind::LinearHead, 0).is_empty());
    }

    #[test]
    fn unscored_linear_heads_are_refused_unless_left_alone() {
        let (geometry, mut scores) = hybrid();
        scores.linear.clear();
        let err = global(1, false, -1.0).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap_err();
        assert!(err.to_string().contains("linear-ratio=0"), "{err}");
        let mask = global(1, false, 0.0).prune(&scores, &geometry, PruneTarget::Ratio(0.5)).unwrap();
        assert_eq!((mask.count(), mask.count_of(UnitKind::LinearHead)), (1, 0));
    }
}
