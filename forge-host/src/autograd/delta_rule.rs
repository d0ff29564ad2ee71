//! Gated DeltaNet's delta rule in the autograd graph. The rule runs outside it (forge-kernels: host
//! loops on the CPU, CUDA kernels on the GPU), and its backward joins the graph here:
//! `gated_delta_rule::backward_from_projections` gives the raw inputs' gradients (on CUDA the chunked
//! form's kernels and batched products; on the CPU the host walk and candle's autograd through the
//! input preparation), recomputing what it needs from the inputs. So the graph keeps the layer's three
//! raw inputs and nothing per token; while a checkpointed layer runs again ([`keep_activations`]), its
//! backward next, the chunked form keeps its solve, products and state walk for that backward instead.
use std::sync::Mutex;

use candle_core::Tensor;
use forge_kernels::gated_delta_rule::{
    backward_from_projections, from_projections, from_projections_keeping, Heads, Kept, Projections,
};

use super::{keep_activations, with_gradients};
use forge_kernels::tape;

/// [`from_projections`], differentiable with respect to `conv`, `a` and `b` (the decay's constants
/// `neg_a` and `dt_bias` are frozen base weights). The final state takes no gradient: only decoding
/// keeps it, and decoding does not train.
pub fn gated_delta_rule(
    p: &Projections,
    state: Option<&Tensor>,
    heads: Heads,
) -> candle_core::Result<(Tensor, Tensor)> {
    if ![p.conv, p.a, p.b].iter().any(|t| tape::tracked(t)) {
        return from_projections(p, state, heads);
    }
    let (conv, a, b) = (tape::detach(p.conv)?, tape::detach(p.a)?, tape::detach(p.b)?);
    let detached = Projections { conv: &conv, a: &a, b: &b, neg_a: p.neg_a, dt_bias: p.dt_bias };
    let (out, final_state, kept) = match state {
        None if keep_activations() => from_projections_keeping(&detached, heads)?,
        _ => {
            let (out, final_state) = from_projections(&detached, state, heads)?;
            (out, final_state, Kept::default())
        }
    };
    // Taken by the backward, so each group goes as soon as it has been used, not with the graph.
    let kept = Mutex::new(Some(kept));
    let (neg_a, dt_bias) = (p.neg_a.clone(), p.dt_bias.clone());
    let out = with_gradients("gated delta rule backward", [p.conv, p.a, p.b], out, move |grad| {
        let raw = Projections { conv: &conv, a: &a, b: &b, neg_a: &neg_a, dt_bias: &dt_bias };
        let kept = kept.lock().expect("no panic while holding the kept forward").take().unwrap_or_default();
        Ok(backward_from_projections(&raw, heads, grad, kept)?.map(Some))
    })?;
    Ok((out, final_state))
}
