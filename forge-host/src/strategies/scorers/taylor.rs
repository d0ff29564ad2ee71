//! `taylor`: the first-order estimate of how much the loss changes when a head is removed,
//! |∂L/∂m_h| for a head mask m (Michel et al., 2019, "Are Sixteen Heads Really Better than One?"),
//! averaged over calibration batches. The gradient flows through forge's own differentiable decoder;
//! `strategies::probes` tests it against finite differences. A linear-attention value head's mask
//! multiplies its output before `out_proj`, and an MLP channel's its activation before `down_proj`,
//! so the same estimate scores both; a layer's gate scales its two residual updates.
use forge_api::{HeadScores, ImportanceScorer, ScoringContext, StrategyError, UnitKind};

use crate::strategies::{Builtin, Factory};

struct Taylor;

impl ImportanceScorer for Taylor {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let attention = ctx.head_mask_gradients()?;
        super::all_kinds(ctx, attention, |ctx, kind| match kind {
            UnitKind::LinearHead => ctx.linear_head_mask_gradients(),
            UnitKind::Layer => ctx.layer_gate_gradients(),
            _ => ctx.mlp_channel_mask_gradients(),
        })
    }
}

inventory::submit! {
    Builtin {
        name: "taylor",
        description: "first-order loss change from removing each head, |dL/dmask|, on calibration windows from --data",
        options: Vec::new,
        factory: Factory::Scorer(|_| Ok(Box::new(Taylor))),
    }
}
