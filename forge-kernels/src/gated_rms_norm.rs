//! Gated DeltaNet's output norm (transformers' `Qwen3_5RMSNormGated`): per value head,
//! `w · (o / rms(o)) · silu(z)`. Unlike the decoder's norms it scales by `w`, not `1 + w`. The
//! statistics are in f32; the normalised value is cast to the model's dtype before the weight, and
//! the gate multiplies in f32, as transformers rounds. On CUDA one pass per row replaces about twelve
//! elementary ops (casts, square, mean, sqrt, reciprocal, products, SiLU).
use candle_core::{DType, Tensor, D};

#[cfg(feature = "cuda")]
use crate::forward_kernel;

/// The norm of `o` (f32, `(…, n)`, the delta rule's output) gated by `z` (the model's dtype, same
/// shape), with weight `w` `(n)`; the result is in `z`'s dtype.
pub fn gated_rms_norm(o: &Tensor, z: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = z.dtype();
    #[cfg(feature = "cuda")]
    if forward_kernel(&[z, w]) && o.dtype() == DType::F32 && !crate::tape::tracked(o) {
        use crate::launch::{launch_on_tensors, Scalar};
        let (n, rows) = (w.elem_count(), o.elem_count() / w.elem_count());
        let scalars = [Scalar::I32(n as i32), Scalar::F32(eps as f32), Scalar::I64(rows as i64)];
        return launch_on_tensors::<half::bf16>(
            "gated_rms_norm_bf16",
            &[o, z, w],
            o.shape(),
            warp_per_row(rows),
            &scalars,
        );
    }
    let o32 = o.to_dtype(dtype)?.to_dtype(DType::F32)?;
    let inv = (o32.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let normed = o32.broadcast_mul(&inv)?.to_dtype(dtype)?.broadcast_mul(w)?;
    normed.to_dtype(DType::F32)?.mul(&z.to_dtype(DType::F32)?.silu()?)?.to_dtype(dtype)
}

/// The launch of both kernels: a warp per row (a value head, 128 values in Qwen3.5), eight a block. A
/// block a row spent its time in two block-wide reductions: at qwen3.5-27b's 8 × 1024 × 48 rows on an
/// H200 (ncu) 307 → 177 µs forward, 513 → 352 µs backward.
#[cfg(feature = "cuda")]
fn warp_per_row(rows: usize) -> crate::launch::Grid {
    crate::launch::Grid::PerRow { rows: rows.div_ceil(8), threads: 256 }
}

/// The gradients of [`gated_rms_norm`] with respect to `o` (f32) and `z` (bf16), given the output's
/// `dy`, by one CUDA kernel pass per row from the f32 statistics; the weight is frozen. Elsewhere
/// candle's autograd through the elementary ops is the backward, and the reference `forge kernels`
/// checks this one against.
#[cfg(feature = "cuda")]
pub fn gated_rms_norm_backward(
    o: &Tensor,
    z: &Tensor,
    w: &Tensor,
    eps: f64,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    use crate::launch::{launch_on_tensors, Scalar};
    if !crate::on_kernel(&[z, w, dy]) || o.dtype() != DType::F32 {
        candle_core::bail!("gated_rms_norm_backward takes o in f32 and bf16 z, w and dy on a CUDA device");
    }
    let n = w.elem_count();
    let rows = o.elem_count() / n;
    let scalars = [Scalar::I32(n as i32), Scalar::F32(eps as f32), Scalar::I64(rows as i64)];
    let flat = launch_on_tensors::<f32>(
        "gated_rms_norm_backward_bf16",
        &[o, z, w, dy],
        2 * rows * n,
        warp_per_row(rows),
        &scalars,
    )?;
    let d_o = flat.narrow(0, 0, rows * n)?.reshape(o.shape())?;
    let d_z = flat.narrow(0, rows * n, rows * n)?.reshape(z.shape())?.to_dtype(z.dtype())?;
    Ok((d_o, d_z))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn scales_by_the_weight_itself_and_gates_by_silu() -> candle_core::Result<()> {
        let o = Tensor::new(&[[3f32, 4.0], [1.0, -1.0]], &Device::Cpu)?;
        let z = Tensor::new(&[[0f32, 2.0], [-1.0, 1.0]], &Device::Cpu)?;
        let w = Tensor::new(&[2f32, 0.5], &Device::Cpu)?;
        let got = gated_rms_norm(&o, &z, &w, 0.0)?.to_vec2::<f32>()?;
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let rms0 = (12.5f64).sqrt();
        let want = [
            [2.0 * 3.0 / rms0 * silu(0.0), 0.5 * 4.0 / rms0 * silu(2.0)],
            [2.0 * silu(-1.0), -0.5 * silu(1.0)],
        ];
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        Ok(())
    }
}
