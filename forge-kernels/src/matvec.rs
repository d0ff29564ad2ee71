//! Decoding's one-row products, `x · Wᵀ` for `x` `(1, k)` and weights `W` `(n, k)`: `matvec_bf16`
//! reads W once at the card's bandwidth, a warp a row (`cuda/matvec.cu` says why not cuBLAS at m = 1);
//! `matvec3_bf16` takes attention's three projections of one input, `matvec_swiglu_bf16` the MLP's
//! gate and up with the SwiGLU between them.
//! Sums run in f32 like cuBLAS's, in another order, so outputs may differ from the gemm's in the last
//! bf16 place; prompts and batches (more than one row) keep cuBLAS, and so does the CPU: there each
//! function answers `None`.
use candle_core::Tensor;

/// `x · [w₀; w₁; …]ᵀ` `(1, n₀ + n₁ + …)`, the products of up to three weights of one input side by
/// side in one launch (attention's q, k and v), or `None` where the kernel does not apply: more than
/// one row, not bf16 on CUDA, or `k` not a multiple of 8 (the kernel's loads).
#[cfg(feature = "cuda")]
pub fn matvec(x: &Tensor, weights: &[&Tensor]) -> candle_core::Result<Option<Tensor>> {
    use crate::launch::{aligned8, launch_on_tensors, Grid, Scalar};
    let (Some(&first), true) = (weights.first(), weights.len() <= 3) else {
        candle_core::bail!("matvec takes one to three weights, not {}", weights.len());
    };
    let Some(k) = one_row(x, weights)? else { return Ok(None) };
    let rows = weights.iter().map(|w| w.dim(0)).collect::<candle_core::Result<Vec<_>>>()?;
    let n: usize = rows.iter().sum();
    let grid = Grid::PerRow { rows: n.div_ceil(WARPS), threads: 32 * WARPS as u32 };
    let x = aligned8(x)?;
    if let [w] = weights {
        let scalars = [Scalar::I32(n as i32), Scalar::I32(k as i32)];
        return Ok(Some(launch_on_tensors::<half::bf16>(
            "matvec_bf16",
            &[&x, &aligned8(w)?],
            (1, n),
            grid,
            &scalars,
        )?));
    }
    // The kernel's three weights; a missing third is the first again, with no rows.
    let mut inputs = vec![x];
    let mut scalars = Vec::new();
    for i in 0..3 {
        inputs.push(aligned8(weights.get(i).copied().unwrap_or(first))?);
        scalars.push(Scalar::I32(rows.get(i).copied().unwrap_or(0) as i32));
    }
    scalars.push(Scalar::I32(k as i32));
    let inputs = inputs.iter().collect::<Vec<_>>();
    Ok(Some(launch_on_tensors::<half::bf16>("matvec3_bf16", &inputs, (1, n), grid, &scalars)?))
}

/// `silu(x · gateᵀ) · (x · upᵀ)` `(1, n)`, the MLP's first half at one row in one launch, rounded
/// as `swiglu` over the two products rounds it; `None` where [`matvec`] would be.
#[cfg(feature = "cuda")]
pub fn matvec_swiglu(x: &Tensor, gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    use crate::launch::{aligned8, launch_on_tensors, Grid, Scalar};
    let Some(k) = one_row(x, &[gate, up])? else { return Ok(None) };
    let n = gate.dim(0)?;
    if up.dim(0)? != n {
        candle_core::bail!("matvec_swiglu: gate has {n} rows, up {}", up.dim(0)?);
    }
    let inputs = [&aligned8(x)?, &aligned8(gate)?, &aligned8(up)?];
    let scalars = [Scalar::I32(n as i32), Scalar::I32(k as i32)];
    let grid = Grid::OneWave { blocks: n.div_ceil(WARPS), threads: 32 * WARPS as u32 };
    Ok(Some(launch_on_tensors::<half::bf16>("matvec_swiglu_bf16", &inputs, (1, n), grid, &scalars)?))
}

/// The width `k` of the one row `x` `(1, k)` when the kernels take it with `weights` `(·, k)`.
#[cfg(feature = "cuda")]
fn one_row(x: &Tensor, weights: &[&Tensor]) -> candle_core::Result<Option<usize>> {
    let (rows, k) = x.dims2()?;
    for w in weights {
        if w.dims2()?.1 != k {
            candle_core::bail!("a one-row product of a row of {k} with a weight {:?}", w.dims());
        }
    }
    let mut all = vec![x];
    all.extend_from_slice(weights);
    Ok((rows == 1 && k.is_multiple_of(8) && crate::forward_kernel(&all)).then_some(k))
}

/// Warps a block, a row each (the kernels' `MV_WARPS`).
#[cfg(feature = "cuda")]
const WARPS: usize = 8;

/// Without CUDA, no product takes the kernel.
#[cfg(not(feature = "cuda"))]
pub fn matvec(_: &Tensor, _: &[&Tensor]) -> candle_core::Result<Option<Tensor>> {
    Ok(None)
}

/// Without CUDA, no product takes the kernel.
#[cfg(not(feature = "cuda"))]
pub fn matvec_swiglu(_: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
    Ok(None)
}
