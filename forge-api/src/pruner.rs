use crate::{HeadMask, HeadScores, ModelGeometry, StrategyError};

/// How many heads to remove.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PruneTarget {
    /// This share of all query heads, in (0, 1); rounded to the nearest head.
    Ratio(f64),
    /// Exactly this many heads.
    Count(usize),
}

impl PruneTarget {
    /// The number of heads this target removes out of `total`.
    pub fn heads(self, total: usize) -> usize {
        match self {
            PruneTarget::Ratio(r) => (r * total as f64).round() as usize,
            PruneTarget::Count(n) => n,
        }
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
