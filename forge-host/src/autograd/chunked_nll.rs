//! Next-token negative log-likelihood over vocabulary chunks.
//!
//! Full logits are `rows × vocab` floats: for a batch of 8 × 1024 tokens and a 150k vocabulary that is
//! 5 GB in f32. Projecting a bounded number of rows at a time keeps the peak to one chunk, and the
//! log-softmax is taken in f32 so bf16 models lose nothing in the loss. Training keeps the bound: no
//! logits outlive their chunk. A row's gradient is a scalar times `(softmax − onehot)·W`, so training
//! forms that product while the chunk's logits are at hand and keeps it (`rows × dim`, 16 MB at
//! qwen3.5-0.8b's 8 × 1024 × 1024 in bf16); the backward only scales its rows. Recomputing the logits
//! in the backward instead cost a third of the head's products: 6 ms of a 0.8b step on an H200
//! (docs/BENCHMARKS.md, ninth session).
use candle_core::{DType, Tensor};
use forge_kernels::{row_nll, row_nll_backward};

use super::custom_grad::with_gradient;

/// Bytes of f32 logits one chunk may hold.
const CHUNK_BYTES: usize = 256 << 20;

/// Rows per chunk so that one chunk's logits stay within [`CHUNK_BYTES`].
pub fn rows_per_chunk(vocab: usize) -> usize {
    (CHUNK_BYTES / (vocab * 4)).max(1)
}

/// `f(start, len)` over consecutive row chunks of at most `chunk` of `rows`, concatenated along rows: the
/// loop of every chunked loss, forward and backward.
pub(super) fn map_row_chunks(
    rows: usize,
    chunk: usize,
    mut f: impl FnMut(usize, usize) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let parts = (0..rows)
        .step_by(chunk)
        .map(|start| f(start, chunk.min(rows - start)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// NLL of `targets` `(rows)` under `hidden · lm_headᵀ`, for `hidden` `(rows, dim)`; returns `(rows)` in
/// f32, differentiable with respect to `hidden` (never `lm_head`).
pub fn chunked_nll(hidden: &Tensor, lm_head: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let rows = hidden.dim(0)?;
    let chunk = rows_per_chunk(lm_head.dim(0)?);
    let flat = hidden.detach();
    let logits = |start: usize, len: usize| flat.narrow(0, start, len)?.matmul(&lm_head.t()?);
    if !hidden.track_op() {
        return map_row_chunks(rows, chunk, |start, len| {
            row_nll(&logits(start, len)?, &targets.narrow(0, start, len)?)
        });
    }
    let mut unit_grads = Vec::new();
    let nll = map_row_chunks(rows, chunk, |start, len| {
        let (logits, targets) = (logits(start, len)?, targets.narrow(0, start, len)?);
        let ones = Tensor::ones(len, DType::F32, logits.device())?;
        unit_grads.push(row_nll_backward(&logits, &targets, &ones)?.to_dtype(flat.dtype())?.matmul(lm_head)?);
        row_nll(&logits, &targets)
    })?;
    let unit_grads = Tensor::cat(&unit_grads, 0)?;
    with_gradient("row nll backward", hidden, nll, move |grad| {
        let scale = grad.to_dtype(DType::F32)?.unsqueeze(1)?;
        unit_grads.to_dtype(DType::F32)?.broadcast_mul(&scale)?.to_dtype(unit_grads.dtype())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn gradient_matches_elementary_log_softmax() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let h = candle_core::Var::from_tensor(&Tensor::arange(0f32, 15.0, &dev)?.reshape((5, 3))?.sin()?)?;
        let w = Tensor::arange(0f32, 21.0, &dev)?.reshape((7, 3))?.cos()?;
        let t = Tensor::new(&[0u32, 6, 3, 3, 1], &dev)?;
        let weights = Tensor::new(&[1f32, -2.0, 0.5, 3.0, 1.5], &dev)?;
        let ours = (chunked_nll(h.as_tensor(), &w, &t)? * &weights)?.sum_all()?.backward()?;
        let log_p = candle_nn::ops::log_softmax(&h.as_tensor().matmul(&w.t()?)?, D::Minus1)?;
        let picked = log_p.gather(&t.unsqueeze(1)?, D::Minus1)?.squeeze(1)?.neg()?;
        let reference = (picked * &weights)?.sum_all()?.backward()?;
        let (a, b) = (ours.get(h.as_tensor()).unwrap(), reference.get(h.as_tensor()).unwrap());
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "gradients differ by {diff}");
        Ok(())
    }

    #[test]
    fn matches_log_softmax_computed_in_f64() -> candle_core::Result<()> {
        let (rows, dim, vocab) = (5, 3, 7);
        let h: Vec<f32> = (0..rows * dim).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
        let w: Vec<f32> = (0..vocab * dim).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let t: Vec<u32> = vec![0, 6, 3, 3, 1];
        let dev = Device::Cpu;
        let nll = chunked_nll(
            &Tensor::from_vec(h.clone(), (rows, dim), &dev)?,
            &Tensor::from_vec(w.clone(), (vocab, dim), &dev)?,
            &Tensor::from_vec(t.clone(), rows, &dev)?,
        )?
        .to_vec1::<f32>()?;
        for r in 0..rows {
            let logits: Vec<f64> = (0..vocab)
                .map(|v| (0..dim).map(|k| h[r * dim + k] as f64 * w[v * dim + k] as f64).sum())
                .collect();
            let log_z = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            let want = log_z - logits[t[r] as usize];
            assert!((nll[r] as f64 - want).abs() < 1e-5, "row {r}: {} vs {want}", nll[r]);
        }
        Ok(())
    }
}
