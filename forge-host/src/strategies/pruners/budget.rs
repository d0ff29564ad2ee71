//! `budget`: keeps a share of the model's parameters (`--target-params F`), removing units of the kinds
//! `--units` allows. The rule: each kind's scores are divided by that kind's mean, so a unit is
//! ranked by how it compares with its own kind (scores of different kinds measure different
//! things); then units go lowest first, each costing what a compact model saves by it, until the
//! budget is met. A unit that would overshoot the budget by more than half a percent of the model is
//! passed over for smaller ones, so the result lands within 1% of the target. Heads go as whole
//! groups (a KV group; a linear-attention key head with its value heads), so a compact model
//! shrinks by exactly what was counted; every layer keeps a group of each kind and a channel, and the
//! model keeps a layer. A layer removed whole takes its remaining units with it.
use forge_api::{
    HeadMask, HeadScores, ModelGeometry, PruneTarget, Pruner, StrategyError, UnitCosts, UnitKind,
};

use super::KindView;
use crate::strategies::{Builtin, Factory};

struct Budget;

/// One removable unit: a group of units of a kind in a layer, its normalised score and its cost.
struct Candidate {
    kind: UnitKind,
    layer: usize,
    units: Vec<usize>,
    score: f64,
    cost: u64,
}

/// The candidates of `kind`: the selection rule's units with whole groups, which are groups for
/// heads and single channels and layers (each its own group).
fn candidates(view: &KindView, costs: &UnitCosts) -> Vec<Candidate> {
    let k = view.kind as usize;
    let all: Vec<f64> = view.rows.iter().flatten().map(|&s| s as f64).collect();
    let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
    let scale = if mean.abs() > 0.0 { mean.abs() } else { 1.0 };
    view.units(0..view.heads.len(), true)
        .into_iter()
        .map(|u| {
            let cost = match view.kind {
                UnitKind::Layer => costs.layers[u.layer],
                _ => u.heads.len() as u64 * costs.unit[k] + costs.group[k],
            };
            Candidate { kind: view.kind, layer: u.layer, score: u.score as f64 / scale, units: u.heads, cost }
        })
        .collect()
}

impl Pruner for Budget {
    fn prune(
        &self,
        scores: &HeadScores,
        geometry: &ModelGeometry,
        target: PruneTarget,
    ) -> Result<HeadMask, StrategyError> {
        scores.validate(geometry)?;
        let PruneTarget::Params { keep, units } = target else {
            return Err(StrategyError::bad_input(
                "pruner `budget` takes a parameter target: give --target-params F (and --units)",
            ));
        };
        let costs =
            geometry.costs.as_ref().ok_or_else(|| StrategyError::failed("the host counted no unit costs"))?;
        let mut all = Vec::new();
        for kind in units.kinds().into_iter().filter(|&k| geometry.total(k) > 0) {
            all.extend(candidates(&KindView::of(kind, scores, geometry)?, costs));
        }
        all.sort_by(|a, b| {
            a.score.total_cmp(&b.score).then((a.layer, a.units[0]).cmp(&(b.layer, b.units[0])))
        });
        let total = costs.parameters as f64;
        let goal = (total * (1.0 - keep)).round() as u64;
        let slack = (total * 0.005) as u64;
        let mut state = Removal::new(geometry);
        for c in &all {
            if state.removed >= goal {
                break;
            }
            state.take(c, goal + slack);
        }
        if state.removed + slack < goal {
            // Too coarse (whole layers) or too few units: say which shares are within reach.
            let next = all
                .iter()
                .filter_map(|c| {
                    let mut more = state.clone();
                    more.take(c, u64::MAX);
                    (more.removed > state.removed).then_some(more.removed)
                })
                .min();
            let share = |removed: u64| format!("{:.1}%", 100.0 * (1.0 - removed as f64 / total));
            let reach = match next {
                Some(n) => format!("{} or {} (its units are too coarse)", share(state.removed), share(n)),
                None => {
                    format!("no less than {} (every layer keeps a group of each kind)", share(state.removed))
                }
            };
            let nouns: Vec<&str> = units.kinds().iter().map(|k| k.noun()).collect();
            return Err(StrategyError::bad_input(format!(
                "units of kind {} cannot keep {:.1}% of the parameters within 1%: the nearest are {reach}; \
                 change --target-params or add a kind to --units",
                nouns.join(", "),
                100.0 * keep
            )));
        }
        Ok(state.mask)
    }
}

/// What has gone so far.
#[derive(Clone)]
struct Removal {
    mask: HeadMask,
    removed: u64,
    /// Per kind and layer, units left; per layer, parameters already freed inside it.
    left: Vec<Vec<usize>>,
    inside: Vec<u64>,
    layers_left: usize,
}

impl Removal {
    fn new(g: &ModelGeometry) -> Self {
        let left = UnitKind::ALL.iter().map(|&k| g.of(k).0).collect();
        Removal {
            mask: HeadMask::default(),
            removed: 0,
            left,
            inside: vec![0; g.layers],
            layers_left: g.layers,
        }
    }

    /// Removes `c` when it fits under `limit` and leaves each layer (and the model) a unit.
    fn take(&mut self, c: &Candidate, limit: u64) {
        let gone = |m: &HeadMask| !m.pruned_of(UnitKind::Layer, c.layer).is_empty();
        if gone(&self.mask) {
            return;
        }
        let (k, n) = (c.kind as usize, c.units.len());
        let cost = match c.kind {
            UnitKind::Layer => c.cost - self.inside[c.layer],
            _ => c.cost,
        };
        let floor = if c.kind == UnitKind::Layer { self.layers_left > 1 } else { self.left[k][c.layer] > n };
        if !floor || self.removed + cost > limit {
            return;
        }
        self.removed += cost;
        if c.kind == UnitKind::Layer {
            self.layers_left -= 1;
            // The layer's other units go with it: they leave the mask, their cost is in the layer's.
            for kind in UnitKind::ALL {
                self.mask.of_mut(kind).remove(&c.layer);
            }
        } else {
            self.left[k][c.layer] -= n;
            self.inside[c.layer] += cost;
        }
        let entry = self.mask.of_mut(c.kind).entry(c.layer).or_default();
        entry.extend(&c.units);
        entry.sort_unstable();
    }
}

inventory::submit! {
    Builtin {
        name: "budget",
        description: "keep a share of the parameters (--target-params) across the kinds --units allows, scores normalised per kind",
        options: Vec::new,
        factory: Factory::Pruner(|_| Ok(Box::new(Budget))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forge_api::UnitSet;

    /// Two layers of 4 heads in 2 KV groups and 4 channels; heads cost 10, a KV group 4, a channel 3.
    fn model() -> (ModelGeometry, HeadScores) {
        let geometry = ModelGeometry {
            mlp_channels: vec![4, 4],
            costs: Some(UnitCosts {
                parameters: 200,
                unit: vec![10, 0, 3, 0],
                group: vec![4, 0, 0, 0],
                layers: vec![90, 90],
            }),
            ..ModelGeometry::uniform(2, 4, 2, 8, 16)
        };
        let scores = HeadScores {
            scores: vec![vec![1.0, 1.0, 9.0, 9.0], vec![5.0, 5.0, 5.0, 5.0]],
            mlp: vec![vec![0.1, 0.2, 9.0, 9.0], vec![4.0, 4.0, 4.0, 4.0]],
            layers: vec![vec![1.0], vec![3.0]],
            ..HeadScores::default()
        };
        (geometry, scores)
    }

    #[test]
    fn removes_the_lowest_normalised_units_until_the_budget_is_met() {
        let (geometry, scores) = model();
        let units = UnitSet::of(&[UnitKind::QueryHead, UnitKind::MlpChannel]);
        // 30 of 200 to go: channels 0 and 1 of layer 0 (0.02 and 0.04 of their kind's mean) cost 6,
        // then the first KV group of layer 0 (heads 0, 1: 0.2 of the heads' mean) costs 24.
        let mask = Budget.prune(&scores, &geometry, PruneTarget::Params { keep: 0.85, units }).unwrap();
        assert_eq!(mask.pruned_of(UnitKind::MlpChannel, 0), &[0, 1]);
        assert_eq!(mask.pruned_in(0), &[0, 1]);
        assert!(mask.pruned_layers.is_empty());
        // With layers allowed, layer 0 (a third of the layers' mean) goes whole, taking its units.
        let all = UnitSet::of(&UnitKind::ALL);
        let mask = Budget.prune(&scores, &geometry, PruneTarget::Params { keep: 0.55, units: all }).unwrap();
        assert_eq!(mask.pruned_layers.keys().collect::<Vec<_>>(), [&0]);
        assert!(mask.pruned_in(0).is_empty() && mask.pruned_of(UnitKind::MlpChannel, 0).is_empty());
        let err = Budget.prune(&scores, &geometry, PruneTarget::Params { keep: 0.1, units }).unwrap_err();
        assert!(err.to_string().contains("cannot keep 10.0%"), "{err}");
        // Whole layers alone are too coarse for 70%: the nearest shares are named.
        let layers = UnitSet::of(&[UnitKind::Layer]);
        let err =
            Budget.prune(&scores, &geometry, PruneTarget::Params { keep: 0.7, units: layers }).unwrap_err();
        assert!(err.to_string().contains("the nearest are 100.0% or 55.0%"), "{err}");
    }
}
