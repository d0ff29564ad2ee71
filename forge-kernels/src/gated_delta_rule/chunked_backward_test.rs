//! The chunked form's backward, as `chunked_device.rs` writes it in formulas and its CUDA kernels
//! compute it, written out here in f64 dense matrices and held to the host's token-by-token walk
//! ([`super::backward`], itself held to finite differences and autograd): the derivation the kernels
//! follow is checked in CI, where no GPU runs them. Small chunks (4 tokens) over a length that is not
//! a multiple of them exercise the padded last chunk and several chunks' carried adjoint.
use candle_core::{Device, Tensor};

use crate::SplitMix64;

/// A dense row-major matrix.
#[derive(Clone)]
struct Mat {
    rows: usize,
    cols: usize,
    v: Vec<f64>,
}

impl Mat {
    fn zeros(rows: usize, cols: usize) -> Self {
        Mat { rows, cols, v: vec![0.0; rows * cols] }
    }
    fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Self {
        Mat { rows, cols, v: (0..rows * cols).map(|e| f(e / cols, e % cols)).collect() }
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        self.v[i * self.cols + j]
    }
    fn t(&self) -> Mat {
        Mat::from_fn(self.cols, self.rows, |i, j| self.at(j, i))
    }
    fn mul(&self, b: &Mat) -> Mat {
        Mat::from_fn(self.rows, b.cols, |i, j| (0..self.cols).map(|l| self.at(i, l) * b.at(l, j)).sum())
    }
    fn map2(&self, b: &Mat, f: impl Fn(f64, f64) -> f64) -> Mat {
        Mat::from_fn(self.rows, self.cols, |i, j| f(self.at(i, j), b.at(i, j)))
    }
    /// Row i scaled by `s[i]`.
    fn rows_scaled(&self, s: &[f64]) -> Mat {
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j) * s[i])
    }
    fn row_dots(&self, b: &Mat) -> Vec<f64> {
        (0..self.rows).map(|i| (0..self.cols).map(|j| self.at(i, j) * b.at(i, j)).sum()).collect()
    }
    fn cols_range(&self, from: usize, n: usize) -> Mat {
        Mat::from_fn(self.rows, n, |i, j| self.at(i, from + j))
    }
}

/// One chunk's inputs and what its forward keeps (names as in `chunked_device.rs`).
struct Chunk {
    q: Mat,
    k: Mat,
    v: Mat,
    beta: Vec<f64>,
    g: Vec<f64>,
    d: Mat,
    kb: Mat,
    t: Mat,
    x: Mat,
    w: Mat,
    vp: Mat,
    pt: Mat,
    h: Mat,
}

impl Chunk {
    fn gamma(&self) -> Vec<f64> {
        self.g.iter().map(|g| g.exp()).collect()
    }
    fn lambda(&self) -> Vec<f64> {
        let last = self.g[self.g.len() - 1];
        self.g.iter().map(|g| (last - g).exp()).collect()
    }
}

/// The forward over one head's chunks from a zero state, keeping each chunk's intermediates.
fn forward(q: &Mat, k: &Mat, v: &Mat, g: &[f64], beta: &[f64], c: usize) -> Vec<Chunk> {
    let (dk, dv) = (q.cols, v.cols);
    let mut h = Mat::zeros(dk, dv);
    let mut chunks = Vec::new();
    for start in (0..q.rows).step_by(c) {
        let real = |t: usize| start + t < q.rows;
        let rows = |m: &Mat| Mat::from_fn(c, m.cols, |t, j| if real(t) { m.at(start + t, j) } else { 0.0 });
        let (qc, kc, vc) = (rows(q), rows(k), rows(v));
        let b: Vec<f64> = (0..c).map(|t| if real(t) { beta[start + t] } else { 0.0 }).collect();
        let cum: Vec<f64> = (0..c)
            .scan(0.0, |acc, t| Some(*acc + if real(t) { g[start + t] } else { 0.0 }).inspect(|v| *acc = *v))
            .collect();
        let d = Mat::from_fn(c, c, |i, j| if j <= i { (cum[i] - cum[j]).exp() } else { 0.0 });
        let kb = kc.rows_scaled(&b);
        let n = kb.mul(&kc.t()).map2(&d, |x, dij| x * dij);
        // T = (I + strictly lower N)⁻¹ by forward substitution.
        let mut t = Mat::zeros(c, c);
        for i in 0..c {
            for col in 0..c {
                let sub: f64 = (0..i).map(|j| n.at(i, j) * t.at(j, col)).sum();
                t.v[i * c + col] = if i == col { 1.0 } else { 0.0 } - sub;
            }
        }
        let gamma: Vec<f64> = cum.iter().map(|x| x.exp()).collect();
        let bg: Vec<f64> = b.iter().zip(&gamma).map(|(b, g)| b * g).collect();
        let (vb, kbg) = (vc.rows_scaled(&b), kc.rows_scaled(&bg));
        let x = Mat::from_fn(c, dv + dk, |i, j| if j < dv { vb.at(i, j) } else { kbg.at(i, j - dv) });
        let uw = t.mul(&x);
        let w = uw.cols_range(dv, dk);
        let vp = uw.cols_range(0, dv).map2(&w.mul(&h), |u, wh| u - wh);
        let pt = qc.mul(&kc.t()).map2(&d, |x, dij| x * dij);
        let chunk = Chunk { q: qc, k: kc, v: vc, beta: b, g: cum, d, kb, t, x, w, vp, pt, h: h.clone() };
        let last = chunk.g[c - 1].exp();
        h = chunk.k.rows_scaled(&chunk.lambda()).t().mul(&chunk.vp).map2(&h, |a, hh| a + last * hh);
        chunks.push(chunk);
    }
    chunks
}

/// One chunk's gradients `[dq, dk, dv]` and `(dg, dβ)` from dO, dV' and the adjoint dh⁺ after it.
fn chunk_grads(ch: &Chunk, d_o: &Mat, d_vp: &Mat, dh: &Mat) -> ([Mat; 3], Vec<f64>, Vec<f64>) {
    let (c, dv) = (ch.q.rows, ch.v.cols);
    let (gamma, lambda) = (ch.gamma(), ch.lambda());
    let (y1a, y1b, y2, y3) =
        (d_o.mul(&ch.h.t()), d_vp.mul(&ch.h.t()), ch.vp.mul(&dh.t()), d_o.mul(&ch.vp.t()));
    let z = Mat::from_fn(c, ch.x.cols, |i, j| if j < dv { d_vp.at(i, j) } else { -y1b.at(i, j - dv) });
    let (dx, dt) = (ch.t.t().mul(&z), z.mul(&ch.x.t()));
    let dnf = ch.t.t().mul(&dt.mul(&ch.t.t()));
    let dn = Mat::from_fn(c, c, |i, j| if j < i { -dnf.at(i, j) * ch.d.at(i, j) } else { 0.0 });
    let dp = y3.map2(&ch.d, |y, d| y * d);
    let (kbk, qk) = (ch.kb.mul(&ch.k.t()), ch.q.mul(&ch.k.t()));
    let e = dn.map2(&kbk, |a, b| a * b).map2(&dp.map2(&qk, |a, b| a * b), |a, b| a + b);
    let (f1a, f1b) = (dn.mul(&ch.k), dp.mul(&ch.k));
    let f2 = dn.t().mul(&ch.kb).map2(&dp.t().mul(&ch.q), |a, b| a + b);
    let (dxv, dxk) = (dx.cols_range(0, dv), dx.cols_range(dv, ch.k.cols));
    let bg: Vec<f64> = ch.beta.iter().zip(&gamma).map(|(b, g)| b * g).collect();
    let dq = y1a.rows_scaled(&gamma).map2(&f1b, |a, b| a + b);
    let dk = f2
        .map2(&f1a.rows_scaled(&ch.beta), |a, b| a + b)
        .map2(&dxk.rows_scaled(&bg), |a, b| a + b)
        .map2(&y2.rows_scaled(&lambda), |a, b| a + b);
    let (xk, rl, yq) = (dxk.row_dots(&ch.k), y2.row_dots(&ch.k), y1a.row_dots(&ch.q));
    let (f1k, xv) = (f1a.row_dots(&ch.k), dxv.row_dots(&ch.v));
    let d_beta: Vec<f64> = (0..c).map(|t| f1k[t] + xv[t] + gamma[t] * xk[t]).collect();
    let mut d_g: Vec<f64> = (0..c)
        .map(|t| {
            let eg: f64 = (0..c).map(|j| e.at(t, j) - e.at(j, t)).sum();
            eg + gamma[t] * yq[t] + bg[t] * xk[t] - lambda[t] * rl[t]
        })
        .collect();
    let hd: f64 = ch.h.v.iter().zip(&dh.v).map(|(a, b)| a * b).sum();
    d_g[c - 1] += ch.g[c - 1].exp() * hd + (0..c).map(|t| lambda[t] * rl[t]).sum::<f64>();
    let dg: Vec<f64> = (0..c).rev().scan(0.0, |acc, t| Some(*acc + d_g[t]).inspect(|v| *acc = *v)).collect();
    ([dq, dk, dxv.rows_scaled(&ch.beta)], dg.into_iter().rev().collect(), d_beta)
}

/// The gradients of Σ d_out · out for one head: the adjoint walked back across chunks, then each
/// chunk's products. Returns `[dq, dk, dv]` (rows per token) and `(dg, dβ)`, real tokens only.
fn backward(chunks: &[Chunk], d_out: &Mat, seq: usize) -> ([Mat; 3], Vec<f64>, Vec<f64>) {
    let c = chunks[0].q.rows;
    let (dk, dv) = (chunks[0].k.cols, chunks[0].v.cols);
    let d_o =
        |n: usize| Mat::from_fn(c, dv, |t, j| if n * c + t < seq { d_out.at(n * c + t, j) } else { 0.0 });
    let mut dh = Mat::zeros(dk, dv);
    let mut per_chunk = Vec::new();
    for (n, ch) in chunks.iter().enumerate().rev() {
        let d_vp = ch.pt.t().mul(&d_o(n)).map2(&ch.k.rows_scaled(&ch.lambda()).mul(&dh), |a, b| a + b);
        per_chunk.push(chunk_grads(ch, &d_o(n), &d_vp, &dh));
        let last = ch.g[c - 1].exp();
        let carried = ch.q.rows_scaled(&ch.gamma()).t().mul(&d_o(n)).map2(&ch.w.t().mul(&d_vp), |a, b| a - b);
        dh = carried.map2(&dh, |a, b| a + last * b);
    }
    per_chunk.reverse();
    let rows = |i: usize, w: usize| {
        Mat::from_fn(seq, w, |t, j| {
            let (m, _, _) = &per_chunk[t / c];
            m[i].at(t % c, j)
        })
    };
    let dg = (0..seq).map(|t| per_chunk[t / c].1[t % c]).collect();
    let db = (0..seq).map(|t| per_chunk[t / c].2[t % c]).collect();
    ([rows(0, dk), rows(1, dk), rows(2, dv)], dg, db)
}

#[test]
fn the_chunked_backward_formulas_match_the_token_walk() -> candle_core::Result<()> {
    let (seq, dk, dv, c) = (10, 4, 3, 4);
    let mut rng = SplitMix64::new(11);
    let mut draw = |n: usize, lo: f64, hi: f64| -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * rng.next_f64()).collect()
    };
    let unit = |m: Mat, scale: f64| {
        let norms: Vec<f64> = (0..m.rows).map(|i| scale / m.row_dots(&m)[i].sqrt()).collect();
        m.rows_scaled(&norms)
    };
    let q = unit(Mat { rows: seq, cols: dk, v: draw(seq * dk, -1.0, 1.0) }, 0.5);
    let k = unit(Mat { rows: seq, cols: dk, v: draw(seq * dk, -1.0, 1.0) }, 1.0);
    let v = Mat { rows: seq, cols: dv, v: draw(seq * dv, -1.0, 1.0) };
    let (g, beta) = (draw(seq, -1.0, -0.05), draw(seq, 0.1, 0.9));
    let d_out = Mat { rows: seq, cols: dv, v: draw(seq * dv, -1.0, 1.0) };
    let ([dq, dk_, dv_], dg, db) = backward(&forward(&q, &k, &v, &g, &beta, c), &d_out, seq);

    let tensor = |x: &[f64], shape: &[usize]| {
        Tensor::from_vec(x.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape, &Device::Cpu)
    };
    let walked = super::backward(
        &tensor(&q.v, &[1, seq, 1, dk])?,
        &tensor(&k.v, &[1, seq, 1, dk])?,
        &tensor(&v.v, &[1, seq, 1, dv])?,
        &tensor(&g, &[1, seq, 1])?,
        &tensor(&beta, &[1, seq, 1])?,
        &tensor(&d_out.v, &[1, seq, 1, dv])?,
    )?;
    for (name, ours, theirs) in [
        ("dq", dq.v, &walked[0]),
        ("dk", dk_.v, &walked[1]),
        ("dv", dv_.v, &walked[2]),
        ("dg", dg, &walked[3]),
        ("dβ", db, &walked[4]),
    ] {
        let theirs = theirs.flatten_all()?.to_vec1::<f32>()?;
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - *b as f64).abs()).fold(0.0, f64::max);
        let scale = theirs.iter().map(|b| b.abs() as f64).fold(0.0, f64::max);
        assert!(worst < 1e-5 * scale.max(1.0), "{name}: {worst} apart (largest {scale})");
    }
    Ok(())
}
