//! Built-in pruners, one per file, sharing the selection rule in [`select`]. Each kind of unit (query
//! heads, a hybrid's linear-attention value heads, MLP channels) is ranked within its own kind, with
//! its own share: scores of different kinds measure different things, so one global ranking would
//! compare them on no common scale.
mod budget;
mod global;
mod per_layer;

use std::collections::BTreeMap;

use forge_api::{HeadScores, ModelGeometry, OptionKind, OptionSpec, PruneTarget, StrategyError, UnitKind};

/// A set of heads removed together: one head, or a whole group (KV head, or linear-attention key
/// head) when `whole-groups` is on.
struct Unit {
    layer: usize,
    heads: Vec<usize>,
    score: f32,
}

/// One kind's view of a model: its heads and groups per layer and their scores.
struct KindView<'a> {
    kind: UnitKind,
    heads: Vec<usize>,
    groups: Vec<usize>,
    rows: &'a [Vec<f32>],
}

impl<'a> KindView<'a> {
    /// The view of `kind`, or an error when the scorer left that kind unscored.
    fn of(kind: UnitKind, scores: &'a HeadScores, geometry: &ModelGeometry) -> Result<Self, StrategyError> {
        let rows = scores.of(kind).ok_or_else(|| {
            StrategyError::bad_input(format!(
                "the scorer gave no scores for {}s (a plugin built for ABI 1.0 scores query heads only); \
                 give --pruner-opt linear-ratio=0 to prune query heads alone",
                kind.noun()
            ))
        })?;
        let (heads, groups) = geometry.of(kind);
        Ok(KindView { kind, heads, groups, rows })
    }

    /// The removal units of `layers`: single heads, or groups scored by their heads' mean.
    fn units(&self, layers: std::ops::Range<usize>, whole_groups: bool) -> Vec<Unit> {
        let mut out = Vec::new();
        // A layer without heads of this kind (a hybrid's other layers) offers no units.
        for layer in layers.filter(|&l| self.heads[l] > 0) {
            let size = if whole_groups { self.heads[layer] / self.groups[layer] } else { 1 };
            for first in (0..self.heads[layer]).step_by(size) {
                let heads: Vec<usize> = (first..first + size).collect();
                let score = heads.iter().map(|&h| self.rows[layer][h]).sum::<f32>() / size as f32;
                out.push(Unit { layer, heads, score });
            }
        }
        out
    }

    /// The layers with heads of this kind.
    fn layers(&self) -> Vec<usize> {
        (0..self.heads.len()).filter(|&l| self.heads[l] > 0).collect()
    }
}

/// Removes the lowest-scored units until `count` heads are gone, never leaving a layer with fewer
/// than `min_per_layer` heads. Ties break towards the lower (layer, head), so results are deterministic.
fn select(
    view: &KindView,
    mut units: Vec<Unit>,
    count: usize,
    min_per_layer: usize,
) -> Result<BTreeMap<usize, Vec<usize>>, StrategyError> {
    units.sort_by(|a, b| a.score.total_cmp(&b.score).then((a.layer, a.heads[0]).cmp(&(b.layer, b.heads[0]))));
    let mut left = view.heads.clone();
    // A layer is one unit: the floor is a layer left in the model, not a unit left in each layer.
    let min_per_layer = match view.kind {
        UnitKind::Layer if count >= view.heads.len() => {
            return Err(StrategyError::bad_input(format!(
                "removing {count} of {} layers leaves none; lower layer-ratio",
                view.heads.len()
            )))
        }
        UnitKind::Layer => 0,
        _ => min_per_layer,
    };
    let mut pruned: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut removed = 0;
    for unit in units {
        let n = unit.heads.len();
        if removed + n <= count && left[unit.layer] >= min_per_layer + n {
            left[unit.layer] -= n;
            removed += n;
            pruned.entry(unit.layer).or_default().extend(unit.heads);
        }
    }
    if removed < count {
        return Err(StrategyError::bad_input(format!(
            "cannot remove exactly {count} {}s in whole units while keeping at least {min_per_layer} per layer \
             (at most {removed} can go); change the target, min-heads-per-layer or whole-groups",
            view.kind.noun()
        )));
    }
    pruned.values_mut().for_each(|heads| heads.sort_unstable());
    Ok(pruned)
}

/// The options both built-in pruners take.
fn constraint_options() -> Vec<OptionSpec> {
    vec![
        OptionSpec::new("min-heads-per-layer", OptionKind::Int, 1, "never leave a layer with fewer heads of a kind than this"),
        OptionSpec::new(
            "whole-groups",
            OptionKind::Bool,
            false,
            "remove whole groups (all query heads sharing a KV head; all value heads of a linear-attention key head), \
             so compact models really shrink",
        ),
        OptionSpec::new(
            "mlp-ratio",
            OptionKind::Float,
            0.0,
            "share of MLP channels to remove, in [0, 1) (--ratio and --count name heads alone)",
        ),
        OptionSpec::new(
            "layer-ratio",
            OptionKind::Float,
            0.0,
            "share of whole layers to remove, in [0, 1) (at least one layer stays)",
        ),
        OptionSpec::new(
            "linear-ratio",
            OptionKind::Float,
            -1.0,
            "share of linear-attention value heads to remove, in [0, 1); negative follows --ratio (none with --count, \
             which counts query heads)",
        ),
    ]
}

/// The constraints, read from resolved options.
struct Constraints {
    min_per_layer: usize,
    whole_groups: bool,
    /// Negative: follow the run's ratio.
    linear_ratio: f64,
    mlp_ratio: f64,
    layer_ratio: f64,
}

impl Constraints {
    fn from_options(o: &forge_api::Options) -> Result<Self, StrategyError> {
        let (linear_ratio, mlp_ratio, layer_ratio) =
            (o.float("linear-ratio"), o.float("mlp-ratio"), o.float("layer-ratio"));
        for (key, share) in
            [("linear-ratio", linear_ratio), ("mlp-ratio", mlp_ratio), ("layer-ratio", layer_ratio)]
        {
            if share >= 1.0 || (key != "linear-ratio" && share < 0.0) {
                return Err(StrategyError::bad_input(format!(
                    "option `{key}` is {share}; give a share in [0, 1) (every layer keeps a unit of each kind)"
                )));
            }
        }
        Ok(Constraints {
            min_per_layer: o.int("min-heads-per-layer") as usize,
            whole_groups: o.bool("whole-groups"),
            linear_ratio,
            mlp_ratio,
            layer_ratio,
        })
    }

    /// Refuses a parameter target: these pruners take a share of each kind.
    fn shares_only(target: PruneTarget, pruner: &str) -> Result<(), StrategyError> {
        match target {
            PruneTarget::Params { .. } => Err(StrategyError::bad_input(format!(
                "pruner `{pruner}` removes a share of each kind (--ratio, mlp-ratio, layer-ratio); \
                 --target-params needs `--pruner budget`, which splits a parameter budget across kinds"
            ))),
            _ => Ok(()),
        }
    }

    /// What to remove of `kind`, None for nothing: the run's target for query heads; for
    /// linear-attention value heads `linear-ratio`, else the run's ratio (a count names query heads);
    /// for MLP channels `mlp-ratio`; for whole layers `layer-ratio`.
    fn target(&self, kind: UnitKind, target: PruneTarget, geometry: &ModelGeometry) -> Option<PruneTarget> {
        let chosen = match (kind, target) {
            (UnitKind::QueryHead, t) => t,
            (UnitKind::LinearHead, _) if self.linear_ratio >= 0.0 => PruneTarget::Ratio(self.linear_ratio),
            (UnitKind::LinearHead, PruneTarget::Ratio(r)) => PruneTarget::Ratio(r),
            (UnitKind::LinearHead, PruneTarget::Count(_) | PruneTarget::Params { .. }) => return None,
            (UnitKind::MlpChannel, _) => PruneTarget::Ratio(self.mlp_ratio),
            (UnitKind::Layer, _) => PruneTarget::Ratio(self.layer_ratio),
        };
        let total: usize = geometry.of(kind).0.iter().sum();
        (total > 0 && chosen.heads(total) > 0).then_some(chosen)
    }
}
