//! Gated DeltaNet's gated output norm in the autograd graph. Where forge's kernel runs, the forward
//! kernel computes it outside the graph and `gated_rms_norm_backward`'s kernel gives the gradients of
//! the delta rule's output and of the gate `z` in one pass per row: the graph keeps those two inputs,
//! where the elementary ops keep about ten f32 and bf16 intermediates of the same size. Elsewhere, and
//! for the weight if it ever trains, the elementary ops and candle's autograd.
use candle_core::Tensor;
use forge_kernels::tape;

/// [`forge_kernels::gated_rms_norm`], differentiable with respect to `o` and `z`.
pub fn gated_rms_norm(o: &Tensor, z: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if (tape::tracked(o) || tape::tracked(z))
        && !w.track_op()
        && o.dtype() == candle_core::DType::F32
        && forge_kernels::on_kernel(&[z, w])
    {
        let (od, zd) = (tape::detach(o)?, tape::detach(z)?);
        let out = forge_kernels::gated_rms_norm(&od, &zd, w, eps)?;
        let weight = w.clone();
        return super::with_gradients("gated norm backward", [o, z, w], out, move |grad| {
            let (d_o, d_z) = forge_kernels::gated_rms_norm_backward(&od, &zd, &weight, eps, grad)?;
            Ok([Some(d_o), Some(d_z), None])
        });
    }
    let norm = |v: &[Tensor]| Ok((forge_kernels::gated_rms_norm(&v[0], &v[1], &v[2], eps)?, ()));
    Ok(tape::through_graph("gated norm", &[o, z, w], norm)?.0)
}
