//! RMS norm, `x / sqrt(mean(x²) + eps) · w` over the last dimension. Like transformers, the statistics
//! are taken in f32 whatever the model's dtype, and the result is cast back before the weight is
//! applied; or, in Qwen3.5's convention ([`rms_norm_f32_weight`]: the weight `1 + w` in f32), after. candle's fused `rms_norm` has no backward (gradients through it silently vanish), so the
//! general path is elementary ops; forge's kernel (one pass, with a recomputing backward) serves while
//! the weight is frozen.
use candle_core::{DType, Tensor, D};

use crate::profile::section;
use crate::{on_kernel, tape};

/// The norm of `x` with weight `w`: the fused op where it runs and the weight takes no gradient (it
/// gives the weight none), else elementary ops.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if on_kernel(&[x, w]) && !w.track_op() {
        return tape::apply_op2(&tape::contiguous(x)?, w, FusedRmsNorm { eps });
    }
    let norm = |v: &[Tensor]| {
        let (x, w) = (&v[0], &v[1]);
        let x32 = x.to_dtype(DType::F32)?;
        let inv_rms = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        Ok((x32.broadcast_mul(&inv_rms)?.to_dtype(x.dtype())?.broadcast_mul(w)?, ()))
    };
    Ok(tape::through_graph("rms norm", &[x, w], norm)?.0)
}

/// Qwen3.5's norm: `x / rms · w` with `w` in f32 (its `1 + weight`, formed at load), all in f32 and
/// rounded once at the end, as transformers' `Qwen3_5RMSNorm`. The fused op where it runs (CUDA, a
/// frozen weight), else elementary ops: about ten f32 passes, each kept for the backward in training.
pub fn rms_norm_f32_weight(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if on_kernel(&[x]) && w.dtype() == DType::F32 && !w.device().is_cpu() && !w.track_op() {
        return tape::apply_op2(&tape::contiguous(x)?, w, FusedRmsNorm { eps });
    }
    let norm = |v: &[Tensor]| {
        let (x, w) = (&v[0], &v[1]);
        let x32 = x.to_dtype(DType::F32)?;
        let inv_rms = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        Ok((x32.broadcast_mul(&inv_rms)?.broadcast_mul(w)?.to_dtype(x.dtype())?, ()))
    };
    Ok(tape::through_graph("rms norm", &[x, w], norm)?.0)
}

/// The norm as one op: forge's CUDA kernel, and on the CPU the same rounding steps (its reference,
/// which `forge kernels` checks it against). A bf16 weight is applied after rounding, an f32 one
/// before ([`rms_norm_f32_weight`]). The backward recomputes the statistics in f32 from the
/// kept input: `dx = r·(g·w) − x·r³·mean(x·g·w)` with `r = 1/√(mean(x²) + eps)`; the weight, frozen
/// wherever this op is used, gets no gradient.
pub struct FusedRmsNorm {
    /// Added to the mean square.
    pub eps: f64,
}

impl candle_core::CustomOp2 for FusedRmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        w: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::CpuStorage;
        use half::bf16;
        let (Some((xs, xe)), Some((ws, we))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            return Err(candle_core::Error::RequiresContiguous { op: "rms-norm" });
        };
        // Each weight convention as a function of (x · r, weight index).
        let scaled: Box<dyn Fn(f32, usize) -> f32> = match (x, w) {
            (CpuStorage::BF16(_), CpuStorage::BF16(w)) => {
                let w = w[ws..we].to_vec();
                Box::new(move |v, j| bf16::from_f32(v).to_f32() * w[j].to_f32())
            }
            (CpuStorage::BF16(_), CpuStorage::F32(w)) => {
                let w = w[ws..we].to_vec();
                Box::new(move |v, j| v * w[j])
            }
            _ => return Err(candle_core::Error::UnsupportedDTypeForOp(x.dtype(), "rms-norm")),
        };
        let CpuStorage::BF16(x) = x else { unreachable!("matched above") };
        let n = we - ws;
        let y: Vec<bf16> = x[xs..xe]
            .chunks(n)
            .flat_map(|row| {
                let mean = row.iter().map(|v| v.to_f32().powi(2)).sum::<f32>() / row.len() as f32;
                let r = 1.0 / (mean + self.eps as f32).sqrt();
                row.iter()
                    .enumerate()
                    .map(|(j, v)| bf16::from_f32(scaled(v.to_f32() * r, j)))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok((CpuStorage::BF16(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &candle_core::Layout,
        w: &candle_core::CudaStorage,
        wl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (n, len) = (wl.shape().elem_count(), xl.shape().elem_count());
        let (kernel, grid, scalars) = norm_launch(Pass::Forward, w.dtype() == DType::F32, n, len, self.eps);
        crate::launch::same_shape::<half::bf16>(kernel, &[(x, xl), (w, wl)], grid, &scalars)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        section("rms norm backward", x.device(), || {
            #[cfg(feature = "cuda")]
            if on_kernel(&[x]) && !w.device().is_cpu() {
                let f32_weight = w.dtype() == DType::F32;
                let (kernel, grid, scalars) =
                    norm_launch(Pass::Backward, f32_weight, w.elem_count(), x.elem_count(), self.eps);
                let dy = grad.to_dtype(DType::BF16)?;
                let dx = crate::launch::launch_on_tensors::<half::bf16>(
                    kernel,
                    &[x, w, &dy],
                    x.shape(),
                    grid,
                    &scalars,
                )?;
                return Ok((Some(dx), None));
            }
            let x32 = x.to_dtype(DType::F32)?;
            let gw = grad.to_dtype(DType::F32)?.broadcast_mul(&w.to_dtype(DType::F32)?)?;
            let r = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
            let dot = (&x32 * &gw)?.mean_keepdim(D::Minus1)?;
            let dx = (gw.broadcast_mul(&r)? - x32.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?;
            Ok((Some(dx.to_dtype(x.dtype())?), None))
        })
    }
}

/// What a norm kernel computes.
#[cfg(feature = "cuda")]
#[derive(Clone, Copy)]
enum Pass {
    Forward,
    Backward,
    /// The forward of a residual add's sum.
    AddForward,
}

/// The kernel, grid and scalars of a norm `pass` over rows of `n` values, `len` in all: rows of up to
/// 256 values (Qwen3's q/k norms over a head) take a warp each, eight to a block; longer rows (the
/// hidden states) a block each.
#[cfg(feature = "cuda")]
fn norm_launch(
    pass: Pass,
    f32_weight: bool,
    n: usize,
    len: usize,
    eps: f64,
) -> (&'static str, crate::launch::Grid, [crate::launch::Scalar; 3]) {
    use crate::launch::{Grid, Scalar};
    const WARPS: usize = 8;
    // By pass; then a bf16 or f32 weight, a block or a warp a row.
    const KERNELS: [[&str; 4]; 3] = [
        ["rms_norm_bf16", "rms_norm_f32w_bf16", "rms_norm_warp_bf16", "rms_norm_f32w_warp_bf16"],
        [
            "rms_norm_backward_bf16",
            "rms_norm_f32w_backward_bf16",
            "rms_norm_backward_warp_bf16",
            "rms_norm_f32w_backward_warp_bf16",
        ],
        [
            "add_rms_norm_bf16",
            "add_rms_norm_f32w_bf16",
            "add_rms_norm_warp_bf16",
            "add_rms_norm_f32w_warp_bf16",
        ],
    ];
    let rows = len / n;
    let warp = n <= 256;
    let kernel = KERNELS[pass as usize][f32_weight as usize + 2 * warp as usize];
    let grid = match warp {
        true => Grid::PerRow { rows: rows.div_ceil(WARPS), threads: (32 * WARPS) as u32 },
        false => Grid::PerRow { rows, threads: 256 },
    };
    (kernel, grid, [Scalar::I32(n as i32), Scalar::F32(eps as f32), Scalar::I64(rows as i64)])
}

/// `(a + b, norm(a + b))`: a residual add and the norm that follows it as one kernel, both outputs
/// equal to [`residual_add`](crate::residual_add) then the norm's kernel bit for bit (`forge kernels`
/// checks it); the weight's dtype picks the convention, as in [`FusedRmsNorm`]. `None` where it does
/// not apply: not bf16 on CUDA, or an input that takes a gradient (training keeps the two ops, each
/// with its backward). In decoding a layer's two norms each follow a residual add: at qwen3-4b, 72
/// launches a token fewer.
#[cfg(feature = "cuda")]
pub fn add_rms_norm(
    a: &Tensor,
    b: &Tensor,
    w: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    let n = w.elem_count();
    let fits = a.shape() == b.shape()
        && a.dims().last() == Some(&n)
        && matches!(w.dtype(), DType::BF16 | DType::F32);
    if !fits || !crate::forward_kernel(&[a, b]) || w.device().is_cpu() || tape::tracked(w) {
        return Ok(None);
    }
    let len = a.elem_count();
    let (kernel, grid, scalars) = norm_launch(Pass::AddForward, w.dtype() == DType::F32, n, len, eps);
    let out =
        crate::launch::launch_on_tensors::<half::bf16>(kernel, &[a, b, w], (2, len / n, n), grid, &scalars)?;
    Ok(Some((out.get(0)?.reshape(a.shape())?, out.get(1)?.reshape(a.shape())?)))
}

/// Without CUDA, the add and the norm stay two ops.
#[cfg(not(feature = "cuda"))]
pub fn add_rms_norm(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: f64,
) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CustomOp2, Device};

    #[test]
    fn the_fused_op_reference_equals_the_elementary_ops_in_bf16() -> candle_core::Result<()> {
        let x: Vec<f32> = (0..4 * 6).map(|i| ((i * 5 % 13) as f32 - 6.0) / 2.5).collect();
        let x = Tensor::from_vec(x, (4, 6), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let w = Tensor::new(&[0.5f32, 1.0, 1.5, -1.0, 2.0, 0.25], &Device::Cpu)?.to_dtype(DType::BF16)?;
        let op = FusedRmsNorm { eps: 1e-6 };
        assert_eq!(op.name(), "rms-norm");
        let fused = x.apply_op2_no_bwd(&w, &op)?.to_dtype(DType::F32)?;
        let plain = rms_norm(&x, &w, 1e-6)?.to_dtype(DType::F32)?;
        let diff = (fused - plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-2, "fused and elementary norm differ by {diff}");
        // The backward, against autograd through the elementary ops in f32.
        let weights: Vec<f32> = (0..4 * 6).map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0).collect();
        let weights = Tensor::from_vec(weights, (4, 6), &Device::Cpu)?;
        let grad = |fused: bool| -> candle_core::Result<Vec<f32>> {
            let dtype = if fused { DType::BF16 } else { DType::F32 };
            let v = candle_core::Var::from_tensor(&x.to_dtype(dtype)?)?;
            let y = if fused {
                v.as_tensor().apply_op2(&w, FusedRmsNorm { eps: 1e-6 })?
            } else {
                rms_norm(v.as_tensor(), &w.to_dtype(DType::F32)?, 1e-6)?
            };
            let store = (y.to_dtype(DType::F32)? * &weights)?.sum_all()?.backward()?;
            store.get(v.as_tensor()).unwrap().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        };
        for (a, b) in grad(true)?.iter().zip(grad(false)?) {
            assert!((a - b).abs() <= 2e-2 * (1.0 + b.abs()), "gradient {a} vs {b}");
        }
        Ok(())
    }

    /// Qwen3.5's convention through the fused op's reference equals the elementary ops in f32 rounded
    /// once: the weight (here `1 + w`, in f32) is applied before the cast.
    #[test]
    fn the_f32_weight_reference_rounds_once_after_the_weight() -> candle_core::Result<()> {
        let x: Vec<f32> = (0..3 * 5).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let x = Tensor::from_vec(x, (3, 5), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let w = Tensor::new(&[1.5f32, 0.75, 1.0, 1.25, 0.9], &Device::Cpu)?;
        let fused = x.apply_op2_no_bwd(&w, &FusedRmsNorm { eps: 1e-6 })?.to_dtype(DType::F32)?;
        let plain = rms_norm_f32_weight(&x, &w, 1e-6)?.to_dtype(DType::F32)?;
        assert_eq!(fused.to_vec2::<f32>()?, plain.to_vec2::<f32>()?);
        Ok(())
    }
}
