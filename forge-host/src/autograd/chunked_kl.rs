//! KL divergence from a teacher's next-token distribution to the student's, over vocabulary chunks,
//! for distillation: `KL(p_t ‖ p_s)` per row with both distributions softened by a temperature T,
//! `p = softmax(h · Wᵀ / T)`. As [`chunked_nll`](super::chunked_nll) does, it keeps no logits: the
//! forward projects a bounded number of rows at a time. Each row's KL depends on that row's hidden
//! state alone, so the forward also forms its gradient `∂KL/∂h_s = (p_s − p_t) · W_s / T` while both
//! chunks are at hand, and the backward only scales those rows by the incoming gradient. Recomputing
//! both sides' log-softmax in the backward, as this did first, cost two vocabulary-sized products
//! (of five) and about 16 vocabulary-sized elementwise passes (of some 30) more than this, where the
//! vocabulary dominates the head (distillation ran at 0.53 of plain LoRA's tokens/s on qwen3.5-0.8b,
//! 248k tokens, H200, docs/BENCHMARKS.md; the new form is not yet measured there). What it keeps is
//! `rows × dim`, the size of the hidden states. The teacher's hidden states come in detached (no
//! gradient reaches the teacher).
use candle_core::{DType, Tensor, D};

use super::chunked_nll::{map_row_chunks, rows_per_chunk};
use super::custom_grad::with_gradient;

/// Log-softmax of `h · wᵀ / t` in f32, `(rows, vocab)`.
fn log_probs(h: &Tensor, w: &Tensor, t: f64) -> candle_core::Result<Tensor> {
    let z = (h.matmul(&w.t()?)?.to_dtype(DType::F32)? / t)?;
    let max = z.max_keepdim(D::Minus1)?;
    let shifted = z.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// `KL(p_t ‖ p_s)` per row `(rows)` in f32, for student hidden states `student` `(rows, dim)` under
/// `student_head`, and teacher ones under `teacher_head`, at temperature `t`; differentiable with
/// respect to `student` (never the heads or the teacher).
pub fn chunked_kl(
    student: &Tensor,
    student_head: &Tensor,
    teacher: &Tensor,
    teacher_head: &Tensor,
    t: f64,
) -> candle_core::Result<Tensor> {
    let rows = student.dim(0)?;
    let chunk = rows_per_chunk(student_head.dim(0)?);
    let (s, tch) = (student.detach(), teacher.detach());
    let mut row_grads = Vec::new();
    let kl = map_row_chunks(rows, chunk, |start, len| {
        let log_t = log_probs(&tch.narrow(0, start, len)?, teacher_head, t)?;
        let h = s.narrow(0, start, len)?;
        let log_s = log_probs(&h, student_head, t)?;
        let p_t = log_t.exp()?;
        let d_logits = ((log_s.exp()? - &p_t)? / t)?;
        row_grads.push(d_logits.to_dtype(h.dtype())?.matmul(student_head)?);
        (p_t * (log_t - log_s)?)?.sum(D::Minus1)
    })?;
    let row_grads = Tensor::cat(&row_grads, 0)?;
    with_gradient("chunked kl backward", student, kl, move |grad| {
        row_grads.broadcast_mul(&grad.to_dtype(row_grads.dtype())?.unsqueeze(1)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, k: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * k % 23) as f32 - 11.0) / 9.0).collect()
    }

    /// The KL and its gradient against central finite differences, in f64.
    #[test]
    fn gradient_matches_finite_differences() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (rows, dim, vocab, t) = (3, 4, 7, 2.0);
        let head = Tensor::from_vec(values(vocab * dim, 5), (vocab, dim), &dev)?.to_dtype(DType::F64)?;
        let teacher = Tensor::from_vec(values(rows * dim, 7), (rows, dim), &dev)?.to_dtype(DType::F64)?;
        let student = Var::from_tensor(
            &Tensor::from_vec(values(rows * dim, 11), (rows, dim), &dev)?.to_dtype(DType::F64)?,
        )?;
        let weights = Tensor::new(&[1.0f32, -0.5, 2.0], &dev)?;
        let loss = |h: &Tensor| -> candle_core::Result<f64> {
            (chunked_kl(h, &head, &teacher, &head, t)? * &weights)?
                .sum_all()?
                .to_scalar::<f32>()
                .map(f64::from)
        };
        let kl = chunked_kl(student.as_tensor(), &head, &teacher, &head, t)?;
        assert!(kl.to_vec1::<f32>()?.iter().all(|&v| v > 0.0), "a KL between different rows is positive");
        assert!(chunked_kl(&teacher, &head, &teacher, &head, t)?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.abs() < 1e-6));
        let grads = (kl * &weights)?.sum_all()?.backward()?;
        let analytic = grads.get(student.as_tensor()).expect("a gradient").flatten_all()?.to_vec1::<f64>()?;
        let base = student.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        for (i, a) in analytic.iter().enumerate() {
            let bumped = |d: f64| -> candle_core::Result<f64> {
                let mut v = base.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, (rows, dim), &dev)?)
            };
            let numeric = (bumped(1e-3)? - bumped(-1e-3)?) / 2e-3;
            assert!(
                (numeric - a).abs() < 1e-3 * (1.0 + a.abs()),
                "element {i}: numeric {numeric} vs analytic {a}"
            );
        }
        Ok(())
    }
}
