//! Causal attention of grouped query heads, `softmax(scale · q·kᵀ + mask) · v`, with a backward that
//! recomputes the probabilities: on CUDA at heads of 64 and 128, forge's flash-attention backward,
//! which makes them again tile by tile on chip; elsewhere through the score matrix.
//!
//! Through candle's autograd, training kept every layer's `(batch, heads, seq, seq)` scores and
//! probabilities for the backward, and the backward made f32 copies of both: about 0.5 GB a layer at
//! 8 × 1024 on qwen2.5-0.5b, most of the memory of a LoRA step. Here the forward runs outside the graph
//! and only q, k and v are kept; the backward recomputes the probabilities from them with one more
//! q·kᵀ, as flash attention does. On CUDA the forward is forge's flash-attention kernel where no
//! observer asks for the probabilities; it writes no score-sized tensor at all.
use candle_core::Tensor;

use super::custom_grad::with_gradients;
use forge_kernels::profile::section;
use forge_kernels::tape;
use forge_kernels::{causal_softmax, causal_softmax_backward, flash_attention, flash_attention_backward};

/// The sizes of one attention call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    scale: f64,
    past: usize,
}

impl Dims {
    /// Query heads per KV head.
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The query heads of a KV group are consecutive, so viewing `(batch, heads, seq, x)` as
    /// `(batch, kv_heads, groups·seq, x)` lets each group meet its one K/V head in a single batched
    /// matmul, without copying K and V per query head.
    fn grouped(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.reshape((self.batch, self.kv_heads, self.groups() * self.seq, t.dim(3)?))
    }

    fn per_head(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.reshape((self.batch, self.heads, self.seq, t.dim(3)?))
    }

    /// `(batch, kv_heads, groups·seq, d)` as `(batch, seq, heads·d)`, the layout `o_proj` reads.
    fn tokens_first(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let d = t.dim(3)?;
        forge_kernels::transpose12(&self.per_head(t)?)?.reshape((self.batch, self.seq, self.heads * d))
    }

    /// The inverse of [`Dims::tokens_first`].
    fn grouped_from_tokens_first(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let d = t.dim(2)? / self.heads;
        self.grouped(&forge_kernels::transpose12(&t.reshape((self.batch, self.seq, self.heads, d))?)?)
    }
}

/// Attends `q` `(batch, heads, seq, head_dim)` over `k` and `v` `(batch, kv_heads, past + seq, head_dim)`,
/// where query position i sees keys `0..=past + i`. Returns the output `(batch, seq, heads · head_dim)`
/// (the heads' outputs side by side, as `o_proj` reads them: the transpose happens outside the graph,
/// where it costs the backward no extra copy) and, when `probabilities` asks for them (observers),
/// outside the graph, the probabilities `(batch, heads, seq, past + seq)`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    past: usize,
    probabilities: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (batch, heads, seq, head_dim) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if heads % kv_heads != 0 {
        candle_core::bail!("{heads} query heads cannot share {kv_heads} KV heads");
    }
    let scale = 1.0 / (head_dim as f64).sqrt();
    let dims = Dims { batch, heads, kv_heads, seq, scale, past };
    let (q0, k0, v0) = (tape::detach(q)?, tape::detach(k)?, tape::detach(v)?);
    let device = q.device();
    let flash = match probabilities {
        false => section("attention (flash)", device, || flash_attention(&q0, &k0, &v0, past))?,
        true => None,
    };
    let (out, probs) = match flash {
        Some(out) => (out, None),
        None => {
            let scores = section("attention q·kᵀ", device, || scores(&q0, &k0, &dims))?;
            let probs = section("attention softmax", device, || causal_softmax(&scores, scale, past))?;
            drop(scores);
            let out =
                section("attention p·v", device, || dims.tokens_first(&dims.grouped(&probs)?.matmul(&v0)?))?;
            (out, probabilities.then_some(probs))
        }
    };
    let kept = out.clone();
    let out = with_gradients("attention backward", [q, k, v], out, move |grad| {
        let [gq, gk, gv] = match flash_attention_backward(&q0, &k0, &v0, &kept, grad, past)? {
            Some(grads) => grads,
            None => backward(&q0, &k0, &v0, grad, &dims)?,
        };
        Ok([Some(gq), Some(gk), Some(gv)])
    })?;
    Ok((out, probs))
}

/// The unscaled scores q·kᵀ, `(batch, heads, seq, total)`.
fn scores(q: &Tensor, k: &Tensor, dims: &Dims) -> candle_core::Result<Tensor> {
    dims.per_head(&dims.grouped(q)?.matmul(&k.t()?)?)
}

/// The gradients of q, k and v from the output's: with P the probabilities (recomputed) and dO the
/// output's gradient, dV = Pᵀ·dO, dS = softmax backward of dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q; the
/// grouped view sums each KV head's gradient over its query heads.
fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    dims: &Dims,
) -> candle_core::Result<[Tensor; 3]> {
    let probs = causal_softmax(&scores(q, k, dims)?, dims.scale, dims.past)?;
    let grad = dims.grouped_from_tokens_first(&grad.to_dtype(q.dtype())?)?;
    let grad_probs = dims.per_head(&grad.matmul(&v.t()?)?)?;
    let grad_scores = causal_softmax_backward(&probs, &grad_probs, dims.scale, dims.past)?;
    drop(grad_probs);
    let (probs, grad_scores) = (dims.grouped(&probs)?, dims.grouped(&grad_scores)?);
    let gv = probs.t()?.matmul(&grad)?;
    drop(probs);
    let gq = dims.per_head(&grad_scores.matmul(k)?)?;
    let gk = grad_scores.t()?.matmul(&dims.grouped(q)?)?;
    Ok([gq, gk, gv])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    fn tensor(shape: (usize, usize, usize, usize), seed: usize) -> candle_core::Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f64> = (0..n).map(|i| (((i + seed) * 37 % 23) as f64 - 11.0) / 9.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// Attention from elementary ops with candle's own backward, GQA by repeating K and V per query
    /// head, in f64: the reference.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, past: usize) -> candle_core::Result<Tensor> {
        let (_, heads, seq, d) = q.dims4()?;
        let (b, kv, total, _) = k.dims4()?;
        let repeat = |t: &Tensor| -> candle_core::Result<Tensor> {
            let g = heads / kv;
            t.unsqueeze(2)?.repeat((1, 1, g, 1, 1))?.reshape((b, heads, total, d))
        };
        let mask: Vec<f64> = (0..seq)
            .flat_map(|i| (0..total).map(move |j| if j > past + i { f64::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (seq, total), q.device())?;
        let scores = (q.matmul(&repeat(k)?.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
        let out = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&repeat(v)?)?;
        out.transpose(1, 2)?.reshape((b, seq, heads * d))
    }

    fn rel_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
        let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
        let num = (&a - &b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        Ok(num / b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?)
    }

    /// q, k, v of 4 query heads sharing 2 KV heads, `past` cached positions, and loss weights.
    fn inputs(past: usize, dtype: DType) -> candle_core::Result<[Tensor; 4]> {
        let (b, heads, kv, seq, d) = (2, 4, 2, 3, 4);
        Ok([
            tensor((b, heads, seq, d), 1)?.to_dtype(dtype)?,
            tensor((b, kv, past + seq, d), 2)?.to_dtype(dtype)?,
            tensor((b, kv, past + seq, d), 3)?.sin()?.to_dtype(dtype)?,
            tensor((b, seq, heads, d), 4)?.cos()?.reshape((b, seq, heads * d))?.to_dtype(dtype)?,
        ])
    }

    fn gradients(
        attend: &dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
        past: usize,
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let [q, k, v, weights] = inputs(past, dtype)?;
        let vars = [Var::from_tensor(&q)?, Var::from_tensor(&k)?, Var::from_tensor(&v)?];
        let out = attend(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor())?;
        let grads = (&out * weights)?.sum_all()?.backward()?;
        let grads =
            vars.iter().map(|v| grads.get(v.as_tensor()).expect("every input gets a gradient").clone());
        Ok((out, grads.collect()))
    }

    #[test]
    fn output_and_gradients_match_elementary_attention() -> candle_core::Result<()> {
        for past in [0, 2] {
            let (want, want_grads) = gradients(&|q, k, v| reference(q, k, v, past), past, DType::F64)?;
            let (got, got_grads) =
                gradients(&|q, k, v| Ok(causal_attention(q, k, v, past, false)?.0), past, DType::F32)?;
            assert!(rel_diff(&got, &want)? < 1e-6, "past {past}: output");
            for (name, (g, w)) in ["q", "k", "v"].iter().zip(got_grads.iter().zip(&want_grads)) {
                assert!(rel_diff(g, w)? < 1e-5, "past {past}: gradient of {name} off by {}", rel_diff(g, w)?);
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> candle_core::Result<()> {
        let past = 1;
        let (_, analytic) =
            gradients(&|q, k, v| Ok(causal_attention(q, k, v, past, false)?.0), past, DType::F32)?;
        let [q, k, v, weights] = inputs(past, DType::F64)?;
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> candle_core::Result<f64> {
            (reference(q, k, v, past)? * &weights)?.sum_all()?.to_scalar::<f64>()
        };
        let eps = 1e-4;
        for (which, analytic) in analytic.iter().enumerate() {
            let base = [&q, &k, &v][which];
            let flat = base.flatten_all()?.to_vec1::<f64>()?;
            let analytic = analytic.flatten_all()?.to_vec1::<f32>()?;
            for i in (0..flat.len()).step_by(5) {
                let nudged = |delta: f64| -> candle_core::Result<f64> {
                    let mut x = flat.clone();
                    x[i] += delta;
                    let x = Tensor::from_vec(x, base.shape(), base.device())?;
                    let mut args = [q.clone(), k.clone(), v.clone()];
                    args[which] = x;
                    loss(&args[0], &args[1], &args[2])
                };
                let numeric = (nudged(eps)? - nudged(-eps)?) / (2.0 * eps);
                assert!(
                    (numeric - analytic[i] as f64).abs() < 1e-4,
                    "input {which} entry {i}: numeric {numeric} vs analytic {}",
                    analytic[i]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn nothing_is_joined_without_a_tracked_input() -> candle_core::Result<()> {
        let [q, k, v, _] = inputs(0, DType::F32)?;
        let (out, probs) = causal_attention(&q, &k, &v, 0, true)?;
        let probs = probs.expect("asked for");
        assert!(!out.track_op() && !probs.track_op());
        assert_eq!(probs.dims4()?, (2, 4, 3, 3));
        assert!(causal_attention(&q, &k, &v, 0, false)?.1.is_none());
        Ok(())
    }
}
