//! The delta rule from a Gated DeltaNet layer's raw tensors: their preparation (q/k L2 norms, q's
//! scale, the repeat of key heads to the value heads they serve, the decay and β) in elementary ops,
//! then the CPU forms; or, on CUDA, the preparation kernel, then the chunked form
//! (`chunked_device.rs`) or, for a decoding step, the recurrent kernel.
use candle_core::{DType, Tensor, D};

use super::{chunked, recurrent, Heads, Kept, Projections};

/// The rule from a layer's raw inputs, continuing from `state` `(batch, value_heads, key_dim,
/// value_dim)` (f32) when given: the outputs `(batch, seq, value_heads, value_dim)` and the final
/// state, both f32. A one-token step with a state takes the recurrent form, anything else the chunked
/// one (on CUDA, the kernel).
pub fn from_projections(
    p: &Projections,
    state: Option<&Tensor>,
    heads: Heads,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (out, state, _) = forms(p, state, heads, false)?;
    Ok((out, state))
}

/// [`from_projections`] from a zero state, for a backward that follows at once (a checkpointed layer
/// run again): on CUDA the chunked form keeps its solve, products and state walk ([`Kept`]), which
/// [`super::backward_from_projections`] then takes instead of recomputing them; elsewhere nothing is
/// kept (the host's backward walks the recurrence again in any case).
pub fn from_projections_keeping(
    p: &Projections,
    heads: Heads,
) -> candle_core::Result<(Tensor, Tensor, Kept)> {
    forms(p, None, heads, true)
}

/// The choice of form for both, with what the chunked form on CUDA kept when `keep`.
fn forms(
    p: &Projections,
    state: Option<&Tensor>,
    heads: Heads,
    keep: bool,
) -> candle_core::Result<(Tensor, Tensor, Kept)> {
    if !heads.value_heads.is_multiple_of(heads.key_heads) {
        candle_core::bail!(
            "gated delta rule: {} value heads cannot share {} key heads",
            heads.value_heads,
            heads.key_heads
        );
    }
    #[cfg(feature = "cuda")]
    if crate::forward_kernel(&[p.conv, p.a, p.b]) && super::chunked_device::takes(heads) {
        return on_device(p, state, heads, keep);
    }
    let _ = keep; // the host's forms keep nothing: its backward walks the recurrence again
    let [q, k, v, g, beta] = prepare(p, heads)?;
    let (out, state) = if q.dim(1)? == 1 && state.is_some() {
        recurrent(&q, &k, &v, &g, &beta, state)?
    } else {
        chunked(&q, &k, &v, &g, &beta, state)?
    };
    Ok((out, state, Kept::default()))
}

/// q, k (L2-normalised, q scaled by `1/√dk`, repeated to the value heads), v, g and β in f32, as the
/// forms take them; elementary ops, so autograd differentiates them (the backward of
/// [`from_projections`] goes through here).
pub fn prepare(p: &Projections, h: Heads) -> candle_core::Result<[Tensor; 5]> {
    let (b, s, _) = p.conv.dims3()?;
    let kd = h.key_heads * h.key_dim;
    let part = |from: usize, n: usize, d: usize| {
        p.conv.narrow(2, from, n * d)?.reshape((b, s, n, d))?.to_dtype(DType::F32)
    };
    let (q, k) = (part(0, h.key_heads, h.key_dim)?, part(kd, h.key_heads, h.key_dim)?);
    let v = part(2 * kd, h.value_heads, h.value_dim)?;
    let serve = |t: &Tensor| -> candle_core::Result<Tensor> {
        let r = h.value_heads / h.key_heads;
        let t = l2_normalise(t)?;
        if r == 1 {
            return Ok(t);
        }
        t.unsqueeze(3)?.broadcast_as((b, s, h.key_heads, r, h.key_dim))?.reshape((
            b,
            s,
            h.value_heads,
            h.key_dim,
        ))
    };
    let q = (serve(&q)? / (h.key_dim as f64).sqrt())?;
    let k = serve(&k)?;
    let beta = candle_nn::ops::sigmoid(&p.b.to_dtype(DType::F32)?)?;
    let a = p.a.to_dtype(DType::F32)?.broadcast_add(p.dt_bias)?;
    let g = softplus(&a)?.broadcast_mul(p.neg_a)?;
    Ok([q, k, v, g, beta])
}

/// `x / sqrt(Σx² + 1e-6)` over the last dimension (flash-linear-attention's convention).
fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(&(x.sqr()?.sum_keepdim(D::Minus1)? + 1e-6)?.sqrt()?.recip()?)
}

/// `log(1 + eˣ)`, as PyTorch computes it: x itself above 20.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let smooth = (x.exp()? + 1.0)?.log()?;
    x.gt(20.0)?.where_cond(x, &smooth)
}

/// On CUDA: more than one token takes the chunked form ([`super::chunked_device`]); a decoding step
/// prepares q, k, g and β with one kernel, then the recurrence writes the outputs, then the final
/// state, into one f32 buffer (and keeps nothing: decoding does not train).
#[cfg(feature = "cuda")]
fn on_device(
    p: &Projections,
    state: Option<&Tensor>,
    h: Heads,
    keep: bool,
) -> candle_core::Result<(Tensor, Tensor, Kept)> {
    use crate::launch::{launch_on_tensors, Grid, Scalar};
    let (b, s, _) = p.conv.dims3()?;
    let rows = b * s;
    let state_shape = (b, h.value_heads, h.key_dim, h.value_dim);
    let state = match state {
        Some(state) => state.clone(),
        None => Tensor::zeros(state_shape, DType::F32, p.conv.device())?,
    };
    if s > 1 {
        let (out, state, groups) = super::chunked_device::forward(p, &state, h, keep)?;
        return Ok((out, state, Kept { groups }));
    }
    let prepared = super::chunked_device::prepared_on_device(p, h)?;
    let kernel = match h.key_dim {
        32 => "gated_delta_rule_dk32",
        64 => "gated_delta_rule_dk64",
        _ => "gated_delta_rule_dk128",
    };
    // key_dim / 32 lanes share a state column, so a warp takes 1024 / key_dim columns (see the kernel).
    let columns = 1024 / h.key_dim;
    let (outputs, states) = (rows * h.value_heads * h.value_dim, b * h.value_heads * h.key_dim * h.value_dim);
    let grid = Grid::PerRow { rows: b * h.value_heads * h.value_dim.div_ceil(columns), threads: 32 };
    let scalars = [b, s, h.key_heads, h.value_heads, h.value_dim].map(|v| Scalar::I32(v as i32));
    let flat =
        launch_on_tensors::<f32>(kernel, &[&prepared, p.conv, &state], outputs + states, grid, &scalars)?;
    let out = flat.narrow(0, 0, outputs)?.reshape((b, s, h.value_heads, h.value_dim))?;
    Ok((out, flat.narrow(0, outputs, states)?.reshape(state_shape)?, Kept::default()))
}
