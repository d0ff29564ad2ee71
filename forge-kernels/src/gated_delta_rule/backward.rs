//! The delta rule's backward pass, on the host: the recurrence walked back token by token with the
//! state's adjoint, the states it needs recomputed a chunk at a time.
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use super::{host, prepare, row, Dims, Head, Heads, Inputs, Kept, Projections, CHUNK};

/// The gradients of [`super::from_projections`] (from a zero state) with respect to its raw inputs
/// `conv`, `a` and `b`, given the outputs' `d_out`; `neg_a` and `dt_bias` are frozen. On CUDA (key
/// heads of 32, 64 or 128, as Qwen3.5's) the chunked form's backward ([`super::chunked_device`]), then
/// `gated_delta_prepare_backward_bf16` back through the preparation. Elsewhere the host walk below for
/// the rule and candle's autograd through the preparation's elementary ops, the reference the kernels
/// are checked against. What a forward `kept` ([`super::from_projections_keeping`]) is taken instead
/// of recomputed.
pub fn backward_from_projections(
    p: &Projections,
    heads: Heads,
    d_out: &Tensor,
    kept: Kept,
) -> candle_core::Result<[Tensor; 3]> {
    #[cfg(feature = "cuda")]
    if crate::on_kernel(&[p.conv, p.a, p.b]) && super::chunked_device::takes(heads) {
        return super::chunked_device::backward(p, heads, d_out, kept.groups);
    }
    let _ = kept; // the host's walk recomputes its states in any case
    let vars = [Var::from_tensor(p.conv)?, Var::from_tensor(p.a)?, Var::from_tensor(p.b)?];
    let inputs = Projections {
        conv: vars[0].as_tensor(),
        a: vars[1].as_tensor(),
        b: vars[2].as_tensor(),
        neg_a: p.neg_a,
        dt_bias: p.dt_bias,
    };
    let prepared = prepare(&inputs, heads)?;
    let [q, k, v, g, beta] = prepared.each_ref().map(|t| t.detach());
    let core = backward(&q, &k, &v, &g, &beta, d_out)?;
    // Σ prepared · its gradient, differentiated through the preparation, gives the raw inputs'.
    let mut total = Tensor::zeros((), DType::F32, p.conv.device())?;
    for (x, d) in prepared.iter().zip(&core) {
        total = (total + (x * d)?.sum_all()?)?;
    }
    let store = total.backward()?;
    let get = |v: &Var| {
        store
            .get(v.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("delta rule: no gradient".into()))
    };
    Ok([get(&vars[0])?, get(&vars[1])?, get(&vars[2])?])
}

/// Gradients of `Σ d_out · out` for the recurrent form's inputs (the same tensors as [`recurrent`]
/// and [`chunked`] take, from a zero state): `[dq, dk, dv, dg, dβ]`, in f32 on the inputs' device.
///
/// Per token the rule is `S̃ = e^g S`, `u = S̃ᵀk`, `δ = β(v − u)`, `S ← S̃ + kδᵀ`, `o = Sᵀq`; walking back
/// with the state's adjoint `dS`: `dS += q doᵀ`, `dq = S do`, `dδ = dSᵀk`, `dk = dS δ + S̃ du` with
/// `du = −β dδ`, `dβ = dδ·(v − u)`, `dv = β dδ`, `dg = ⟨S̃, dS + k duᵀ⟩`, then `dS ← e^g (dS + k duᵀ)`.
/// The states the walk needs are recomputed a chunk ([`CHUNK`] tokens) at a time from the state at the
/// chunk's start, the only ones kept: memory for one chunk's states per head, not one per token.
pub fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    d_out: &Tensor,
) -> candle_core::Result<[Tensor; 5]> {
    let inputs = Inputs::gather(q, k, v, g, beta, None)?;
    let Dims { batch, seq, heads, dk, dv } = inputs.dims;
    let d_out = host(d_out)?;
    let grads: Vec<HeadGrads> = inputs
        .heads
        .par_iter()
        .enumerate()
        .map(|(i, head)| {
            let (b, h) = (i / heads, i % heads);
            let d_o: Vec<f32> = (0..seq)
                .flat_map(|t| d_out[((b * seq + t) * heads + h) * dv..][..dv].iter().copied())
                .collect();
            backward_head(head, &d_o, dk, dv)
        })
        .collect();
    let scatter = |width: usize, part: fn(&HeadGrads) -> &[f32]| -> candle_core::Result<Tensor> {
        let mut out = vec![0f32; batch * seq * heads * width];
        for (i, g) in grads.iter().enumerate() {
            let (b, h) = (i / heads, i % heads);
            for t in 0..seq {
                out[((b * seq + t) * heads + h) * width..][..width]
                    .copy_from_slice(&part(g)[t * width..][..width]);
            }
        }
        let shape: Vec<usize> =
            if width == 1 { vec![batch, seq, heads] } else { vec![batch, seq, heads, width] };
        Tensor::from_vec(out, shape, &inputs.device)
    };
    Ok([
        scatter(dk, |g| &g.q)?,
        scatter(dk, |g| &g.k)?,
        scatter(dv, |g| &g.v)?,
        scatter(1, |g| &g.g)?,
        scatter(1, |g| &g.beta)?,
    ])
}

/// One head's gradients, token-major like [`Head`].
struct HeadGrads {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
}

/// One token of the recurrence from `s` (the state before it) to the new state: returns `u = S̃ᵀk`
/// and `δ`, and leaves the new state in `s`.
fn step(s: &mut [f32], k: &[f32], v: &[f32], g: f32, beta: f32, dv: usize) -> (Vec<f32>, Vec<f32>) {
    let decay = g.exp();
    s.iter_mut().for_each(|x| *x *= decay);
    let u: Vec<f32> = (0..dv).map(|j| k.iter().enumerate().map(|(i, ki)| s[i * dv + j] * ki).sum()).collect();
    let delta: Vec<f32> = (0..dv).map(|j| beta * (v[j] - u[j])).collect();
    for (i, ki) in k.iter().enumerate() {
        for j in 0..dv {
            s[i * dv + j] += ki * delta[j];
        }
    }
    (u, delta)
}

fn backward_head(head: &Head, d_o: &[f32], dk: usize, dv: usize) -> HeadGrads {
    let seq = head.g.len();
    let mut grads = HeadGrads {
        q: vec![0.0; seq * dk],
        k: vec![0.0; seq * dk],
        v: vec![0.0; seq * dv],
        g: vec![0.0; seq],
        beta: vec![0.0; seq],
    };
    // The state at each chunk's start, from one forward walk.
    let mut starts = Vec::with_capacity(seq.div_ceil(CHUNK));
    let mut s = vec![0f32; dk * dv];
    for t in 0..seq {
        if t % CHUNK == 0 {
            starts.push(s.clone());
        }
        step(&mut s, row(&head.k, t, dk), row(&head.v, t, dv), head.g[t], head.beta[t], dv);
    }
    let mut ds = vec![0f32; dk * dv];
    for (c, start) in starts.iter().enumerate().rev() {
        let (from, to) = (c * CHUNK, ((c + 1) * CHUNK).min(seq));
        // Each token's state after it, with its u and δ, recomputed from the chunk's start.
        let mut s = start.clone();
        let steps: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (from..to)
            .map(|t| {
                let (u, delta) =
                    step(&mut s, row(&head.k, t, dk), row(&head.v, t, dv), head.g[t], head.beta[t], dv);
                (s.clone(), u, delta)
            })
            .collect();
        for t in (from..to).rev() {
            let (s, u, delta) = &steps[t - from];
            let (q, k, v, d_o) =
                (row(&head.q, t, dk), row(&head.k, t, dk), row(&head.v, t, dv), row(d_o, t, dv));
            let beta = head.beta[t];
            for i in 0..dk {
                for j in 0..dv {
                    ds[i * dv + j] += q[i] * d_o[j];
                }
            }
            for i in 0..dk {
                grads.q[t * dk + i] = (0..dv).map(|j| s[i * dv + j] * d_o[j]).sum();
            }
            let d_delta: Vec<f32> = (0..dv).map(|j| (0..dk).map(|i| ds[i * dv + j] * k[i]).sum()).collect();
            let du: Vec<f32> = d_delta.iter().map(|d| -beta * d).collect();
            grads.beta[t] = (0..dv).map(|j| d_delta[j] * (v[j] - u[j])).sum();
            for (dv_j, d) in grads.v[t * dv..][..dv].iter_mut().zip(&d_delta) {
                *dv_j = beta * d;
            }
            // S̃ = S − kδᵀ; the decayed state's adjoint is dS + k duᵀ.
            let decay = head.g[t].exp();
            let mut dg = 0f32;
            for i in 0..dk {
                let mut dk_i = 0f32;
                for j in 0..dv {
                    let decayed = s[i * dv + j] - k[i] * delta[j];
                    dk_i += ds[i * dv + j] * delta[j] + decayed * du[j];
                    ds[i * dv + j] += k[i] * du[j];
                    dg += decayed * ds[i * dv + j];
                    ds[i * dv + j] *= decay;
                }
                grads.k[t * dk + i] = dk_i;
            }
            grads.g[t] = dg;
        }
    }
    grads
}
