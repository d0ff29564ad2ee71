//! The chunked form on CUDA, forward and backward: cuBLAS products batched over every chunk of every
//! (sequence, value head) at once, with forge's kernels (`cuda/gated_delta_chunked.cu`) between them.
//!
//! Why: the recurrent kernels walk one token at a time on CUDA cores. Their backward wrote and read
//! back every token's state (64 KiB a head at 128 × 128): 481 ms of a 1.69 s qwen3.5-9b training step
//! and 188 ms of a 0.39 s 0.8b step on an H200 (docs/BENCHMARKS.md). In the chunked form all but one
//! step are products over a chunk's 64 tokens, independent across chunks; only the state, carried from
//! chunk to chunk (64 steps at 4096 tokens, not 4096), is sequential. Measured on the H200
//! (docs/BENCHMARKS.md, eighth session): training 12% faster at 0.8b and 7% at 9b than with the
//! recurrent kernels, the same peak memory. The walks then ran on CUDA cores (304 µs a call at 0.8b)
//! and the products as cuBLAS's f32 SGEMM (about 30 TFLOP/s); both are TF32 on tensor cores now (the
//! walks 139 µs forward and 197 µs backward; ninth session).
//!
//! Per chunk, with G the cumulative decay, γ = e^G, λ = e^(G_last − G), D_ij = e^(G_i − G_j), h the state
//! at the chunk's start (the host's `chunk_step` is the same in loops):
//!
//! ```text
//! N = (β⊙K)·Kᵀ ⊙ D, strictly lower      T = (I + N)⁻¹        [U | W] = T·[β⊙V | βγ⊙K]
//! V' = U − W·h      P̃ = Q·Kᵀ ⊙ D, lower      O = (γ⊙Q)·h + P̃·V'      h⁺ = e^G_last·h + (λ⊙K)ᵀ·V'
//! ```
//!
//! The backward carries the state's adjoint back across chunks (dV' = P̃ᵀ·dO + (λ⊙K)·dh⁺,
//! dh = e^G_last·dh⁺ + (γ⊙Q)ᵀ·dO − Wᵀ·dV'), then, every chunk at once: dT = [dV' | −dV'·hᵀ]·[β⊙V | βγ⊙K]ᵀ,
//! dN = −Tᵀ·dT·Tᵀ, and the products back to Q, K, V, β and G; `gdn_chunk_grads` has the per-token
//! sums. `chunked_backward_test.rs` holds these formulas, written out in f64, to the host's
//! token-by-token walk in CI; `forge kernels` holds the kernels to the host's forms (forward) and its
//! walk (backward) on the GPU.
//!
//! Memory: a chunk row's intermediates are about 300 k floats at 128 × 128 heads (1.2 MB), so the
//! sequences of a batch go through in groups that keep them under [`SCRATCH_BYTES`]. A group is at
//! least one sequence, so a long one goes over it: 2.4 GB for 4096 tokens at qwen3.5-9b's 32 value
//! heads (splitting a sequence's heads into groups is what would bound it). A forward whose backward
//! follows at once (a checkpointed layer run again) keeps each group's solve, products and state walk
//! (half of a row's intermediates; the inputs' chunk layout is one cheap kernel to make again), and
//! the backward then goes through the forward's groups, each dropping its part when done. Why: the
//! backward recomputed them, the rule's forward run a third time a step. At qwen3.5-27b (8 × 1024,
//! 48 value heads) that keeps 1.4 GB, and a backward group of two sequences then peaks 1.3 GB where
//! one of one did 0.65 GB. Measured on an H200 together with the MLP's unread down product
//! (docs/BENCHMARKS.md, twelfth session): 27b 2,599 → 2,785 tokens/s, 9b 8,341 → 8,687; peak memory
//! 9b 21.1 → 22.0 GiB, 27b 36.3 → 37.6 (keeping the chunk layout as well would take 9b past half
//! of the peer's 45.5 GiB).
use candle_core::{DType, Tensor};

use super::{Heads, Projections};
use crate::launch::{launch_on_tensors, Grid, Scalar};
use crate::profile::section;

/// Tokens a chunk (the kernels' `GDN_C`).
const C: usize = 64;
/// The most the intermediates of one group of sequences may take.
const SCRATCH_BYTES: usize = 1 << 30;
/// Threads of the per-chunk kernels and of the state walks (8 warps).
const THREADS: u32 = 256;

/// The sizes of one group: `batch` sequences of `seq` tokens, `chunks` chunks each.
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    seq: usize,
    chunks: usize,
    h: Heads,
}

impl Shape {
    fn items(&self) -> usize {
        self.batch * self.h.value_heads
    }
    /// Chunk rows: every chunk of every (sequence, value head).
    fn rows(&self) -> usize {
        self.items() * self.chunks
    }
}

/// Whether the CUDA kernels take `h`: key heads of 32, 64 or 128 (the decoding kernel's variants, the
/// walks' at most 128 state rows in steps of 16), value heads a multiple of 4 (the walks' 16-byte
/// copies and pairs of columns). Qwen3.5's are 128 and 128.
pub(super) fn takes(h: Heads) -> bool {
    [32, 64, 128].contains(&h.key_dim) && h.value_dim.is_multiple_of(4)
}

/// Sizes as the kernels' `int` scalars.
fn i32s(values: &[usize]) -> Vec<Scalar> {
    values.iter().map(|&v| Scalar::I32(v as i32)).collect()
}

/// The launch of the preparation kernel and of its backward over `rows` tokens: a block per (token,
/// key head), and the sizes both take.
fn preparation_launch(rows: usize, h: Heads) -> (Grid, Vec<Scalar>) {
    let grid = Grid::PerRow { rows: rows * h.key_heads, threads: h.key_dim.div_ceil(32).min(4) as u32 * 32 };
    (grid, i32s(&[rows, h.key_heads, h.value_heads, h.key_dim, h.value_dim]))
}

/// Groups' results joined along the batch (no copy for one group).
fn joined(parts: &[Tensor]) -> candle_core::Result<Tensor> {
    if parts.len() == 1 {
        Ok(parts[0].clone())
    } else {
        Tensor::cat(parts, 0)
    }
}

/// Floats of intermediates per chunk row at the group's peak, the backward's when `backward`.
fn floats_per_row(dk: usize, dv: usize, backward: bool) -> usize {
    // What the forward keeps: the loaded inputs, [N; P] and [T; P̃], UW, the states with V'.
    let kept = C * (6 * dk + dv + 1) + 4 * C * C + C * (dv + dk) + dk * dv + C * dv;
    if !backward {
        return kept + 3 * C * dv; // the two outputs and their sum
    }
    // The backward's two highs (it drops each intermediate after its last use): the masks' input
    // (dO, [dO; dV'] and dh, Y1, Y2, dX; Y3, Z in UW's place, dT, dN's product and its factor) and
    // the end (no [N; P], T, Y3, Z, dT, dN; the masks' output, F1, F2 and the gradients instead).
    let walked = C * dv + 2 * C * dv + dk * dv + 3 * C * dk + C * (dv + dk);
    let masks = kept + walked + 4 * C * C;
    let end = kept - 4 * C * C - C * (dv + dk) + walked + 2 * C * C + C + 3 * C * dk + C * (2 * dk + dv + 2);
    masks.max(end)
}

/// Sequences per group, so that a group's intermediates stay under [`SCRATCH_BYTES`].
fn group_size(batch: usize, seq: usize, h: Heads, backward: bool) -> usize {
    let per_sequence = h.value_heads * seq.div_ceil(C) * floats_per_row(h.key_dim, h.value_dim, backward) * 4;
    (SCRATCH_BYTES / per_sequence.max(1)).clamp(1, batch)
}

/// `p` for a group of sequences whose `conv`, `a` and `b` are `parts` (from [`slice`]).
fn group<'a>(p: &Projections<'a>, parts: &'a [Tensor; 3]) -> Projections<'a> {
    Projections { conv: &parts[0], a: &parts[1], b: &parts[2], neg_a: p.neg_a, dt_bias: p.dt_bias }
}

/// `conv`, `a` and `b` of sequences `from .. from + n` (views: the batch is their first dimension).
fn slice(p: &Projections, from: usize, n: usize) -> candle_core::Result<[Tensor; 3]> {
    Ok([p.conv.narrow(0, from, n)?, p.a.narrow(0, from, n)?, p.b.narrow(0, from, n)?])
}

/// One of the chunked form's f32 kernels, as a profile section of its name.
fn kernel(
    name: &'static str,
    inputs: &[&Tensor],
    shape: impl Into<candle_core::Shape>,
    grid: Grid,
    scalars: &[Scalar],
) -> candle_core::Result<Tensor> {
    section(name, inputs[0].device(), || launch_on_tensors::<f32>(name, inputs, shape, grid, scalars))
}

/// cuBLAS's f32 products in TF32 while it lives: candle's switch is process-wide, so the setting found
/// comes back on drop. The walks' tensor-core products are TF32 too. Why it is enough: TF32 keeps 11
/// significant bits (unit roundoff 2⁻¹¹), bf16 8 (2⁻⁸), and the rule's outputs are rounded to bf16 by
/// the next op (the gated norm writes bf16), its gradients to bf16 (the raw inputs' dtype); `forge
/// kernels` holds the forward to the f32 reference within 2e-3 (half of bf16's unit roundoff).
/// Measured at qwen3.5-0.8b on an H200, f32 SGEMM ran the products at about 30 TFLOP/s.
struct Tf32Products(bool);

impl Tf32Products {
    fn on() -> Self {
        let before = candle_core::cuda::gemm_reduced_precision_f32();
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
        Tf32Products(before)
    }
}

impl Drop for Tf32Products {
    fn drop(&mut self) {
        candle_core::cuda::set_gemm_reduced_precision_f32(self.0)
    }
}

/// `a · b` (cuBLAS), batched over chunk rows, as one profile section for all the products.
fn product(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    section("gated delta rule: products", a.device(), || a.matmul(b))
}

/// State columns a walk's block keeps (the kernels' `GDN_COLS`).
const WALK_COLUMNS: usize = 32;

/// The walks' launch: a block of 256 threads per 32 state columns of an item, with the state's 128
/// rows of those columns, the chunk's outputs in them and the chunk's two matrices in shared memory,
/// rows padded as the kernels' `GDN_LDS`, `GDN_LD1` and `GDN_LD2` (97 KiB).
fn walk_grid(s: Shape) -> Grid {
    let (columns, m1, m2) = (WALK_COLUMNS + 8, 128 + 4, 128 + 8);
    let floats = (128 + C) * columns + C * (m1 + m2);
    Grid::PerRowShared {
        rows: s.items() * s.h.value_dim.div_ceil(WALK_COLUMNS),
        threads: THREADS,
        shared: floats as u32 * 4,
    }
}

/// Part `index` of a flat kernel output whose parts have `sizes`, shaped `shape`.
fn part(flat: &Tensor, sizes: &[usize], index: usize, shape: &[usize]) -> candle_core::Result<Tensor> {
    let start = sizes[..index].iter().sum();
    flat.narrow(0, start, sizes[index])?.reshape(shape)
}

/// `gated_delta_prepare_bf16`: q and k per key head (normalised, q scaled), then g and β per value
/// head, in one f32 buffer, as both CUDA forms (this file's and decoding's recurrent step) read them.
pub(super) fn prepared_on_device(p: &Projections, h: Heads) -> candle_core::Result<Tensor> {
    let rows = p.conv.dims3()?.0 * p.conv.dim(1)?;
    let (grid, scalars) = preparation_launch(rows, h);
    section("gated_delta_prepare_bf16", p.conv.device(), || {
        launch_on_tensors::<f32>(
            "gated_delta_prepare_bf16",
            &[p.conv, p.a, p.b, p.neg_a, p.dt_bias],
            2 * rows * h.key_heads * h.key_dim + 2 * rows * h.value_heads,
            grid,
            &scalars,
        )
    })
}

/// The chunk layout of a group's prepared inputs (`gdn_chunk_load`): cheap to make again, and half of
/// a chunk row's intermediates, so a kept forward ([`Kept`]) leaves them out.
struct Loaded {
    kq: Tensor,
    k: Tensor,
    x: Tensor,
    lk: Tensor,
    qg: Tensor,
    g: Tensor,
}

/// The rest of the forward's intermediates, which the backward reuses: the products, the solve and
/// the state walk.
struct Walked {
    np: Tensor,
    t: Tensor,
    pt: Tensor,
    uw: Tensor,
    hs: Tensor,
    vp: Tensor,
}

fn load(prepared: &Tensor, conv: &Tensor, s: Shape) -> candle_core::Result<Loaded> {
    let (bn, dk, dv) = (s.rows(), s.h.key_dim, s.h.value_dim);
    let sizes = [bn * 2 * C * dk, bn * C * dk, bn * C * (dv + dk), bn * C * dk, bn * C * dk, bn * C];
    let loaded = kernel(
        "gdn_chunk_load",
        &[prepared, conv],
        sizes.iter().sum::<usize>(),
        Grid::PerRow { rows: bn, threads: THREADS },
        &i32s(&[s.batch, s.seq, s.h.key_heads, s.h.value_heads, dk, dv]),
    )?;
    Ok(Loaded {
        kq: part(&loaded, &sizes, 0, &[bn, 2 * C, dk])?,
        k: part(&loaded, &sizes, 1, &[bn, C, dk])?,
        x: part(&loaded, &sizes, 2, &[bn, C, dv + dk])?,
        lk: part(&loaded, &sizes, 3, &[bn, C, dk])?,
        qg: part(&loaded, &sizes, 4, &[bn, C, dk])?,
        g: part(&loaded, &sizes, 5, &[bn, C])?,
    })
}

/// The solve, its products and the state walk over a group's loaded chunks, from `state`; with the
/// final state.
fn walk(l: &Loaded, state: &Tensor, s: Shape) -> candle_core::Result<(Walked, Tensor)> {
    let (bn, dk, dv) = (s.rows(), s.h.key_dim, s.h.value_dim);
    let np = product(&l.kq, &l.k.t()?)?;
    let solved = kernel(
        "gdn_chunk_solve",
        &[&np, &l.g],
        2 * bn * C * C,
        Grid::PerRow { rows: bn, threads: THREADS },
        &[Scalar::I32(bn as i32)],
    )?;
    let t = part(&solved, &[bn * C * C; 2], 0, &[bn, C, C])?;
    let pt = part(&solved, &[bn * C * C; 2], 1, &[bn, C, C])?;
    let uw = product(&t, &l.x)?;
    let sizes = [bn * dk * dv, bn * C * dv, s.items() * dk * dv];
    let walked = kernel(
        "gdn_chunk_state",
        &[&uw, &l.lk, &l.g, state],
        sizes.iter().sum::<usize>(),
        walk_grid(s),
        &i32s(&[s.items(), s.chunks, dk, dv]),
    )?;
    let hs = part(&walked, &sizes, 0, &[bn, dk, dv])?;
    let vp = part(&walked, &sizes, 1, &[bn, C, dv])?;
    let final_state = part(&walked, &sizes, 2, &[s.batch, s.h.value_heads, dk, dv])?;
    Ok((Walked { np, t, pt, uw, hs, vp }, final_state))
}

/// Between the chunk layout and the layer's: `a + b` into `(batch, seq, heads, dv)`, or `a` (the
/// layer's) gathered into chunks.
fn layout(a: &Tensor, b: &Tensor, s: Shape, to_layer: bool) -> candle_core::Result<Tensor> {
    let dv = s.h.value_dim;
    let len = if to_layer { s.batch * s.seq * s.h.value_heads * dv } else { s.rows() * C * dv };
    let shape = if to_layer { vec![s.batch, s.seq, s.h.value_heads, dv] } else { vec![s.rows(), C, dv] };
    let scalars = i32s(&[s.batch, s.seq, s.h.value_heads, dv, to_layer as usize]);
    // Four values a thread (the kernel's float4s; [`takes`] asks dv to be a multiple of four).
    kernel("gdn_chunk_layout", &[a, b], shape, Grid::Stride(len / 4), &scalars)
}

fn shape_of(p: &Projections, h: Heads) -> candle_core::Result<Shape> {
    let (batch, seq, _) = p.conv.dims3()?;
    Ok(Shape { batch, seq, chunks: seq.div_ceil(C), h })
}

/// A group's intermediates kept by a forward for the backward that follows it: sequences `from ..
/// from + n` and what [`walk`] made of them.
pub(super) struct KeptGroup {
    from: usize,
    n: usize,
    walked: Walked,
}

/// The rule over one group: outputs `(batch, seq, value_heads, dv)` and the final state, f32, and
/// what [`walk`] made when `keep`.
fn forward_group(
    p: &Projections,
    state: &Tensor,
    h: Heads,
    keep: bool,
) -> candle_core::Result<(Tensor, Tensor, Option<Walked>)> {
    let s = shape_of(p, h)?;
    let loaded = load(&prepared_on_device(p, h)?, p.conv, s)?;
    let (walked, final_state) = walk(&loaded, state, s)?;
    let o1 = product(&loaded.qg, &walked.hs)?;
    let o2 = product(&walked.pt, &walked.vp)?;
    Ok((layout(&o1, &o2, s, true)?, final_state, keep.then_some(walked)))
}

/// The chunked form from a layer's raw inputs and `state` `(batch, value_heads, dk, dv)`: the outputs
/// `(batch, seq, value_heads, dv)` and the final state, in f32; with `keep`, each group's solve,
/// products and state walk for [`backward`] (about 230 KB a chunk row at 128 × 128 heads: 1.4 GB for
/// qwen3.5-27b's 8 × 1024 tokens, held until the backward has used each group).
pub(super) fn forward(
    p: &Projections,
    state: &Tensor,
    h: Heads,
    keep: bool,
) -> candle_core::Result<(Tensor, Tensor, Vec<KeptGroup>)> {
    let _tf32 = Tf32Products::on();
    let batch = p.conv.dim(0)?;
    let n = group_size(batch, p.conv.dim(1)?, h, false);
    let (mut outs, mut states, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    for from in (0..batch).step_by(n) {
        let n = n.min(batch - from);
        let parts = slice(p, from, n)?;
        let (o, st, walked) = forward_group(&group(p, &parts), &state.narrow(0, from, n)?, h, keep)?;
        outs.push(o);
        states.push(st);
        kept.extend(walked.map(|walked| KeptGroup { from, n, walked }));
    }
    Ok((joined(&outs)?, joined(&states)?, kept))
}

/// The prepared inputs' gradients of one group (as `gated_delta_prepare_backward_bf16` reads them),
/// from a zero state, given `d_out` `(batch, seq, value_heads, dv)` in f32; the forward's solve,
/// products and walk are `kept` or made again.
fn backward_group(
    p: &Projections,
    h: Heads,
    d_out: &Tensor,
    kept: Option<Walked>,
) -> candle_core::Result<Tensor> {
    let s = shape_of(p, h)?;
    let (bn, dk, dv) = (s.rows(), h.key_dim, h.value_dim);
    let prepared = prepared_on_device(p, h)?;
    let loaded = load(&prepared, p.conv, s)?;
    let walked = match kept {
        Some(walked) => walked,
        None => {
            let zero = Tensor::zeros((s.batch, h.value_heads, dk, dv), DType::F32, p.conv.device())?;
            walk(&loaded, &zero, s)?.0
        }
    };
    // Each intermediate is dropped after its last use: the group's peak is what sizes the groups.
    let (Loaded { kq, k, x, lk, qg, g }, Walked { np, t, pt, uw, hs, vp }) = (loaded, walked);
    let d_o = layout(d_out, d_out, s, false)?;
    let bm = product(&qg.t()?, &d_o)?;
    let a = product(&pt.t()?, &d_o)?;
    let sizes = [bn * 2 * C * dv, bn * dk * dv];
    let walked = kernel(
        "gdn_chunk_state_backward",
        &[&bm, &a, &lk, &uw, &g, &d_o],
        sizes.iter().sum::<usize>(),
        walk_grid(s),
        &i32s(&[s.items(), s.chunks, dk, dv]),
    )?;
    drop((bm, a, uw));
    let dv2 = part(&walked, &sizes, 0, &[bn, 2 * C, dv])?;
    let dh = part(&walked, &sizes, 1, &[bn, dk, dv])?;
    let y1 = product(&dv2, &hs.t()?)?;
    let y2 = product(&vp, &dh.t()?)?;
    let y3 = product(&d_o, &vp.t()?)?;
    let z = kernel(
        "gdn_chunk_pack_dz",
        &[&dv2, &y1],
        (bn, C, dv + dk),
        Grid::Stride(bn * C * (dv + dk) / 4),
        &i32s(&[bn, dk, dv]),
    )?;
    let dx = product(&t.t()?, &z)?;
    let dt = product(&z, &x.t()?)?;
    drop(z);
    let dnf = product(&t.t()?, &product(&dt, &t.t()?)?)?;
    drop((dt, t, pt));
    let sizes = [bn * 2 * C * C, bn * C];
    let masked = kernel(
        "gdn_chunk_masks_backward",
        &[&dnf, &y3, &np, &g],
        sizes.iter().sum::<usize>(),
        Grid::PerRow { rows: bn, threads: THREADS },
        &[Scalar::I32(bn as i32)],
    )?;
    drop((dnf, y3, np));
    let dnp = part(&masked, &sizes, 0, &[bn, 2 * C, C])?;
    let eg = part(&masked, &sizes, 1, &[bn, C])?;
    let f1 = product(&dnp, &k)?;
    let f2 = product(&dnp.t()?, &kq)?;
    let vrows = s.batch * s.seq * h.value_heads;
    kernel(
        "gdn_chunk_grads",
        &[&prepared, p.conv, &y1, &y2, &dx, &f1, &f2, &eg, &hs, &dh],
        2 * vrows * dk + vrows * dv + 2 * vrows,
        // A warp per token, four a block (16 were slower: 336 µs a call against 298 at 0.8b, H200).
        Grid::PerRow { rows: bn, threads: 128 },
        &i32s(&[s.batch, s.seq, h.key_heads, h.value_heads, dk, dv]),
    )
}

/// The gradients of the layer's raw inputs `[conv, a, b]` (bf16) for the rule from a zero state, given
/// `d_out` `(batch, seq, value_heads, dv)`: per group, the chunked backward, then
/// `gated_delta_prepare_backward_bf16` back through the preparation. The groups are those a forward
/// `kept` (one that kept nothing leaves groups sized for the backward's own peak, each recomputing
/// its forward); a kept group goes as soon as its backward has run.
pub(super) fn backward(
    p: &Projections,
    h: Heads,
    d_out: &Tensor,
    kept: Vec<KeptGroup>,
) -> candle_core::Result<[Tensor; 3]> {
    let _tf32 = Tf32Products::on();
    let (batch, seq, width) = p.conv.dims3()?;
    let groups: Vec<(usize, usize, Option<Walked>)> = if kept.is_empty() {
        let n = group_size(batch, seq, h, true);
        (0..batch).step_by(n).map(|from| (from, n.min(batch - from), None)).collect()
    } else {
        kept.into_iter().map(|k| (k.from, k.n, Some(k.walked))).collect()
    };
    if groups.iter().map(|g| g.1).sum::<usize>() != batch {
        candle_core::bail!("gated delta rule: the kept forward was of another batch than {batch} sequences");
    }
    let d_out = d_out.to_dtype(DType::F32)?;
    let mut parts: [Vec<Tensor>; 3] = Default::default();
    for (from, n, walked) in groups {
        let sliced = slice(p, from, n)?;
        let g = group(p, &sliced);
        let grads = backward_group(&g, h, &d_out.narrow(0, from, n)?, walked)?;
        let (rows, vrows) = (n * seq, n * seq * h.value_heads);
        let (grid, scalars) = preparation_launch(rows, h);
        let raw = launch_on_tensors::<half::bf16>(
            "gated_delta_prepare_backward_bf16",
            &[g.conv, g.a, g.b, g.neg_a, g.dt_bias, &grads],
            rows * width + 2 * vrows,
            grid,
            &scalars,
        )?;
        parts[0].push(raw.narrow(0, 0, rows * width)?.reshape((n, seq, width))?);
        parts[1].push(raw.narrow(0, rows * width, vrows)?.reshape((n, seq, h.value_heads))?);
        parts[2].push(raw.narrow(0, rows * width + vrows, vrows)?.reshape((n, seq, h.value_heads))?);
    }
    Ok([joined(&parts[0])?, joined(&parts[1])?, joined(&parts[2])?])
}
