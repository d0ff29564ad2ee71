use crate::{HeadMask, HeadScores, ModelGeometry, StrategyError, UnitKind};

/// How much to remove.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PruneTarget {
    /// This share of all query heads, in (0, 1); rounded to the nearest head.
    Ratio(f64),
    /// Exactly this many heads.
    Count(usize),
    /// Keep this share of the model's parameters (as `forge inspect` counts them), in (0, 1),
    /// removing units of the kinds in `units`; a pruner splits the budget across kinds by its own
    /// rule, from the unit costs in [`ModelGeometry::costs`](crate::ModelGeometry::costs).
    Params {
        /// The share of parameters kept.
        keep: f64,
        /// The kinds that may lose units.
        units: UnitSet,
    },
}

impl PruneTarget {
    /// The number of heads a ratio or count removes out of `total` (none for a parameter target,
    /// which counts no heads).
    pub fn heads(self, total: usize) -> usize {
        match self {
            PruneTarget::Ratio(r) => (r * total as f64).round() as usize,
            PruneTarget::Count(n) => n,
            PruneTarget::Params { .. } => 0,
        }
    }
}

/// A set of unit kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnitSet(u8);

impl UnitSet {
    /// The set of `kinds`.
    pub fn of(kinds: &[UnitKind]) -> Self {
        UnitSet(kinds.iter().fold(0, |bits, &k| bits | 1 << k as u8))
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: UnitKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    /// The kinds in the set, in [`UnitKind::ALL`] order.
    pub fn kinds(self) -> Vec<UnitKind> {
        UnitKind::ALL.into_iter().filter(|&k| self.contains(k)).collect()
    }
}

/// Turns head scores into a head mask.
pub trait Pruner {
    /// Chooses the heads to remove. Constraints (such as a minimum of heads per layer) are the
    /// pruner's options; a target they make impossible is an error naming both.
    fn prune(
        &self,
        scores: &HeadScores,
        geometry: &ModelGeometry,
        target: PruneTarget,
    ) -> Result<HeadMask, StrategyError>;
}
