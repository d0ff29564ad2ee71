//! Qwen3.5's gated attention multiplies each head's attention output by `sigmoid(gate)`, where the
//! gate is the second half of the head's `2·head_dim` outputs of `q_proj`. On CUDA one pass reads the
//! gate where `q_proj` wrote it; the elementary ops copy it out, take the sigmoid and multiply (three
//! passes). Its backward ([`sigmoid_gate_backward`]) is one pass too, where the elementary ops' keeps
//! the gate's copy and its sigmoid for the graph.
use candle_core::Tensor;

#[cfg(feature = "cuda")]
use crate::forward_kernel;

/// `out · sigmoid(gate)` for `out` `(batch, seq, heads · d)` and `projected` `(batch, seq, heads · 2d)`
/// (per head: query, then gate).
pub fn sigmoid_gate(out: &Tensor, projected: &Tensor, d: usize) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if forward_kernel(&[out, projected]) {
        use crate::launch::{launch_on_tensors, Grid, Scalar};
        let n = out.elem_count();
        let scalars = [Scalar::I64(n as i64), Scalar::I32(d as i32)];
        return launch_on_tensors::<half::bf16>(
            "sigmoid_gate_bf16",
            &[out, projected],
            out.shape(),
            Grid::Stride(n),
            &scalars,
        );
    }
    let (b, s, width) = out.dims3()?;
    let heads = width / d;
    let gate = projected.reshape((b, s, heads, 2 * d))?.narrow(3, d, d)?.reshape((b, s, width))?;
    out.mul(&candle_nn::ops::sigmoid(&gate)?)
}

/// The gradients of `out` and of `projected` for `y = sigmoid_gate(out, projected, d)` given `dy`, by
/// one CUDA kernel pass (the query halves of `projected`'s gradient are zero: the queries' gradient
/// comes through the attention). Elsewhere candle's autograd through the elementary ops is the backward,
/// and the reference `forge kernels` checks this one against.
#[cfg(feature = "cuda")]
pub fn sigmoid_gate_backward(
    out: &Tensor,
    projected: &Tensor,
    d: usize,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    use crate::launch::{launch_on_tensors, Grid, Scalar};
    if !crate::on_kernel(&[out, projected, dy]) {
        candle_core::bail!("sigmoid_gate_backward takes bf16 tensors on a CUDA device");
    }
    let n = out.elem_count();
    let scalars = [Scalar::I64(n as i64), Scalar::I32(d as i32)];
    let flat = launch_on_tensors::<half::bf16>(
        "sigmoid_gate_backward_bf16",
        &[out, projected, dy],
        3 * n,
        Grid::Stride(n),
        &scalars,
    )?;
    let d_out = flat.narrow(0, 0, n)?.reshape(out.shape())?;
    let d_projected = flat.narrow(0, n, 2 * n)?.reshape(projected.shape())?;
    Ok((d_out, d_projected))
}
