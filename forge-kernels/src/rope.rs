//! Rotary position embeddings, `x·cos + rotate_half(x)·sin`, with the two halves of each head rotated
//! together (transformers' layout). candle's fused `rope` has no backward, so the general path is
//! elementary ops; forge's kernel also writes its output heads-first, which saves attention a
//! transpose copy. Tables narrower than the head rotate only its first dimensions and pass the rest
//! through (Qwen3.5's partial RoPE: 64 of 256 in its full-attention heads), in the same pass.
use candle_core::{DType, Tensor, D};

use crate::profile::section;
use crate::{on_kernel, tape};

/// Rotates `x` `(batch, heads, seq, d)` by tables `cos` and `sin` `(1, 1, seq, d)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Rotates `x` `(batch, seq, heads, d)` and returns it heads-first, `(batch, heads, seq, d)`, as
/// attention needs it. Tables `(1, 1, seq, rot)` with `rot < d` rotate the first `rot` dimensions only.
pub fn rope_heads_first(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if on_kernel(&[x, cos, sin]) {
        let (cos, sin) = (cos.squeeze(0)?.squeeze(0)?, sin.squeeze(0)?.squeeze(0)?);
        return tape::apply_op3(&tape::contiguous(x)?, &cos.contiguous()?, &sin.contiguous()?, FusedRope);
    }
    let rotate = |v: &[Tensor]| Ok((rope_heads_first_elementary(&v[0], &v[1], &v[2])?, ()));
    Ok(tape::through_graph("rope", &[x, cos, sin], rotate)?.0)
}

/// [`rope_heads_first`] by candle's ops.
fn rope_heads_first_elementary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.transpose(1, 2)?.contiguous()?;
    let (d, rot) = (x.dim(D::Minus1)?, cos.dim(D::Minus1)?);
    if rot == d {
        return rope(&x, cos, sin);
    }
    let turned = rope(&x.narrow(D::Minus1, 0, rot)?.contiguous()?, cos, sin)?;
    Tensor::cat(&[&turned, &x.narrow(D::Minus1, rot, d - rot)?], D::Minus1)
}

/// The scalars of both RoPE kernels: dimensions and the rotated width.
#[cfg(feature = "cuda")]
fn dims_scalars(b: usize, s: usize, h: usize, d: usize, rot: usize) -> [crate::launch::Scalar; 5] {
    [b, s, h, d, rot].map(|v| crate::launch::Scalar::I32(v as i32))
}

/// [`rope_heads_first`] as one op: forge's CUDA kernel, and on the CPU the elementary ops
/// it replaces (its reference, which `forge kernels` checks it against). The backward rotates the
/// gradient back (the transpose of the rotation) and restores the `(batch, seq, heads, d)` layout; the
/// tables are constants and get none.
pub struct FusedRope;

impl candle_core::CustomOp3 for FusedRope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        cos: &candle_core::CpuStorage,
        cl: &candle_core::Layout,
        sin: &candle_core::CpuStorage,
        sl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::CpuStorage;
        use half::bf16;
        let (CpuStorage::BF16(x), CpuStorage::BF16(cos), CpuStorage::BF16(sin)) = (x, cos, sin) else {
            return Err(candle_core::Error::UnsupportedDTypeForOp(x.dtype(), "rope"));
        };
        let offsets = |l: &candle_core::Layout| {
            l.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op: "rope" })
        };
        let ((xs, _), (cs, _), (ss, _)) = (offsets(xl)?, offsets(cl)?, offsets(sl)?);
        let (b, s, h, d) = xl.shape().dims4()?;
        let rot = cl.dims()[1];
        let half = rot / 2;
        let round = |v: f32| bf16::from_f32(v).to_f32();
        let mut y = vec![bf16::ZERO; b * s * h * d];
        for (bi, si, hi) in
            (0..b).flat_map(|bi| (0..s).flat_map(move |si| (0..h).map(move |hi| (bi, si, hi))))
        {
            let xr = &x[xs + ((bi * s + si) * h + hi) * d..][..d];
            let yr = &mut y[((bi * h + hi) * s + si) * d..][..d];
            let (c, sn) = (&cos[cs + si * rot..][..rot], &sin[ss + si * rot..][..rot]);
            yr[rot..].copy_from_slice(&xr[rot..]);
            for i in 0..half {
                let (x1, x2) = (xr[i].to_f32(), xr[i + half].to_f32());
                yr[i] = bf16::from_f32(round(x1 * c[i].to_f32()) + round(-x2 * sn[i].to_f32()));
                yr[i + half] =
                    bf16::from_f32(round(x2 * c[i + half].to_f32()) + round(x1 * sn[i + half].to_f32()));
            }
        }
        Ok((CpuStorage::BF16(y), candle_core::Shape::from((b, h, s, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &candle_core::Layout,
        cos: &candle_core::CudaStorage,
        cl: &candle_core::Layout,
        sin: &candle_core::CudaStorage,
        sl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use crate::launch::{launch, Grid};
        let (b, s, h, d) = xl.shape().dims4()?;
        let n = b * s * h * d;
        let y = launch::<half::bf16>(
            "rope_bf16",
            &[(x, xl), (cos, cl), (sin, sl)],
            n,
            Grid::Stride(n / 2),
            &dims_scalars(b, s, h, d, cl.dims()[1]),
        )?;
        Ok((y, candle_core::Shape::from((b, h, s, d))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        section("rope backward", x.device(), || {
            #[cfg(feature = "cuda")]
            if on_kernel(&[x, cos]) {
                use crate::launch::{launch_on_tensors, Grid};
                let (b, h, s, d) = grad.dims4()?;
                let dy = grad.to_dtype(DType::BF16)?;
                let scalars = dims_scalars(b, s, h, d, cos.dim(1)?);
                let dx = launch_on_tensors::<half::bf16>(
                    "rope_backward_bf16",
                    &[&dy, cos, sin],
                    (b, s, h, d),
                    Grid::Stride(b * s * h * d / 2),
                    &scalars,
                )?;
                return Ok((Some(dx), None, None));
            }
            let (d, rot) = (x.dim(D::Minus1)?, cos.dim(D::Minus1)?);
            let half = rot / 2;
            let all = grad.to_dtype(DType::F32)?;
            let dy = all.narrow(D::Minus1, 0, rot)?;
            // y = x·cos + [−x₂, x₁]·sin, so dx = dy·cos + [z₂, −z₁] with z = dy·sin; the dimensions
            // past `rot` pass through.
            let z = dy.broadcast_mul(&sin.to_dtype(DType::F32)?)?;
            let back = Tensor::cat(
                &[&z.narrow(D::Minus1, half, half)?, &z.narrow(D::Minus1, 0, half)?.neg()?],
                D::Minus1,
            )?;
            let dx = (dy.broadcast_mul(&cos.to_dtype(DType::F32)?)? + back)?;
            let dx = if rot < d {
                Tensor::cat(&[&dx, &all.narrow(D::Minus1, rot, d - rot)?], D::Minus1)?
            } else {
                dx
            };
            Ok((Some(dx.transpose(1, 2)?.contiguous()?.to_dtype(x.dtype())?), None, None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Tables of positions 3..8 rotating `rot` dimensions.
    fn tables(dtype: DType, rot: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let angles: Vec<f32> = (3..8)
            .flat_map(|p| (0..rot).map(move |i| p as f32 / 10f32.powf((i % (rot / 2)) as f32)))
            .collect();
        let angles = Tensor::from_vec(angles, (1, 1, 5, rot), &Device::Cpu)?;
        Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
    }

    /// The fused op's CPU reference against the elementary ops, whole and partial (4 of 8 dimensions
    /// rotated, the rest passed through), forward and backward.
    #[test]
    fn the_fused_op_reference_equals_the_elementary_ops_in_bf16() -> candle_core::Result<()> {
        for rot in [8, 4] {
            fused_equals_elementary(rot)?;
        }
        Ok(())
    }

    fn fused_equals_elementary(rot: usize) -> candle_core::Result<()> {
        let (cos4, sin4) = tables(DType::BF16, rot)?;
        let values: Vec<f32> = (0..2 * 5 * 3 * 8).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let x = Tensor::from_vec(values, (2, 5, 3, 8), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let (cos, sin) = (cos4.squeeze(0)?.squeeze(0)?, sin4.squeeze(0)?.squeeze(0)?);
        let fused = x.apply_op3_no_bwd(&cos, &sin, &FusedRope)?;
        let plain = rope_heads_first(&x, &cos4, &sin4)?;
        assert_eq!(fused.dims(), plain.dims());
        let diff = (fused.to_dtype(DType::F32)? - plain.to_dtype(DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff <= 1e-2, "rot {rot}: fused and elementary rope differ by {diff}");
        let kept = fused.narrow(3, rot, 8 - rot)?.transpose(1, 2)?.to_dtype(DType::F32)?;
        let passed = x.narrow(3, rot, 8 - rot)?.to_dtype(DType::F32)?;
        assert_eq!(kept.flatten_all()?.to_vec1::<f32>()?, passed.flatten_all()?.to_vec1::<f32>()?);
        // The backward, against autograd through the elementary ops in f32.
        let weights: Vec<f32> = (0..2 * 3 * 5 * 8).map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0).collect();
        let weights = Tensor::from_vec(weights, (2, 3, 5, 8), &Device::Cpu)?;
        let (cos32, sin32) = tables(DType::F32, rot)?;
        let grad = |fused: bool| -> candle_core::Result<Vec<f32>> {
            let v =
                candle_core::Var::from_tensor(&x.to_dtype(if fused { DType::BF16 } else { DType::F32 })?)?;
            let y = if fused {
                v.as_tensor().apply_op3(&cos, &sin, FusedRope)?
            } else {
                rope_heads_first(v.as_tensor(), &cos32, &sin32)?
            };
            let store = (y.to_dtype(DType::F32)? * &weights)?.sum_all()?.backward()?;
            store.get(v.as_tensor()).unwrap().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        };
        for (a, b) in grad(true)?.iter().zip(grad(false)?) {
            assert!((a - b).abs() <= 2e-2 * (1.0 + b.abs()), "rot {rot}: gradient {a} vs {b}");
        }
        Ok(())
    }
}
