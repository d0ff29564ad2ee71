//! Gated DeltaNet's delta rule in the autograd graph. The rule runs outside it (forge-kernels: host
//! loops on the CPU, CUDA kernels on the GPU), and its backward joins the graph here:
//! `gated_delta_rule::backward_from_projections` gives the raw inputs' gradients (on CUDA the chunked
//! form's kernels and batched products; on the CPU the host walk and candle's autograd through the
//! input preparation), recomputing what it needs from the inputs. So the graph keeps the layer's three
//! raw inputs and nothing per token.
use candle_core::Tensor;
use forge_kernels::gated_delta_rule::{backward_from_projections, from_projections, Heads, Projections};

use super::with_gradients;
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
    let (out, final_state) = from_projections(&detached, state, heads)?;
    let (neg_a, dt_bias) = (p.neg_a.clone(), p.dt_bias.clone());
    let out = with_gradients("gated delta rule backward", [p.conv, p.a, p.b], out, move |grad| {
        let raw = Projections { conv: &conv, a: &a, b: &b, neg_a: &neg_a, dt_bias: &dt_bias };
        Ok(backward_from_projections(&raw, heads, grad)?.map(Some))
    })?;
    Ok((out, final_state))
}
