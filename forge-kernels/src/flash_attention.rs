//! Causal attention of grouped query heads as one kernel (`cuda/flash_attention.cu`): the scores and
//! probabilities stay on chip, where the path it replaces writes and reads back the bf16
//! `(batch, heads, seq, total)` scores and probabilities between three launches (q·kᵀ, the softmax,
//! p·v). On qwen2.5-0.5b's eval those three were 153 of 400 ms (FORGE_PROFILE, NVIDIA H200); with
//! this kernel its eval went from 241,542 to 376,656 tokens/s on the same card (the peer's SDPA:
//! 236,782), and qwen3-1.7b's to 1.38 × the peer's (docs/BENCHMARKS.md, session 13).
//!
//! Forward only, like the crate's other forward kernels: it runs where no input takes a gradient, and
//! training joins it to the recomputing backward in forge-host's `causal_attention`.
use candle_core::Tensor;

/// The head sizes the kernel is built for (Qwen2.5-0.5b's 64, Qwen3's and Llama's 128, Qwen3.5's
/// 256), with the key tile each takes: 256 wide rows take tiles of 32 so that the output accumulator
/// fits the registers.
#[cfg(feature = "cuda")]
fn kernel_for(head_dim: usize) -> Option<(&'static str, &'static str, usize)> {
    match head_dim {
        64 => Some(("flash_attention_d64_bf16", "flash_attention_at_d64_bf16", 64)),
        128 => Some(("flash_attention_d128_bf16", "flash_attention_at_d128_bf16", 64)),
        256 => Some(("flash_attention_d256_bf16", "flash_attention_at_d256_bf16", 32)),
        _ => None,
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
        if let Some((kernel, _, key_tile)) = kernel_for(q.dim(3)?) {
            let (rows, seq) = (k.dim(2)?, q.dim(2)?);
            if rows != past + seq {
                candle_core::bail!("flash attention: {rows} keys a head for {past} cached and {seq} new");
            }
            return launch(kernel, key_tile, [q, k, v], None, rows, past).map(Some);
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
        Some((_, kernel, key_tile)) if crate::forward_kernel(&[q, k, v]) => {
            launch(kernel, key_tile, [q, k, v], Some(past_at), k.dim(2)?, 0)
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

/// One launch of either form: `past_at` given, the cached positions are read from it and `past` is
/// not passed; otherwise `past` is.
#[cfg(feature = "cuda")]
fn launch(
    kernel: &'static str,
    key_tile: usize,
    [q, k, v]: [&Tensor; 3],
    past_at: Option<&Tensor>,
    kv_rows: usize,
    past: usize,
) -> candle_core::Result<Tensor> {
    use crate::launch::{aligned8, launch_on_tensors, Grid, Scalar};
    const ROWS: usize = 64;
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
    // The query tile, one key tile and one value tile, rows padded by 8 bf16.
    let shared = ((ROWS + 2 * key_tile) * (d + 8) * 2) as u32;
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
        Grid::PerRowShared { rows: seq.div_ceil(ROWS) * batch * heads, threads: 128, shared },
        &scalars,
    )
}
