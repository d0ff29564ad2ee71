//! Gated DeltaNet's causal depthwise convolution then SiLU (transformers' `causal_conv1d_fn` /
//! `causal_conv1d_update` paths of `Qwen3_5GatedDeltaNet`): each channel is convolved with its own
//! `taps` weights over the current and previous `taps − 1` inputs, with the previous inputs of a
//! continuing sequence taken from a state (zeros at a sequence's start). One function serves a prompt
//! and a one-token decoding step. On CUDA one kernel pass replaces the concatenation, `taps` products
//! and sums and the SiLU (2 + 2·taps launches, each a pass over `(batch, seq, channels)`).
use candle_core::Tensor;

#[cfg(feature = "cuda")]
use crate::forward_kernel;

/// `silu(conv(x))` over `x` `(batch, seq, channels)` with `weight` `(channels, taps)`, continuing from
/// `state` `(batch, taps − 1, channels)` when given. Returns the output and the next state (the last
/// `taps − 1` inputs).
pub fn causal_conv_silu(
    x: &Tensor,
    weight: &Tensor,
    state: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, s, channels) = x.dims3()?;
    let taps = weight.dim(1)?;
    let before = match state {
        Some(state) => state.clone(),
        None => Tensor::zeros((b, taps - 1, channels), x.dtype(), x.device())?,
    };
    let weight = weight.to_dtype(x.dtype())?;
    #[cfg(feature = "cuda")]
    if forward_kernel(&[x, &weight, &before]) && on_kernel_shape(channels, taps) {
        use crate::launch::{aligned8, launch_on_tensors, Scalar};
        let (outputs, total) = (b * s * channels, (b * (s + taps - 1)) * channels);
        let scalars = [b, s, channels, taps].map(|v| Scalar::I32(v as i32));
        let flat = launch_on_tensors::<half::bf16>(
            "causal_conv_silu_bf16",
            &[&aligned8(x)?, &aligned8(&weight)?, &aligned8(&before)?],
            total,
            grid(b * (s + taps - 1), channels),
            &scalars,
        )?;
        let out = flat.narrow(0, 0, outputs)?.reshape((b, s, channels))?;
        let tail = flat.narrow(0, outputs, total - outputs)?.reshape((b, taps - 1, channels))?;
        return Ok((out, tail));
    }
    let padded = Tensor::cat(&[&before, x], 1)?;
    let tap = |i: usize| weight.narrow(1, i, 1)?.squeeze(1);
    let mut out = padded.narrow(1, 0, s)?.broadcast_mul(&tap(0)?)?;
    for i in 1..taps {
        out = (out + padded.narrow(1, i, s)?.broadcast_mul(&tap(i)?)?)?;
    }
    let tail = padded.narrow(1, s, taps - 1)?.contiguous()?;
    Ok((out.silu()?, tail))
}

/// Whether the kernels take `channels` and `taps`: they read eight channels a load, with their four
/// taps' weights (Qwen3.5: 4 taps, channels a multiple of 128).
pub fn on_kernel_shape(channels: usize, taps: usize) -> bool {
    channels.is_multiple_of(8) && taps == 4
}

/// The kernels' launch over `rows` rows of `channels`: a block a row, a thread per eight channels.
#[cfg(feature = "cuda")]
fn grid(rows: usize, channels: usize) -> crate::launch::Grid {
    let threads = (channels / 8).div_ceil(32).clamp(1, 8) as u32 * 32;
    crate::launch::Grid::PerRow { rows, threads }
}

/// The gradient of [`causal_conv_silu`] (from a zero state) with respect to `x`, given the output's
/// `dy`, by one CUDA kernel, which recomputes each pre-activation it needs from `x`, so the forward
/// keeps nothing but `x`; the weights are frozen. Elsewhere candle's autograd through the elementary
/// ops is the backward, and the reference `forge kernels` checks this one against.
#[cfg(feature = "cuda")]
pub fn causal_conv_silu_backward(x: &Tensor, weight: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
    use crate::launch::{aligned8, launch_on_tensors, Scalar};
    let weight = weight.to_dtype(x.dtype())?;
    let (b, s, channels) = x.dims3()?;
    let taps = weight.dim(1)?;
    if !crate::on_kernel(&[x, &weight, dy]) || !on_kernel_shape(channels, taps) {
        candle_core::bail!(
            "causal_conv_silu_backward takes bf16 tensors on a CUDA device, channels a multiple of 8 and \
             4 taps (got {channels} channels, {taps} taps)"
        );
    }
    let scalars = [b, s, channels, taps].map(|v| Scalar::I32(v as i32));
    launch_on_tensors::<half::bf16>(
        "causal_conv_silu_backward_bf16",
        &[&aligned8(x)?, &aligned8(&weight)?, &aligned8(dy)?],
        x.shape(),
        grid(b * s, channels),
        &scalars,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The convolution written out in f64, from the definition.
    #[test]
    fn matches_the_definition_and_continues_from_its_state() -> candle_core::Result<()> {
        let (b, s, c, taps) = (2, 6, 3, 4);
        let xs: Vec<f32> = (0..b * s * c).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
        let ws: Vec<f32> = (0..c * taps).map(|i| ((i * 5 % 7) as f32 - 3.0) / 3.0).collect();
        let x = Tensor::from_vec(xs.clone(), (b, s, c), &Device::Cpu)?;
        let w = Tensor::from_vec(ws.clone(), (c, taps), &Device::Cpu)?;
        let (whole, tail) = causal_conv_silu(&x, &w, None)?;
        let whole = whole.to_dtype(DType::F64)?.to_vec3::<f64>()?;
        for (bi, t, ch) in (0..b).flat_map(|bi| (0..s).flat_map(move |t| (0..c).map(move |ch| (bi, t, ch)))) {
            let acc: f64 = (0..taps)
                .filter(|k| t + k + 1 >= taps)
                .map(|k| xs[(bi * s + t + k + 1 - taps) * c + ch] as f64 * ws[ch * taps + k] as f64)
                .sum();
            let want = acc / (1.0 + (-acc).exp());
            assert!(
                (whole[bi][t][ch] - want).abs() < 1e-6,
                "({bi}, {t}, {ch}): {} vs {want}",
                whole[bi][t][ch]
            );
        }
        assert_eq!(tail.to_vec3::<f32>()?, x.narrow(1, s - 3, 3)?.to_vec3::<f32>()?);
        // The first four tokens, then the last two from the state: the same outputs.
        let (first, state) = causal_conv_silu(&x.narrow(1, 0, 4)?, &w, None)?;
        let (rest, _) = causal_conv_silu(&x.narrow(1, 4, 2)?, &w, Some(&state))?;
        let stepped = Tensor::cat(&[&first, &rest], 1)?.to_dtype(DType::F64)?.to_vec3::<f64>()?;
        assert_eq!(stepped, whole);
        Ok(())
    }
}
