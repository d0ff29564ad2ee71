//! Gated attention's output gate (Qwen3.5), `out · sigmoid(gate)`, in the autograd graph. Where forge's
//! kernel runs, the forward kernel computes it outside the graph and `sigmoid_gate_backward`'s kernel
//! gives both gradients in one pass: the graph keeps the two inputs, where the elementary ops keep the
//! gate's copy, its sigmoid and the product's operands, and their backward takes five more passes.
//! Elsewhere, the elementary ops and candle's autograd.
use candle_core::Tensor;
use forge_kernels::tape;

/// [`forge_kernels::sigmoid_gate`], differentiable with respect to `out` and `projected`.
pub fn sigmoid_gate(out: &Tensor, projected: &Tensor, d: usize) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if (tape::tracked(out) || tape::tracked(projected)) && forge_kernels::on_kernel(&[out, projected]) {
        let (od, pd) = (tape::detach(out)?, tape::detach(projected)?);
        let y = forge_kernels::sigmoid_gate(&od, &pd, d)?;
        return super::with_two_gradients("output gate backward", [out, projected], y, move |grad| {
            let (d_out, d_projected) = forge_kernels::sigmoid_gate_backward(&od, &pd, d, grad)?;
            Ok([Some(d_out), Some(d_projected)])
        });
    }
    let gate = |v: &[Tensor]| Ok((forge_kernels::sigmoid_gate(&v[0], &v[1], d)?, ()));
    Ok(tape::through_graph("output gate", &[out, projected], gate)?.0)
}
