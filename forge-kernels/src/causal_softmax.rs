//! Scaled, causally masked softmax over attention scores, as one custom op with a backward.
//!
//! Done with elementary ops this is six passes over a `(batch, heads, seq, seq)` f32 tensor (scale,
//! add mask, max, subtract, exp, sum, divide) and a materialised mask; on the CPU those passes, not
//! the matmuls, dominated evaluation. The op does it in one parallel pass that never touches the
//! masked half. candle's own fused softmax has no backward; this one has, and a finite-difference
//! test checks it.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::on_kernel;
use rayon::prelude::*;

/// `softmax(scale · x + causal mask)` over the last dimension of `(…, seq, past + seq)` f32 scores,
/// where row i of each `seq` block may see columns `0..=past + i`.
pub fn causal_softmax(scores: &Tensor, scale: f64, past: usize) -> candle_core::Result<Tensor> {
    let dtype = scores.dtype();
    let op = CausalSoftmax { scale, past };
    if on_kernel(&[scores]) || (scores.device().is_cpu() && dtype == DType::F32) {
        return scores.contiguous()?.apply_op1(op);
    }
    if scores.device().is_cpu() {
        return scores.to_dtype(DType::F32)?.contiguous()?.apply_op1(op)?.to_dtype(dtype);
    }
    masked_softmax(&scores.to_dtype(DType::F32)?, scale, past)?.to_dtype(dtype)
}

/// The same function for dtypes the kernel does not take on a GPU (f32, f16): scale, mask and softmax as
/// elementary ops, which have a backward. (No model runs this way by default: CUDA runs bf16.)
fn masked_softmax(scores: &Tensor, scale: f64, past: usize) -> candle_core::Result<Tensor> {
    let (seq, total) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (seq, total), scores.device())?;
    candle_nn::ops::softmax(&(scores * scale)?.broadcast_add(&mask)?, D::Minus1)
}

/// With p the softmax output and g its gradient: the input gradient p · (g − Σ g·p).
fn softmax_backward(grad: &Tensor, probs: &Tensor) -> candle_core::Result<Tensor> {
    let dot = (grad * probs)?.sum_keepdim(D::Minus1)?;
    grad.broadcast_sub(&dot)? * probs
}

struct CausalSoftmax {
    scale: f64,
    past: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            return Err(candle_core::Error::UnsupportedDTypeForOp(storage.dtype(), "causal-softmax"));
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or(candle_core::Error::RequiresContiguous { op: "causal-softmax" })?;
        let dims = layout.dims();
        let (seq, total) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let scale = self.scale as f32;
        let mut out = vec![0f32; end - start];
        out.par_chunks_mut(total).zip(data[start..end].par_chunks(total)).enumerate().for_each(
            |(row, (o, x))| {
                let visible = (self.past + row % seq + 1).min(total);
                let max = x[..visible].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
                let mut sum = 0f32;
                for (o, &v) in o[..visible].iter_mut().zip(&x[..visible]) {
                    *o = (v * scale - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o[..visible].iter_mut().for_each(|o| *o *= inv);
            },
        );
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let rows = row_scalars(layout, self.scale, self.past);
        crate::launch::same_shape::<half::bf16>("causal_softmax_bf16", &[(storage, layout)], rows.0, &rows.1)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(causal_softmax_backward(res, grad, self.scale, self.past)?))
    }
}

/// The gradient of the scores of [`causal_softmax`] from its output p and the output's gradient g:
/// scale · p · (g − Σ g·p) over each row, in f32 whatever the dtype, as the forward's arithmetic.
/// Masked entries have p = 0 and get no gradient; the op reads only the visible ones.
pub fn causal_softmax_backward(
    probs: &Tensor,
    grad: &Tensor,
    scale: f64,
    past: usize,
) -> candle_core::Result<Tensor> {
    let dtype = probs.dtype();
    let op = CausalSoftmaxBackward { scale, past };
    if on_kernel(&[probs]) || (probs.device().is_cpu() && dtype == DType::F32) {
        return probs.contiguous()?.apply_op2_no_bwd(&grad.to_dtype(dtype)?.contiguous()?, &op);
    }
    let (p, g) = (probs.to_dtype(DType::F32)?, grad.to_dtype(DType::F32)?);
    (softmax_backward(&g, &p)? * scale)?.to_dtype(dtype)
}

/// The grid and scalars of both softmax kernels: one block per row, `(seq, total, past, scale)`.
#[cfg(feature = "cuda")]
fn row_scalars(
    layout: &Layout,
    scale: f64,
    past: usize,
) -> (crate::launch::Grid, [crate::launch::Scalar; 4]) {
    use crate::launch::{Grid, Scalar};
    let dims = layout.dims();
    let (seq, total) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    (
        Grid::PerRow { rows: layout.shape().elem_count() / total, threads: 256 },
        [
            Scalar::I32(seq as i32),
            Scalar::I32(total as i32),
            Scalar::I32(past as i32),
            Scalar::F32(scale as f32),
        ],
    )
}

struct CausalSoftmaxBackward {
    scale: f64,
    past: usize,
}

impl CustomOp2 for CausalSoftmaxBackward {
    fn name(&self) -> &'static str {
        "causal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        probs: &CpuStorage,
        pl: &Layout,
        grad: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (probs, grad) else {
            return Err(candle_core::Error::UnsupportedDTypeForOp(probs.dtype(), self.name()));
        };
        let op = self.name();
        let ((ps, pe), (gs, ge)) = (
            pl.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op })?,
            gl.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op })?,
        );
        if pl.shape() != gl.shape() {
            return Err(candle_core::Error::Msg(format!("{op}: probabilities and gradient differ in shape")));
        }
        let dims = pl.dims();
        let (seq, total) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let scale = self.scale as f32;
        let mut out = vec![0f32; pe - ps];
        out.par_chunks_mut(total)
            .zip(p[ps..pe].par_chunks(total).zip(g[gs..ge].par_chunks(total)))
            .enumerate()
            .for_each(|(row, (o, (p, g)))| {
                let visible = (self.past + row % seq + 1).min(total);
                let dot: f32 = p[..visible].iter().zip(&g[..visible]).map(|(p, g)| p * g).sum();
                for ((o, &p), &g) in o[..visible].iter_mut().zip(&p[..visible]).zip(&g[..visible]) {
                    *o = scale * p * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), pl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        probs: &candle_core::CudaStorage,
        pl: &Layout,
        grad: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        if pl.shape() != gl.shape() {
            return Err(candle_core::Error::Msg(format!(
                "{}: probabilities and gradient differ in shape",
                self.name()
            )));
        }
        let rows = row_scalars(pl, self.scale, self.past);
        crate::launch::same_shape::<half::bf16>(
            "causal_softmax_backward_bf16",
            &[(probs, pl), (grad, gl)],
            rows.0,
            &rows.1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn scores(shape: (usize, usize, usize, usize)) -> candle_core::Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 5.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn rel_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
        let num = (a - b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        let den = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        Ok(num / den)
    }

    #[test]
    fn forward_matches_masked_softmax_with_and_without_past() -> candle_core::Result<()> {
        for past in [0, 3] {
            let x = scores((2, 3, 4, 4 + past))?;
            let got = causal_softmax(&x, 0.7, past)?;
            assert!(rel_diff(&got, &reference(&x, 0.7, past)?)? < 1e-6, "past {past}");
            assert!(
                rel_diff(&masked_softmax(&x, 0.7, past)?, &reference(&x, 0.7, past)?)? < 1e-6,
                "past {past}"
            );
        }
        Ok(())
    }

    /// The elementary ops of `candle_nn::ops::softmax`, which have a backward: the reference for both paths.
    fn reference(scores: &Tensor, scale: f64, past: usize) -> candle_core::Result<Tensor> {
        let (seq, total) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        candle_nn::ops::softmax(
            &(scores * scale)?.broadcast_add(&Tensor::from_vec(mask, (seq, total), scores.device())?)?,
            D::Minus1,
        )
    }

    #[test]
    fn both_paths_have_the_gradient_of_the_elementary_softmax() -> candle_core::Result<()> {
        let x = Var::from_tensor(&scores((1, 2, 3, 5))?)?;
        let weights = scores((1, 2, 3, 5))?.cos()?;
        let grad = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| -> candle_core::Result<Tensor> {
            let g = (f(x.as_tensor())? * &weights)?.sum_all()?.backward()?;
            Ok(g.get(x.as_tensor()).expect("scores get a gradient").clone())
        };
        let want = grad(&|t| reference(t, 0.9, 2))?;
        assert!(rel_diff(&grad(&|t| causal_softmax(t, 0.9, 2))?, &want)? < 1e-5);
        assert!(rel_diff(&grad(&|t| masked_softmax(t, 0.9, 2))?, &want)? < 1e-5);
        Ok(())
    }

    #[test]
    fn backward_matches_finite_differences() -> candle_core::Result<()> {
        let x = Var::from_tensor(&scores((1, 2, 3, 5))?)?;
        // A loss that weighs every output differently, so every gradient entry matters.
        let weights = scores((1, 2, 3, 5))?.sin()?;
        let loss = |t: &Tensor| -> candle_core::Result<Tensor> {
            (causal_softmax(t, 0.9, 2)? * &weights)?.sum_all()
        };
        let grads = loss(x.as_tensor())?.backward()?;
        let analytic =
            grads.get(x.as_tensor()).expect("the scores get a gradient").flatten_all()?.to_vec1::<f32>()?;
        let base = x.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let eps = 1e-2f32;
        for i in 0..base.len() {
            let mut plus = base.clone();
            let mut minus = base.clone();
            plus[i] += eps;
            minus[i] -= eps;
            let at = |v: Vec<f32>| -> candle_core::Result<f32> {
                loss(&Tensor::from_vec(v, (1, 2, 3, 5), &Device::Cpu)?)?.to_scalar::<f32>()
            };
            let numeric = (at(plus)? - at(minus)?) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 2e-3,
                "entry {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
        }
        Ok(())
    }

    #[test]
    fn other_dtypes_compute_in_f32_and_keep_their_dtype() -> candle_core::Result<()> {
        let x = scores((1, 2, 3, 5))?.to_dtype(DType::BF16)?;
        let got = causal_softmax(&x, 0.7, 2)?;
        assert_eq!(got.dtype(), DType::BF16);
        let want = reference(&x.to_dtype(DType::F32)?, 0.7, 2)?;
        assert!(rel_diff(&got.to_dtype(DType::F32)?, &want)? < 4e-3);
        Ok(())
    }
}
