//! Qwen3's and Qwen3.5's per-head q/k norm and the RoPE after it as one kernel, where nothing takes a
//! gradient: each is a launch a layer for q and another for k, and in decoding a launch's floor more
//! than its work (ncu on qwen3-4b's token: 72 warp norms and 72 RoPE launches, 430 µs, became 72 of
//! this kernel, 287 µs; 3.66 → 3.51 ms of kernels, docs/BENCHMARKS.md). Both conventions
//! of the norm's weight, full and partial RoPE; the output equals [`crate::rms_norm`] (or
//! [`crate::rms_norm_f32_weight`]) then [`crate::rope_heads_first`] bit for bit (`forge kernels`).
use candle_core::Tensor;

/// `rope_heads_first(norm(x))` for `x` `(batch, seq, heads, d)` with the norm's weight `w` `(d)` (bf16:
/// scale by `w`; f32: Qwen3.5's `1 + w`) and tables `cos`, `sin` `(1, 1, seq, rot)`, heads-first; or
/// `None` where the kernel does not apply: not bf16 on CUDA, an input that takes a gradient, or a
/// head the warp cannot hold (more than 256 values, or not a multiple of 8; `rot / 2` a multiple of 8).
#[cfg(feature = "cuda")]
pub fn rms_norm_rope(
    x: &Tensor,
    w: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    use crate::launch::{aligned8, launch_on_tensors, Grid, Scalar};
    use candle_core::DType;
    const WARPS: usize = 8;
    let (b, s, h, d) = x.dims4()?;
    let rot = cos.dim(candle_core::D::Minus1)?;
    let fits = d <= 256 && d % 8 == 0 && rot <= d && rot % 16 == 0 && w.elem_count() == d;
    let weight =
        matches!(w.dtype(), DType::BF16 | DType::F32) && !w.device().is_cpu() && !crate::tape::tracked(w);
    if !fits || !weight || !crate::forward_kernel(&[x, cos, sin]) {
        return Ok(None);
    }
    let (cos, sin) = (cos.squeeze(0)?.squeeze(0)?, sin.squeeze(0)?.squeeze(0)?);
    let kernel = if w.dtype() == DType::F32 { "rms_norm_f32w_rope_bf16" } else { "rms_norm_rope_bf16" };
    let rows = b * s * h;
    let scalars = [
        Scalar::I32(s as i32),
        Scalar::I32(h as i32),
        Scalar::I32(d as i32),
        Scalar::I32(rot as i32),
        Scalar::F32(eps as f32),
        Scalar::I64(rows as i64),
    ];
    let grid = Grid::PerRow { rows: rows.div_ceil(WARPS), threads: 32 * WARPS as u32 };
    let inputs = [&aligned8(x)?, w, &cos, &sin];
    Ok(Some(launch_on_tensors::<half::bf16>(kernel, &inputs, (b, h, s, d), grid, &scalars)?))
}

/// Without CUDA, the norm and the rotation stay two ops.
#[cfg(not(feature = "cuda"))]
pub fn rms_norm_rope(
    _: &Tensor,
    _: &Tensor,
    _: f64,
    _: &Tensor,
    _: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    Ok(None)
}
