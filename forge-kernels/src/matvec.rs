//! Decoding's one-row products, `x · Wᵀ` for `x` `(1, k)` and a weight `W` `(n, k)`: `matvec_bf16`
//! reads W once at the card's bandwidth, a warp a row (`cuda/matvec.cu` says why not cuBLAS at m = 1).
//! Sums run in f32 like cuBLAS's, in another order, so outputs may differ from the gemm's in the last
//! bf16 place; prompts and batches (more than one row) keep cuBLAS.
use candle_core::Tensor;

/// `x · wᵀ` `(1, n)` by the one-row kernel, or `None` where it does not apply: more than one row,
/// not bf16 on CUDA, or `k` not a multiple of 8 (the kernel's loads).
#[cfg(feature = "cuda")]
pub fn matvec(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    use crate::launch::{aligned8, launch_on_tensors, Grid, Scalar};
    /// Rows of W a block: one a warp, eight warps (`MV_WARPS`).
    const ROWS_A_BLOCK: usize = 8;
    let ((rows, k), (n, wk)) = (x.dims2()?, w.dims2()?);
    if rows != 1 || k != wk || !k.is_multiple_of(8) || !crate::forward_kernel(&[x, w]) {
        return Ok(None);
    }
    let grid = Grid::PerRow { rows: n.div_ceil(ROWS_A_BLOCK), threads: 32 * ROWS_A_BLOCK as u32 };
    let scalars = [Scalar::I32(n as i32), Scalar::I32(k as i32)];
    let inputs = [&aligned8(x)?, &aligned8(w)?];
    Ok(Some(launch_on_tensors::<half::bf16>("matvec_bf16", &inputs, (1, n), grid, &scalars)?))
}
