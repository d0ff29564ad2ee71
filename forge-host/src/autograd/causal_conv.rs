//! Gated DeltaNet's causal convolution (+ SiLU) in the autograd graph. Where forge's kernel runs, the
//! forward kernel computes the output outside the graph and `causal_conv_silu_backward`'s kernel gives
//! the input's gradient, recomputing the pre-activations: the graph keeps the convolution's input only,
//! where the elementary ops keep the padded input, every tap's product and partial sum and the SiLU's
//! input (about 2·taps + 2 tensors of `(batch, seq, channels)` a layer). Elsewhere, and for the
//! weights if they ever train, the elementary ops and candle's autograd.
use candle_core::Tensor;
use forge_kernels::tape;

/// [`forge_kernels::causal_conv_silu`], differentiable with respect to `x`.
pub fn causal_conv_silu(
    x: &Tensor,
    weight: &Tensor,
    state: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if tape::tracked(x)
        && !weight.track_op()
        && state.is_none()
        && forge_kernels::on_kernel(&[x, weight])
        && forge_kernels::conv_on_kernel_shape(x.dim(2)?, weight.dim(1)?)
    {
        let detached = tape::detach(x)?;
        let (out, tail) = forge_kernels::causal_conv_silu(&detached, weight, None)?;
        let weight = weight.clone();
        let out = super::with_gradient("causal conv backward", x, out, move |grad| {
            forge_kernels::causal_conv_silu_backward(&detached, &weight, grad)
        })?;
        return Ok((out, tail));
    }
    tape::through_graph("causal conv", &[x, weight], |v| forge_kernels::causal_conv_silu(&v[0], &v[1], state))
}
