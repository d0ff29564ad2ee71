//! Next-token negative log-likelihood of each row of logits, `logsumexp(row) − row[target]`, in f32.
//!
//! The CUDA kernel reads bf16 logits once per statistic and writes one float per row, where the
//! elementary path makes f32 copies of the whole `(rows, vocab)` block; its CPU reference computes in
//! f64. The backward, `softmax − onehot` scaled per row, has a kernel of its own.
use candle_core::{DType, Tensor, D};

use crate::on_kernel;

/// `logsumexp(logits[r]) - logits[r][targets[r]]` for every row, in f32 (no gradient: the caller attaches
/// its own with [`row_nll_backward`]).
pub fn row_nll(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if on_kernel(&[logits]) {
        return logits.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &RowNll);
    }
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let log_z = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, D::Minus1)?;
    (log_z - picked)?.squeeze(1)
}

/// The logits' gradient of [`row_nll`] given the rows' gradients `grad` `(rows)`:
/// `grad · (softmax(logits) − onehot(targets))`, the softmax in f32; in the logits' dtype.
pub fn row_nll_backward(logits: &Tensor, targets: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    let grad = grad.to_dtype(DType::F32)?;
    #[cfg(feature = "cuda")]
    if on_kernel(&[logits]) {
        use crate::launch::{launch_on_tensors, Grid, Scalar};
        let (rows, vocab) = logits.dims2()?;
        let grid = Grid::PerRow { rows, threads: 512 };
        let vocab = Scalar::I32(vocab as i32);
        return launch_on_tensors::<half::bf16>(
            "row_nll_backward_bf16",
            &[logits, targets, &grad],
            logits.shape(),
            grid,
            &[vocab],
        );
    }
    let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
    let minus_one = Tensor::full(-1f32, (probs.dim(0)?, 1), probs.device())?;
    probs
        .scatter_add(&targets.unsqueeze(1)?, &minus_one, 1)?
        .broadcast_mul(&grad.unsqueeze(1)?)?
        .to_dtype(logits.dtype())
}

/// [`row_nll`] as one op: the fused CUDA kernel on bf16 logits, and its CPU reference in f64 (what
/// `forge kernels` checks the kernel against).
pub struct RowNll;

impl candle_core::CustomOp2 for RowNll {
    fn name(&self) -> &'static str {
        "row-nll"
    }

    fn cpu_fwd(
        &self,
        logits: &candle_core::CpuStorage,
        ll: &candle_core::Layout,
        targets: &candle_core::CpuStorage,
        tl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::CpuStorage;
        let (Some((ls, le)), Some((ts, te))) = (ll.contiguous_offsets(), tl.contiguous_offsets()) else {
            return Err(candle_core::Error::RequiresContiguous { op: "row-nll" });
        };
        let values: Vec<f64> = match logits {
            CpuStorage::BF16(v) => v[ls..le].iter().map(|x| x.to_f64()).collect(),
            CpuStorage::F32(v) => v[ls..le].iter().map(|&x| x as f64).collect(),
            other => return Err(candle_core::Error::UnsupportedDTypeForOp(other.dtype(), "row-nll")),
        };
        let CpuStorage::U32(targets) = targets else {
            return Err(candle_core::Error::UnsupportedDTypeForOp(targets.dtype(), "row-nll"));
        };
        let vocab = ll.dims()[ll.dims().len() - 1];
        let nll: Vec<f32> = values
            .chunks(vocab)
            .zip(&targets[ts..te])
            .map(|(row, &t)| {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let log_z = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                (log_z - row[t as usize]) as f32
            })
            .collect();
        let rows = nll.len();
        Ok((CpuStorage::F32(nll), candle_core::Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        logits: &candle_core::CudaStorage,
        ll: &candle_core::Layout,
        targets: &candle_core::CudaStorage,
        tl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use crate::launch::{launch, Grid, Scalar};
        let (rows, vocab) = (tl.shape().elem_count(), ll.dims()[ll.dims().len() - 1]);
        let grid = Grid::PerRow { rows, threads: 512 };
        let nll = launch::<f32>(
            "row_nll_bf16",
            &[(logits, ll), (targets, tl)],
            rows,
            grid,
            &[Scalar::I32(vocab as i32)],
        )?;
        Ok((nll, candle_core::Shape::from(rows)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_fused_op_reference_matches_the_elementary_path() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let logits: Vec<f32> = (0..6 * 11).map(|i| ((i * 7 % 13) as f32 - 6.0) / 2.0).collect();
        let logits = Tensor::from_vec(logits, (6, 11), &dev)?.to_dtype(DType::BF16)?;
        let targets = Tensor::new(&[0u32, 10, 5, 5, 2, 7], &dev)?;
        let fused = logits.apply_op2_no_bwd(&targets, &RowNll)?.to_vec1::<f32>()?;
        let plain = row_nll(&logits, &targets)?.to_vec1::<f32>()?;
        for (a, b) in fused.iter().zip(&plain) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn the_backward_is_the_gradient_of_log_softmax() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let logits =
            candle_core::Var::from_tensor(&Tensor::arange(0f32, 21.0, &dev)?.reshape((3, 7))?.sin()?)?;
        let targets = Tensor::new(&[0u32, 6, 3], &dev)?;
        let weights = Tensor::new(&[1f32, -2.0, 0.5], &dev)?;
        let log_p = candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1)?;
        let picked = log_p.gather(&targets.unsqueeze(1)?, D::Minus1)?.squeeze(1)?.neg()?;
        let autograd = (picked * &weights)?.sum_all()?.backward()?;
        let want = autograd.get(logits.as_tensor()).expect("the logits get a gradient");
        let got = row_nll_backward(logits.as_tensor(), &targets, &weights)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "gradients differ by {diff}");
        Ok(())
    }
}
