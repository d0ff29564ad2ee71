//! Gated DeltaNet's delta rule in the autograd graph. The rule itself runs outside it (forge-kernels:
//! host loops on the CPU, a CUDA kernel for inference), and its backward joins the graph here: the
//! core by hand (`gated_delta_rule::backward`, recomputing the states a chunk at a time), the input
//! preparation (q/k L2 norms, the repeat to value heads, softplus and sigmoid) by candle's autograd
//! through its elementary ops, recomputed from the kept raw inputs. So the graph keeps the layer's
//! three raw inputs and nothing per token.
use candle_core::{Tensor, Var};
use forge_kernels::gated_delta_rule::{self, from_projections, prepare, Heads, Projections};

use super::with_gradients;

/// [`from_projections`], differentiable with respect to `conv`, `a` and `b` (the decay's constants
/// `neg_a` and `dt_bias` are frozen base weights). The final state takes no gradient: only decoding
/// keeps it, and decoding does not train.
pub fn gated_delta_rule(
    p: &Projections,
    state: Option<&Tensor>,
    heads: Heads,
) -> candle_core::Result<(Tensor, Tensor)> {
    if ![p.conv, p.a, p.b].iter().any(|t| t.track_op()) {
        return from_projections(p, state, heads);
    }
    let (conv, a, b) = (p.conv.detach(), p.a.detach(), p.b.detach());
    let detached = Projections { conv: &conv, a: &a, b: &b, neg_a: p.neg_a, dt_bias: p.dt_bias };
    let (out, final_state) = from_projections(&detached, state, heads)?;
    let (neg_a, dt_bias) = (p.neg_a.clone(), p.dt_bias.clone());
    let out = with_gradients("gated delta rule backward", [p.conv, p.a, p.b], out, move |grad, _| {
        let vars = [Var::from_tensor(&conv)?, Var::from_tensor(&a)?, Var::from_tensor(&b)?];
        let inputs = Projections {
            conv: vars[0].as_tensor(),
            a: vars[1].as_tensor(),
            b: vars[2].as_tensor(),
            neg_a: &neg_a,
            dt_bias: &dt_bias,
        };
        let prepared = prepare(&inputs, heads)?;
        let [q, k, v, g, beta] = prepared.each_ref().map(|t| t.detach());
        let core = gated_delta_rule::backward(&q, &k, &v, &g, &beta, grad)?;
        // Σ prepared · its gradient, differentiated through the preparation, gives the raw inputs'.
        let mut total = Tensor::zeros((), candle_core::DType::F32, conv.device())?;
        for (x, d) in prepared.iter().zip(&core) {
            total = (total + (x * d.to_device(x.device())?)?.sum_all()?)?;
        }
        let store = total.backward()?;
        Ok(vars.map(|v| store.get(v.as_tensor()).cloned()))
    })?;
    Ok((out, final_state))
}
