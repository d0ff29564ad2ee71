//! Built-in pruners, one per file, sharing the selection rule in [`select`].
mod global;
mod per_layer;

use forge_api::{HeadMask, HeadScores, ModelGeometry, OptionKind, OptionSpec, StrategyError};

/// A set of heads removed together: one head, or a whole KV group when `whole-groups` is on.
struct Unit {
    layer: usize,
    heads: Vec<usize>,
    score: f32,
}

/// The removal units of `layers`: single heads, or KV groups scored by their heads' mean.
fn units(
    scores: &HeadScores,
    geometry: &ModelGeometry,
    layers: std::ops::Range<usize>,
    whole_groups: bool,
) -> Vec<Unit> {
    let mut out = Vec::new();
    // A layer without heads (a hybrid's linear-attention layer) offers no units.
    for layer in layers.filter(|&l| geometry.heads[l] > 0) {
        let size = if whole_groups { geometry.heads[layer] / geometry.kv_heads[layer] } else { 1 };
        for first in (0..geometry.heads[layer]).step_by(size) {
            let heads: Vec<usize> = (first..first + size).collect();
            let score = heads.iter().map(|&h| scores.scores[layer][h]).sum::<f32>() / size as f32;
            out.push(Unit { layer, heads, score });
        }
    }
    out
}

/// Removes the lowest-scored units until `count` heads are gone, never leaving a layer with fewer
/// than `min_per_layer` heads. Ties break towards the lower (layer, head), so results are deterministic.
fn select(
    mut units: Vec<Unit>,
    heads: &[usize],
    count: usize,
    min_per_layer: usize,
) -> Result<HeadMask, StrategyError> {
    units.sort_by(|a, b| a.score.total_cmp(&b.score).then((a.layer, a.heads[0]).cmp(&(b.layer, b.heads[0]))));
    let mut left: Vec<usize> = heads.to_vec();
    let mut mask = HeadMask::default();
    for unit in units {
        let n = unit.heads.len();
        if mask.count() + n <= count && left[unit.layer] >= min_per_layer + n {
            left[unit.layer] -= n;
            mask.pruned.entry(unit.layer).or_default().extend(unit.heads);
        }
    }
    if mask.count() < count {
        return Err(StrategyError::bad_input(format!(
            "cannot remove exactly {count} heads in whole units while keeping at least {min_per_layer} per layer \
             (at most {} can go); change the target, min-heads-per-layer or whole-groups",
            mask.count()
        )));
    }
    mask.pruned.values_mut().for_each(|heads| heads.sort_unstable());
    Ok(mask)
}

/// The options both built-in pruners take.
fn constraint_options() -> Vec<OptionSpec> {
    vec![
        OptionSpec::new("min-heads-per-layer", OptionKind::Int, 1, "never leave a layer with fewer query heads than this"),
        OptionSpec::new(
            "whole-groups",
            OptionKind::Bool,
            false,
            "remove whole KV groups (all query heads sharing a key/value head), so compact models really shrink",
        ),
    ]
}

/// The constraints, read from resolved options.
struct Constraints {
    min_per_layer: usize,
    whole_groups: bool,
}

impl Constraints {
    fn from_options(o: &forge_api::Options) -> Self {
        Constraints {
            min_per_layer: o.int("min-heads-per-layer") as usize,
            whole_groups: o.bool("whole-groups"),
        }
    }
}
