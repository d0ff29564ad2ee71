//! Causal attention of grouped query heads as one kernel (`cuda/flash_attention.cu`): the scores and
//! probabilities stay on chip, where the path it replaces writes and reads back the bf16
//! `(batch, heads, seq, total)` scores and probabilities between three launches (q·kᵀ, the softmax,
//! p·v). On qwen2.5-0.5b's eval those three were 153 of 400 ms (FORGE_PROFILE, NVIDIA H200); with
//! this kernel its eval went from 241,542 to 376,656 tokens/s on the same card (the peer's SDPA:
//! 236,782), and qwen3-1.7b's to 1.38 × the peer's (docs/BENCHMARKS.md, session 13).
//!
//! Forward only, like the crate's other forward kernels: it runs where no input takes a gradient, and
//! training joins it to [`flash_attention_backward`] (`cuda/flash_attention_backward.cu`, heads of 64
//! and 128) or, elsewhere, to the recomputing backward in forge-host's `causal_attention`.
use candle_core::Tensor;

/// Rows a block of four warps takes at one row tile of 16 a warp (`FA_ROWS` in the kernels): query
/// rows of the decoding forward and of the backward's statistics and dq walks, keys of its dk/dv walk.
#[cfg(feature = "cuda")]
const TILE_ROWS: usize = 64;

/// One head size's forward kernels: the plain one with the query rows a block takes (two row tiles a
/// warp where the registers hold them), the one reading the position from the device (one row tile
/// a warp: a decoded token is one row), and the key tile both take.
#[cfg(feature = "cuda")]
struct Forward {
    kernel: &'static str,
    rows: usize,
    at_kernel: &'static str,
    key_tile: usize,
}

/// The head sizes the kernel is built for (Qwen2.5-0.5b's 64, Qwen3's and Llama's 128, Qwen3.5's
/// 256): rows of 256 take key tiles of 32 and one row tile a warp, so that the output accumulator fits
/// the registers.
#[cfg(feature = "cuda")]
fn kernel_for(head_dim: usize) -> Option<Forward> {
    let (kernel, rows, at_kernel, key_tile) = match head_dim {
        64 => ("flash_attention_d64_bf16", 2 * TILE_ROWS, "flash_attention_at_d64_bf16", 64),
        128 => ("flash_attention_d128_bf16", 2 * TILE_ROWS, "flash_attention_at_d128_bf16", 64),
        256 => ("flash_attention_d256_bf16", TILE_ROWS, "flash_attention_at_d256_bf16", 32),
        _ => return None,
    };
    Some(Forward { kernel, rows, at_kernel, key_tile })
}

/// The head sizes the backward kernels are built for, with the query tile of the dk/dv walk (heads of
/// 256 would not fit its two accumulators in the registers).
#[cfg(feature = "cuda")]
fn backward_kernels_for(head_dim: usize) -> Option<([&'static str; 3], usize)> {
    match head_dim {
        64 => Some((
            ["flash_attention_stats_d64_bf16", "flash_attention_dq_d64_bf16", "flash_attention_dkv_d64_bf16"],
            64,
        )),
        128 => Some((
            [
                "flash_attention_stats_d128_bf16",
                "flash_attention_dq_d128_bf16",
                "flash_attention_dkv_d128_bf16",
            ],
            32,
        )),
        _ => None,
    }
}

/// Whether [`flash_attention_backward`] takes heads of `head_dim` on CUDA.
pub fn backward_takes_head_dim(head_dim: usize) -> bool {
    #[cfg(feature = "cuda")]
    return backward_kernels_for(head_dim).is_some();
    #[cfg(not(feature = "cuda"))]
    {
        let _ = head_dim;
        false
    }
}

/// Whether [`flash_attention_at`] takes heads of `head_dim` (a fixed-size cache is made only then).
pub fn takes_head_dim(head_dim: usize) -> bool {
    #[cfg(feature = "cuda")]
    return kernel_for(head_dim).is_some();
    #[cfg(not(feature = "cuda"))]
    {
        let _ = head_dim;
        false
    }
}

/// `softmax(q·kᵀ / √d + causal mask) · v` for `q` `(batch, heads, seq, d)` and `k`, `v`
/// `(batch, kv_heads, past + seq, d)`, where query position i sees keys `0..=past + i`, as
/// `(batch, seq, heads · d)`; `None` where the kernel does not take the inputs (not bf16 on CUDA, a
/// head size it is not built for, an input that takes a gradient), and the caller computes it another
/// way.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    past: usize,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if crate::forward_kernel(&[q, k, v]) {
        if let Some(f) = kernel_for(q.dim(3)?) {
            let (rows, seq) = (k.dim(2)?, q.dim(2)?);
            if rows != past + seq {
                candle_core::bail!("flash attention: {rows} keys a head for {past} cached and {seq} new");
            }
            return launch((f.kernel, f.rows, f.key_tile), [q, k, v], None, rows, past).map(Some);
        }
    }
    Ok(None)
}

/// [`flash_attention`] over a fixed-size cache `k`, `v` `(batch, kv_heads, capacity, d)` whose first
/// `past + seq` positions are filled, with `past` read from `past_at` (one u32 on the device): a
/// captured decoding step replays it unchanged as the position moves. CUDA and bf16 only (a fixed-size
/// cache is made only where [`takes_head_dim`]).
#[cfg(feature = "cuda")]
pub fn flash_attention_at(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    past_at: &Tensor,
) -> candle_core::Result<Tensor> {
    match kernel_for(q.dim(3)?) {
        Some(f) if crate::forward_kernel(&[q, k, v]) => {
            launch((f.at_kernel, TILE_ROWS, f.key_tile), [q, k, v], Some(past_at), k.dim(2)?, 0)
        }
        _ => candle_core::bail!(
            "flash_attention_at takes bf16 on CUDA with heads of 64, 128 or 256, untracked"
        ),
    }
}

/// Without CUDA there is no fixed-size cache to read ([`takes_head_dim`] is false).
#[cfg(not(feature = "cuda"))]
pub fn flash_attention_at(_: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Tensor> {
    candle_core::bail!("flash_attention_at needs forge built with the cuda feature")
}

/// The gradients of [`flash_attention`]'s `q`, `k` and `v` (in their shapes) from its output `out` and
/// the output's gradient `grad`, both `(batch, seq, heads · d)`, without a score-sized tensor; `None`
/// where the kernels do not take the inputs (not bf16 on CUDA, heads other than 64 or 128), and the
/// caller computes them another way. Three launches (four when several blocks share a KV head): see
/// `cuda/flash_attention_backward.cu`.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn flash_attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    grad: &Tensor,
    past: usize,
) -> candle_core::Result<Option<[Tensor; 3]>> {
    #[cfg(feature = "cuda")]
    if crate::on_kernel(&[q, k, v, out, grad]) {
        if let Some((kernels, query_tile)) = backward_kernels_for(q.dim(3)?) {
            return backward(kernels, query_tile, [q, k, v, out, grad], past).map(Some);
        }
    }
    Ok(None)
}

/// dk and dv `(2, batch, kv_heads, past + seq, d)` from `[q, k, v, dO, stats]`; `scalars` are the dims,
/// then the scales.
#[cfg(feature = "cuda")]
fn keys_and_values(
    kernel: &'static str,
    query_tile: usize,
    inputs: [&Tensor; 5],
    scalars: &[crate::launch::Scalar],
) -> candle_core::Result<Tensor> {
    use crate::launch::{launch_on_tensors, Grid, Scalar};
    // Blocks of dk/dv below which the KV head's query heads are split over several blocks (their sums
    // added after): about eight blocks of 128 threads for each of an H100's or H200's 132 SMs.
    const ENOUGH_BLOCKS: usize = 1024;
    let (batch, heads, _, d) = inputs[0].dims4()?;
    let (kv_heads, total) = (inputs[1].dim(1)?, inputs[1].dim(2)?);
    let (groups, key_tiles) = (heads / kv_heads, total.div_ceil(TILE_ROWS));
    let per_block = (1..=groups)
        .rev()
        .find(|p| groups % p == 0 && batch * heads / p * key_tiles >= ENOUGH_BLOCKS)
        .unwrap_or(1);
    let slots = heads / per_block;
    // The five dims, the heads a block takes, the two scales.
    let mut with_heads = scalars[..5].to_vec();
    with_heads.push(Scalar::I32(per_block as i32));
    with_heads.extend_from_slice(&scalars[5..]);
    let padded = (2 * TILE_ROWS + 2 * query_tile) * (d + 8) * 2;
    let dkv = launch_on_tensors::<half::bf16>(
        kernel,
        &inputs,
        (2, batch, slots, total, d),
        Grid::PerRowShared {
            rows: key_tiles * batch * slots,
            threads: 128,
            shared: (padded + 2 * query_tile * 4) as u32,
        },
        &with_heads,
    )?;
    if per_block == groups {
        return Ok(dkv);
    }
    let len = 2 * batch * kv_heads * total * d;
    let parts = Scalar::I32((slots / kv_heads) as i32);
    launch_on_tensors::<half::bf16>(
        "flash_attention_group_sum_bf16",
        &[&dkv],
        (2, batch, kv_heads, total, d),
        Grid::Stride(len),
        &[Scalar::I64(len as i64), parts, Scalar::I64((total * d) as i64)],
    )
}

/// [`flash_attention_backward`]'s launches.
#[cfg(feature = "cuda")]
fn backward(
    [stats_kernel, dq_kernel, dkv_kernel]: [&'static str; 3],
    query_tile: usize,
    inputs: [&Tensor; 5],
    past: usize,
) -> candle_core::Result<[Tensor; 3]> {
    use crate::launch::{aligned8, launch_on_tensors, Grid, Scalar};
    let [q, k, v, out, grad] = inputs;
    let (q, k, v, out, grad) = (aligned8(q)?, aligned8(k)?, aligned8(v)?, aligned8(out)?, aligned8(grad)?);
    let (batch, heads, seq, d) = q.dims4()?;
    let (kv_heads, total) = (k.dim(1)?, k.dim(2)?);
    let rows = (batch, seq, heads * d);
    if heads % kv_heads != 0
        || total != past + seq
        || k.dims4()? != (batch, kv_heads, total, d)
        || v.dims4()? != k.dims4()?
        || out.dims3()? != rows
        || grad.dims3()? != rows
    {
        candle_core::bail!(
            "flash attention backward: q {:?}, k {:?}, v {:?}, output {:?} and its gradient {:?} with {past} \
             cached positions do not describe grouped causal attention",
            q.dims(),
            k.dims(),
            v.dims(),
            out.dims(),
            grad.dims()
        );
    }
    let dims = [batch, heads, kv_heads, seq, past].map(|n| Scalar::I32(n as i32));
    let scale = 1.0 / (d as f64).sqrt();
    let scale_log2 = Scalar::F32((std::f64::consts::LOG2_E * scale) as f32);
    let shared = |rows: usize| (rows * (d + 8) * 2) as u32;
    let query_blocks = seq.div_ceil(TILE_ROWS) * batch * heads;
    let stats = launch_on_tensors::<f32>(
        stats_kernel,
        &[&q, &k, &out, &grad],
        (2, batch, heads, seq),
        Grid::PerRowShared { rows: query_blocks, threads: 128, shared: shared(2 * TILE_ROWS) },
        &[&dims[..], &[scale_log2]].concat(),
    )?;
    let with_scales = [&dims[..], &[scale_log2, Scalar::F32(scale as f32)]].concat();
    let dq = launch_on_tensors::<half::bf16>(
        dq_kernel,
        &[&q, &k, &v, &grad, &stats],
        (batch, heads, seq, d),
        Grid::PerRowShared { rows: query_blocks, threads: 128, shared: shared(4 * TILE_ROWS) },
        &with_scales,
    )?;
    let dkv = keys_and_values(dkv_kernel, query_tile, [&q, &k, &v, &grad, &stats], &with_scales)?;
    Ok([dq, dkv.get(0)?, dkv.get(1)?])
}

/// One launch of either form, `rows` query rows and `key_tile` keys a block: `past_at` given, the
/// cached positions are read from it and `past` is not passed; otherwise `past` is.
#[cfg(feature = "cuda")]
fn launch(
    (kernel, rows, key_tile): (&'static str, usize, usize),
    [q, k, v]: [&Tensor; 3],
    past_at: Option<&Tensor>,
    kv_rows: usize,
    past: usize,
) -> candle_core::Result<Tensor> {
    use crate::launch::{aligned8, launch_on_tensors, Grid, Scalar};
    let (batch, heads, seq, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if heads % kv_heads != 0 || k.dims4()? != (batch, kv_heads, kv_rows, d) || v.dims4()? != k.dims4()? {
        candle_core::bail!(
            "flash attention: q {:?} with k {:?} and v {:?} do not describe grouped causal attention",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    // The query rows, one key tile and one value tile, rows padded by 8 bf16.
    let shared = ((rows + 2 * key_tile) * (d + 8) * 2) as u32;
    let scale_log2 = std::f64::consts::LOG2_E / (d as f64).sqrt();
    let last = if past_at.is_some() { kv_rows } else { past };
    let mut scalars: Vec<Scalar> =
        [batch, heads, kv_heads, seq, last].map(|n| Scalar::I32(n as i32)).to_vec();
    scalars.push(Scalar::F32(scale_log2 as f32));
    let (q, k, v) = (aligned8(q)?, aligned8(k)?, aligned8(v)?);
    let mut inputs = vec![&q, &k, &v];
    inputs.extend(past_at);
    launch_on_tensors::<half::bf16>(
        kernel,
        &inputs,
        (batch, seq, heads * d),
        Grid::PerRowShared { rows: seq.div_ceil(rows) * batch * heads, threads: 128, shared },
        &scalars,
    )
}
