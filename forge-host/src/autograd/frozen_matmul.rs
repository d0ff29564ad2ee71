//! `x · Wᵀ` for a frozen weight W: gradients flow to `x`, never to W.
//!
//! candle's matmul backward computes both operands' gradients whether or not anyone wants them, so a
//! LoRA step through a frozen base would compute (and hold) a weight-sized gradient for every linear
//! layer. Here the product is computed outside the graph and attached to `x` with the backward
//! `grad · W` alone.
use candle_core::Tensor;

use super::custom_grad::with_gradient;

/// `x · wᵀ` for `x` `(…, in)` and `w` `(out, in)`, with no gradient for `w`; `(…, out)`.
///
/// The leading dimensions are flattened into one 2-D product (candle's batched matmul would broadcast
/// the weight per batch), outside the graph: a reshape node would cost the backward a copy of the
/// gradient.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (x_shape, in_dim) = (x.shape().clone(), x.dim(candle_core::D::Minus1)?);
    let mut out_dims = x_shape.dims().to_vec();
    *out_dims.last_mut().expect("a matmul input has at least one dimension") = w.dim(0)?;
    let rows = forge_kernels::tape::detach(x)?.reshape(((), in_dim))?;
    // Decoding's one row reads the weight once by forge's kernel, at the card's bandwidth.
    let one_row = forge_kernels::matvec(&rows, &[w])?;
    let product = one_row.map_or_else(|| rows.matmul(&w.t()?), Ok)?.reshape(out_dims)?;
    let w = w.clone();
    with_gradient("frozen matmul backward", x, product, move |grad| {
        grad.reshape(((), w.dim(0)?))?.matmul(&w)?.reshape(&x_shape)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_input_gets_the_gradient_of_a_plain_matmul_and_the_weight_none() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?.sin()?)?;
        let w = Tensor::arange(0f32, 12.0, &dev)?.reshape((4, 3))?.cos()?;
        let weights = Tensor::arange(0f32, 8.0, &dev)?.reshape((2, 4))?;
        let frozen = frozen_matmul(x.as_tensor(), &w)?;
        let w_t = w.t()?;
        let plain = x.as_tensor().matmul(&w_t)?;
        assert_eq!(frozen.to_vec2::<f32>()?, plain.to_vec2::<f32>()?);
        let g_frozen = (frozen * &weights)?.sum_all()?.backward()?;
        let g_plain = (plain * &weights)?.sum_all()?.backward()?;
        let (a, b) = (g_frozen.get(x.as_tensor()).unwrap(), g_plain.get(x.as_tensor()).unwrap());
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        assert!(
            g_plain.get(&w_t).is_some(),
            "candle's own matmul computes the weight's gradient (why this op exists)"
        );
        let weight_grads = |g: &candle_core::backprop::GradStore| {
            g.get_ids().filter(|&&id| id == w.id() || id == w_t.id()).count()
        };
        assert_eq!(weight_grads(&g_frozen), 0, "the frozen weight got a gradient");
        Ok(())
    }
}
