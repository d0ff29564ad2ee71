//! The gated delta rule of Gated DeltaNet (Qwen3.5's linear attention), per value head, in f32 with
//! an f32 state, in its two forms:
//!
//! - **recurrent**, one token at a time, for decoding with a state cache:
//!   `S ← S·exp(g_t)`, `δ = β_t (v_t − Sᵀk_t)`, `S ← S + k_t δᵀ`, `o_t = Sᵀq_t`;
//! - **chunked**, for prefill, evaluation and training: chunks of 64 tokens, where the updates inside a
//!   chunk are folded into one lower-triangular solve (the UT transform of the DeltaNet papers) and a few
//!   products, and the state crosses chunk boundaries only: far fewer sequential steps than tokens.
//!
//! Both follow transformers' `torch_chunk_gated_delta_rule` / `torch_recurrent_gated_delta_rule`
//! (5.x) step for step, so forge's numbers are transformers' numbers; the tests hold both against a
//! float64 step-by-step reference, on lengths that are not multiples of the chunk. Inputs are already
//! prepared by the layer: q and k L2-normalised per head, q scaled by `1/√dk`, k and q repeated to the
//! value heads, `g = −exp(A_log)·softplus(a + dt_bias)` (≤ 0) and `β = sigmoid(b)`.
//!
//! [`from_projections`] is what the layer calls: it takes the layer's raw tensors (the convolution's
//! output holding q, k and v, and the `a` and `b` projections), prepares them as above and runs the
//! rule. On the CPU that is elementary ops then plain loops over each head (heads in parallel). On
//! CUDA `gated_delta_prepare_bf16` normalises q and k and forms g and β in parallel over tokens; then
//! more than one token takes the chunked form as cuBLAS products batched over every chunk with
//! forge's kernels between them (`chunked_device.rs`, which says why and has the formulas), and a
//! decoding step the recurrent kernel `gated_delta_rule_dk*` (one warp's lanes keep state columns in
//! registers). `forge kernels` holds both to the CPU's forms.
//!
//! The files: this one holds the call's types and the two forms on the CPU; `projections.rs` the
//! preparation from the layer's raw tensors in elementary ops and the choice of form (and decoding's
//! recurrent kernel); `chunked_device.rs` the preparation kernel and the chunked form on CUDA, forward
//! and backward; `backward.rs` the backward pass (on the host, the token-by-token walk with states
//! recomputed a chunk at a time, the reference), which forge-host joins to the autograd graph.
mod backward;
#[cfg(test)]
mod chunked_backward_test;
#[cfg(feature = "cuda")]
mod chunked_device;
mod projections;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

pub use backward::{backward, backward_from_projections};
pub use projections::{from_projections, from_projections_keeping, prepare};

/// The head geometry of a linear-attention layer: key heads of `key_dim` (q and k), each serving
/// `value_heads / key_heads` value heads of `value_dim`.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub key_heads: usize,
    pub value_heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
}

/// A layer's raw inputs of the rule: `conv` `(batch, seq, 2·key_heads·key_dim + value_heads·value_dim)`
/// is the convolution's output (q, k, v side by side), `a` and `b` `(batch, seq, value_heads)` the
/// projections giving the decay and β, `neg_a` (`−exp(A_log)`) and `dt_bias` `(value_heads)` in f32.
pub struct Projections<'a> {
    pub conv: &'a Tensor,
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub neg_a: &'a Tensor,
    pub dt_bias: &'a Tensor,
}

/// What [`from_projections_keeping`] leaves for the backward: on CUDA, per group of sequences, the
/// chunked form's solve, products and state walk (the inputs' chunk layout, half of a chunk row's
/// intermediates and one cheap kernel to make, is made again); nothing elsewhere.
#[derive(Default)]
pub struct Kept {
    #[cfg(feature = "cuda")]
    groups: Vec<chunked_device::KeptGroup>,
}

/// The chunk length transformers and flash-linear-attention use.
pub const CHUNK: usize = 64;

/// Sizes of one call: q and k `(batch, seq, heads, dk)`, v `(batch, seq, heads, dv)`, g and β
/// `(batch, seq, heads)`, the state `(batch, heads, dk, dv)`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    dk: usize,
    dv: usize,
}

/// One head's inputs, gathered token-major: `q[t·dk..]`, `v[t·dv..]`, `g[t]`.
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
}

/// The whole call as host f32 vectors, per (batch, head).
struct Inputs {
    dims: Dims,
    heads: Vec<Head>,
    states: Vec<Vec<f32>>,
    device: Device,
}

fn host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()
}

impl Inputs {
    fn gather(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Tensor,
        beta: &Tensor,
        state: Option<&Tensor>,
    ) -> candle_core::Result<Self> {
        let (batch, seq, heads, dk) = q.dims4()?;
        let dv = v.dim(3)?;
        if k.dims() != q.dims()
            || v.dims()[..3] != q.dims()[..3]
            || g.dims() != [batch, seq, heads]
            || beta.dims() != g.dims()
        {
            return Err(candle_core::Error::Msg(format!(
                "gated delta rule: shapes q {:?}, k {:?}, v {:?}, g {:?}, beta {:?} do not agree",
                q.dims(),
                k.dims(),
                v.dims(),
                g.dims(),
                beta.dims()
            )));
        }
        let dims = Dims { batch, seq, heads, dk, dv };
        let (qh, kh, vh, gh, bh) = (host(q)?, host(k)?, host(v)?, host(g)?, host(beta)?);
        let per_head = |b: usize, h: usize| {
            let rows = |data: &[f32], width: usize| -> Vec<f32> {
                (0..seq)
                    .flat_map(|t| data[((b * seq + t) * heads + h) * width..][..width].iter().copied())
                    .collect()
            };
            Head { q: rows(&qh, dk), k: rows(&kh, dk), v: rows(&vh, dv), g: rows(&gh, 1), beta: rows(&bh, 1) }
        };
        let heads_data =
            (0..batch).flat_map(|b| (0..heads).map(move |h| (b, h))).map(|(b, h)| per_head(b, h)).collect();
        let states = match state {
            Some(s) => host(s)?.chunks(dk * dv).map(<[f32]>::to_vec).collect(),
            None => vec![vec![0f32; dk * dv]; batch * heads],
        };
        if states.len() != batch * heads || states.iter().any(|s| s.len() != dk * dv) {
            return Err(candle_core::Error::Msg(format!(
                "gated delta rule: the state must be (batch, heads, dk, dv) = ({batch}, {heads}, {dk}, {dv})"
            )));
        }
        Ok(Inputs { dims, heads: heads_data, states, device: q.device().clone() })
    }

    /// Runs `each` on every head (in parallel) and assembles `(out (batch, seq, heads, dv), state)`.
    fn run(
        self,
        each: impl Fn(&Head, &mut [f32], usize, usize) -> Vec<f32> + Sync,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let Dims { batch, seq, heads, dk, dv } = self.dims;
        let mut states = self.states;
        let outs: Vec<Vec<f32>> = self
            .heads
            .par_iter()
            .zip(states.par_iter_mut())
            .map(|(head, state)| each(head, state, dk, dv))
            .collect();
        let mut out = vec![0f32; batch * seq * heads * dv];
        for (i, head_out) in outs.iter().enumerate() {
            let (b, h) = (i / heads, i % heads);
            for t in 0..seq {
                out[((b * seq + t) * heads + h) * dv..][..dv].copy_from_slice(&head_out[t * dv..][..dv]);
            }
        }
        let out = Tensor::from_vec(out, (batch, seq, heads, dv), &self.device)?;
        let state = Tensor::from_vec(states.concat(), (batch, heads, dk, dv), &self.device)?;
        Ok((out, state))
    }
}

/// The recurrent form over every token of the inputs, from `state` (zeros when None). Returns the
/// outputs `(batch, seq, heads, dv)` and the final state, in f32.
pub fn recurrent(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    state: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    Inputs::gather(q, k, v, g, beta, state)?.run(recurrent_head)
}

/// The chunked form (chunks of [`CHUNK`]); same arguments and results as [`recurrent`].
pub fn chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    state: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    Inputs::gather(q, k, v, g, beta, state)?.run(|head, s, dk, dv| chunked_head(head, s, dk, dv, CHUNK))
}

fn recurrent_head(head: &Head, s: &mut [f32], dk: usize, dv: usize) -> Vec<f32> {
    let seq = head.g.len();
    let mut out = vec![0f32; seq * dv];
    for t in 0..seq {
        let (q, k, v) = (&head.q[t * dk..][..dk], &head.k[t * dk..][..dk], &head.v[t * dv..][..dv]);
        let decay = head.g[t].exp();
        s.iter_mut().for_each(|x| *x *= decay);
        // δ = β (v − Sᵀk), then S += k δᵀ.
        let delta: Vec<f32> = (0..dv)
            .map(|j| (v[j] - (0..dk).map(|i| s[i * dv + j] * k[i]).sum::<f32>()) * head.beta[t])
            .collect();
        for i in 0..dk {
            for j in 0..dv {
                s[i * dv + j] += k[i] * delta[j];
            }
        }
        for j in 0..dv {
            out[t * dv + j] = (0..dk).map(|i| s[i * dv + j] * q[i]).sum();
        }
    }
    out
}

/// `a (n, m) · b (m, p)` into a new `(n, p)`.
fn matmul(a: &[f32], b: &[f32], n: usize, m: usize, p: usize) -> Vec<f32> {
    let mut c = vec![0f32; n * p];
    for i in 0..n {
        for l in 0..m {
            let x = a[i * m + l];
            if x != 0.0 {
                for j in 0..p {
                    c[i * p + j] += x * b[l * p + j];
                }
            }
        }
    }
    c
}

/// Solves `(I + L) X = rhs` for X `(c, w)`, with L the strictly lower triangle of `a` `(c, c)`, by
/// forward substitution (transformers' `solve_triangular(…, unitriangular=True)`).
fn unit_lower_solve(a: &[f32], rhs: &[f32], c: usize, w: usize) -> Vec<f32> {
    let mut x = rhs.to_vec();
    for i in 0..c {
        for j in 0..i {
            let f = a[i * c + j];
            if f != 0.0 {
                for col in 0..w {
                    x[i * w + col] -= f * x[j * w + col];
                }
            }
        }
    }
    x
}

fn chunked_head(head: &Head, s: &mut [f32], dk: usize, dv: usize, c: usize) -> Vec<f32> {
    let seq = head.g.len();
    let mut out = vec![0f32; seq * dv];
    for start in (0..seq).step_by(c) {
        let len = c.min(seq - start);
        // Padded positions (past the sequence's end) have q = k = v = g = β = 0, as in transformers:
        // they read and write nothing and do not decay the state.
        let at = |data: &[f32], width: usize, t: usize| -> Vec<f32> {
            if t < len {
                data[(start + t) * width..][..width].to_vec()
            } else {
                vec![0.0; width]
            }
        };
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            (0..c).flat_map(|t| at(&head.q, dk, t)).collect(),
            (0..c).flat_map(|t| at(&head.k, dk, t)).collect(),
            (0..c).flat_map(|t| at(&head.v, dv, t)).collect(),
        );
        let beta: Vec<f32> = (0..c).map(|t| if t < len { head.beta[start + t] } else { 0.0 }).collect();
        let mut cum = vec![0f32; c];
        let mut acc = 0f32;
        for (t, cum) in cum.iter_mut().enumerate() {
            acc += if t < len { head.g[start + t] } else { 0.0 };
            *cum = acc;
        }
        let chunk_out = chunk_step(&q, &k, &v, &beta, &cum, s, (c, dk, dv));
        out[start * dv..(start + len) * dv].copy_from_slice(&chunk_out[..len * dv]);
    }
    out
}

/// Row `t` of a row-major matrix of width `w`.
fn row(m: &[f32], t: usize, w: usize) -> &[f32] {
    &m[t * w..][..w]
}

/// One chunk of the chunked form: its outputs `(c, dv)`, with the state `s` `(dk, dv)` carried over.
fn chunk_step(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    beta: &[f32],
    cum: &[f32],
    s: &mut [f32],
    (c, dk, dv): (usize, usize, usize),
) -> Vec<f32> {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let decay = |i: usize, j: usize| (cum[i] - cum[j]).exp();
    let k_beta: Vec<f32> = (0..c).flat_map(|t| row(k, t, dk).iter().map(move |x| x * beta[t])).collect();
    let v_beta: Vec<f32> = (0..c).flat_map(|t| row(v, t, dv).iter().map(move |x| x * beta[t])).collect();
    // The UT system (strictly lower part) and the causal intra-chunk attention (diagonal included).
    let mut ut = vec![0f32; c * c];
    let mut attn = vec![0f32; c * c];
    for i in 0..c {
        for j in 0..=i {
            let d = decay(i, j);
            if j < i {
                ut[i * c + j] = dot(row(&k_beta, i, dk), row(k, j, dk)) * d;
            }
            attn[i * c + j] = dot(row(q, i, dk), row(k, j, dk)) * d;
        }
    }
    let decayed_k_beta: Vec<f32> =
        (0..c).flat_map(|t| row(&k_beta, t, dk).iter().map(move |x| x * cum[t].exp())).collect();
    let new_values = unit_lower_solve(&ut, &v_beta, c, dv);
    let k_cumdecay = unit_lower_solve(&ut, &decayed_k_beta, c, dk);
    // v_new = new_values − k_cumdecay·S; out = (q ⊙ exp(cum))·S + attn·v_new.
    let read = matmul(&k_cumdecay, s, c, dk, dv);
    let v_new: Vec<f32> = new_values.iter().zip(&read).map(|(a, b)| a - b).collect();
    let q_decayed: Vec<f32> =
        (0..c).flat_map(|t| row(q, t, dk).iter().map(move |x| x * cum[t].exp())).collect();
    let mut out = matmul(&q_decayed, s, c, dk, dv);
    for (o, a) in out.iter_mut().zip(matmul(&attn, &v_new, c, c, dv)) {
        *o += a;
    }
    // S ← S·exp(cum_last) + (k ⊙ exp(cum_last − cum))ᵀ·v_new.
    let last = cum[c - 1];
    let chunk_decay = last.exp();
    s.iter_mut().for_each(|x| *x *= chunk_decay);
    for t in 0..c {
        let w = (last - cum[t]).exp();
        for i in 0..dk {
            let ki = row(k, t, dk)[i] * w;
            if ki != 0.0 {
                for j in 0..dv {
                    s[i * dv + j] += ki * v_new[t * dv + j];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SplitMix64;

    /// The recurrence written out in f64, one token at a time: the reference both forms are held to.
    fn reference(head: &Head, state: &[f32], dk: usize, dv: usize) -> (Vec<f64>, Vec<f64>) {
        let mut s: Vec<f64> = state.iter().map(|&x| x as f64).collect();
        let f = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let (q, k, v) = (f(&head.q), f(&head.k), f(&head.v));
        let mut out = Vec::new();
        for t in 0..head.g.len() {
            let decay = (head.g[t] as f64).exp();
            s.iter_mut().for_each(|x| *x *= decay);
            for j in 0..dv {
                let mem: f64 = (0..dk).map(|i| s[i * dv + j] * k[t * dk + i]).sum();
                let delta = (v[t * dv + j] - mem) * head.beta[t] as f64;
                for i in 0..dk {
                    s[i * dv + j] += k[t * dk + i] * delta;
                }
            }
            out.extend((0..dv).map(|j| (0..dk).map(|i| s[i * dv + j] * q[t * dk + i]).sum::<f64>()));
        }
        (out, s)
    }

    /// Random prepared inputs: unit-norm keys and queries (q scaled by 1/√dk), decays in (−2, 0),
    /// β in (0, 1), as the layer makes them.
    fn inputs(batch: usize, seq: usize, heads: usize, dk: usize, dv: usize, seed: u64) -> Vec<Tensor> {
        let mut rng = SplitMix64::new(seed);
        let mut uniform = |n: usize, lo: f64, hi: f64| -> Vec<f32> {
            (0..n).map(|_| (lo + (hi - lo) * rng.next_f64()) as f32).collect()
        };
        let unit = |mut x: Vec<f32>, scale: f32| {
            for r in x.chunks_mut(dk) {
                let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
                r.iter_mut().for_each(|v| *v *= scale / n);
            }
            x
        };
        let shape = (batch, seq, heads, dk);
        let q = unit(uniform(batch * seq * heads * dk, -1.0, 1.0), 1.0 / (dk as f32).sqrt());
        let k = unit(uniform(batch * seq * heads * dk, -1.0, 1.0), 1.0);
        let v = uniform(batch * seq * heads * dv, -2.0, 2.0);
        let g = uniform(batch * seq * heads, -2.0, -0.01);
        let beta = uniform(batch * seq * heads, 0.05, 0.95);
        let state = uniform(batch * heads * dk * dv, -0.5, 0.5);
        let d = Device::Cpu;
        vec![
            Tensor::from_vec(q, shape, &d).unwrap(),
            Tensor::from_vec(k, shape, &d).unwrap(),
            Tensor::from_vec(v, (batch, seq, heads, dv), &d).unwrap(),
            Tensor::from_vec(g, (batch, seq, heads), &d).unwrap(),
            Tensor::from_vec(beta, (batch, seq, heads), &d).unwrap(),
            Tensor::from_vec(state, (batch, heads, dk, dv), &d).unwrap(),
        ]
    }

    fn rel(a: &[f32], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
        (num / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
    }

    #[test]
    fn both_forms_match_the_float64_recurrence_on_lengths_that_are_not_multiples_of_the_chunk() {
        let (batch, heads, dk, dv) = (2, 3, 8, 6);
        for (seq, seed) in [(1, 1), (7, 2), (63, 3), (64, 4), (65, 5), (150, 6)] {
            let t = inputs(batch, seq, heads, dk, dv, seed);
            let gathered = Inputs::gather(&t[0], &t[1], &t[2], &t[3], &t[4], Some(&t[5])).unwrap();
            let mut want_out = vec![0f64; batch * seq * heads * dv];
            let mut want_state = Vec::new();
            for (i, head) in gathered.heads.iter().enumerate() {
                let (o, s) = reference(head, &gathered.states[i], dk, dv);
                let (b, h) = (i / heads, i % heads);
                for tok in 0..seq {
                    want_out[((b * seq + tok) * heads + h) * dv..][..dv]
                        .copy_from_slice(&o[tok * dv..][..dv]);
                }
                want_state.extend(s);
            }
            for (name, (out, state)) in [
                ("chunked", chunked(&t[0], &t[1], &t[2], &t[3], &t[4], Some(&t[5])).unwrap()),
                ("recurrent", recurrent(&t[0], &t[1], &t[2], &t[3], &t[4], Some(&t[5])).unwrap()),
            ] {
                let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let state = state.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(
                    rel(&out, &want_out) < 1e-5,
                    "{name}, seq {seq}: outputs off by {}",
                    rel(&out, &want_out)
                );
                assert!(
                    rel(&state, &want_state) < 1e-5,
                    "{name}, seq {seq}: state off by {}",
                    rel(&state, &want_state)
                );
            }
        }
    }

    #[test]
    fn a_prompt_then_tokens_one_by_one_equals_the_whole_sequence_at_once() {
        // Decoding: the chunked form over a prompt, then the recurrent form from its final state.
        let (batch, heads, dk, dv, seq) = (1, 2, 8, 4, 70);
        let t = inputs(batch, seq, heads, dk, dv, 9);
        let (whole, _) = chunked(&t[0], &t[1], &t[2], &t[3], &t[4], None).unwrap();
        let cut = 67;
        let part = |x: &Tensor, from, len| x.narrow(1, from, len).unwrap();
        let (first, mut state) = chunked(
            &part(&t[0], 0, cut),
            &part(&t[1], 0, cut),
            &part(&t[2], 0, cut),
            &part(&t[3], 0, cut),
            &part(&t[4], 0, cut),
            None,
        )
        .unwrap();
        let mut pieces = vec![first];
        for tok in cut..seq {
            let (o, s) = recurrent(
                &part(&t[0], tok, 1),
                &part(&t[1], tok, 1),
                &part(&t[2], tok, 1),
                &part(&t[3], tok, 1),
                &part(&t[4], tok, 1),
                Some(&state),
            )
            .unwrap();
            pieces.push(o);
            state = s;
        }
        let stepped = Tensor::cat(&pieces, 1).unwrap();
        let diff = (stepped - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "stepped decoding differs from the whole sequence by {diff}");
    }

    /// The recurrence in elementary candle ops (a loop over tokens), in whatever dtype its inputs
    /// have, so that candle's autograd differentiates it.
    fn elementary(t: &[Tensor]) -> candle_core::Result<Tensor> {
        let (batch, seq, heads, dk) = t[0].dims4()?;
        let dv = t[2].dim(3)?;
        let mut s = Tensor::zeros((batch, heads, dk, dv), t[0].dtype(), &Device::Cpu)?;
        let mut outs = Vec::new();
        for i in 0..seq {
            let at = |x: &Tensor| x.narrow(1, i, 1)?.squeeze(1)?.contiguous();
            let (q, k, v) = (at(&t[0])?.unsqueeze(3)?, at(&t[1])?.unsqueeze(3)?, at(&t[2])?.unsqueeze(3)?);
            let (g, beta) = (at(&t[3])?.unsqueeze(2)?.unsqueeze(3)?, at(&t[4])?.unsqueeze(2)?.unsqueeze(3)?);
            s = s.broadcast_mul(&g.exp()?)?;
            let u = s.transpose(2, 3)?.contiguous()?.matmul(&k)?;
            let delta = (v - u)?.broadcast_mul(&beta)?;
            s = (s + k.matmul(&delta.transpose(2, 3)?.contiguous()?)?)?;
            outs.push(s.transpose(2, 3)?.contiguous()?.matmul(&q)?.squeeze(3)?.unsqueeze(1)?);
        }
        Tensor::cat(&outs, 1)
    }

    #[test]
    fn the_backward_equals_autograd_through_the_elementary_recurrence_in_f64() -> candle_core::Result<()> {
        let (batch, seq, heads, dk, dv) = (2, 70, 2, 8, 6);
        let t = inputs(batch, seq, heads, dk, dv, 11);
        let weights = inputs(batch, seq, heads, dv, dv, 12).swap_remove(2);
        let vars: Vec<candle_core::Var> = t[..5]
            .iter()
            .map(|x| candle_core::Var::from_tensor(&x.to_dtype(DType::F64)?))
            .collect::<candle_core::Result<_>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = (elementary(&tensors)? * weights.to_dtype(DType::F64)?)?.sum_all()?;
        let store = loss.backward()?;
        let got = backward(&t[0], &t[1], &t[2], &t[3], &t[4], &weights)?;
        for (name, (mine, var)) in ["q", "k", "v", "g", "beta"].iter().zip(got.iter().zip(&tensors)) {
            let want = store.get(var).unwrap().to_dtype(DType::F32)?;
            let diff = crate::checks::rel_diff(mine, &want)?;
            assert!(diff < 1e-4, "d{name} off by {diff}");
        }
        Ok(())
    }

    #[test]
    fn the_backward_matches_finite_differences_of_the_chunked_form() -> candle_core::Result<()> {
        let (batch, seq, heads, dk, dv) = (1, 67, 2, 4, 3);
        let t = inputs(batch, seq, heads, dk, dv, 21);
        let weights = inputs(batch, seq, heads, dv, dv, 22).swap_remove(2);
        let loss = |x: &[Tensor]| -> f64 {
            let (out, _) = chunked(&x[0], &x[1], &x[2], &x[3], &x[4], None).unwrap();
            let prod = (out.to_dtype(DType::F64).unwrap() * weights.to_dtype(DType::F64).unwrap()).unwrap();
            prod.sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let grads = backward(&t[0], &t[1], &t[2], &t[3], &t[4], &weights)?;
        let eps = 1e-2f32;
        for (which, grad) in grads.iter().enumerate() {
            let flat = grad.flatten_all()?.to_vec1::<f32>()?;
            let n = flat.len();
            // A few elements of each input: in the first chunk, across the boundary and in the last.
            for &at in &[0, n / 3, n / 2, n - 1] {
                let nudged = |by: f32| -> Vec<Tensor> {
                    let mut x = t[..5].to_vec();
                    let mut values = x[which].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    values[at] += by;
                    x[which] = Tensor::from_vec(values, x[which].shape(), &Device::Cpu).unwrap();
                    x
                };
                let fd = (loss(&nudged(eps)) - loss(&nudged(-eps))) / (2.0 * eps as f64);
                let an = flat[at] as f64;
                assert!(
                    (fd - an).abs() <= 2e-3 * (1.0 + an.abs()),
                    "input {which}, element {at}: {an} vs {fd}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let t = inputs(1, 5, 2, 4, 4, 1);
        let err = chunked(&t[0], &t[1], &t[2], &t[4].narrow(1, 0, 4).unwrap(), &t[4], None).unwrap_err();
        assert!(err.to_string().contains("do not agree"), "{err}");
    }
}
