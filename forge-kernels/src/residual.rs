//! The residual stream's add, a linear layer's bias, the embedding lookup, attention's transposed
//! copies and narrowed copies, on forge's kernels where they run. None is faster than candle's by more than a launch; they exist so that eval
//! and generation never load candle's binary-op, indexing and unary PTX modules, which the driver
//! compiles whole on a fresh machine (7.2 s, 1.9 s and 2.2 s on an H200, `forge kernels
//! --candle-jit`), inside the first forward pass.
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::{on_kernel, tape};

/// `a + b` for two tensors of one shape; differentiable (the gradient passes to both).
pub fn residual_add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if on_kernel(&[a, b]) && a.shape() == b.shape() {
        return tape::apply_op2(
            &tape::contiguous(a)?,
            &tape::contiguous(b)?,
            Add { second_takes_gradient: true },
        );
    }
    if tape::records(&[a, b]) {
        let sum = (a.detach() + b.detach())?;
        return tape::record("residual add", &[a, b], sum, |g| Ok(vec![Some(g.clone()), Some(g.clone())]));
    }
    a + b
}

/// `x + bias` over the last dimension, for a frozen bias (a linear layer's); differentiable in `x`.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if on_kernel(&[x, bias]) && !bias.track_op() && bias.rank() == 1 && x.dims().last() == Some(&bias.dim(0)?)
    {
        return tape::apply_op2(&tape::contiguous(x)?, bias, Add { second_takes_gradient: false });
    }
    Ok(tape::through_graph("add bias", &[x, bias], |v| Ok((v[0].broadcast_add(&v[1])?, ())))?.0)
}

/// `a + b`, `b` repeated over `a`'s leading dimensions (a bias) or of `a`'s shape (a residual): one
/// kernel, reading `b` at `i mod len(b)`.
struct Add {
    /// A residual's second term takes the gradient; a frozen bias none.
    second_takes_gradient: bool,
}

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("forge's add runs on its CUDA kernel only (the CPU takes candle's add)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::launch::{same_shape, Grid, Scalar};
        let (total, n) = (al.shape().elem_count(), bl.shape().elem_count());
        let scalars = [Scalar::I64(total as i64), Scalar::I64(n as i64)];
        same_shape::<half::bf16>("add_bias_bf16", &[(a, al), (b, bl)], Grid::Stride8(total), &scalars)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), self.second_takes_gradient.then(|| grad.clone())))
    }
}

/// Rows `ids` (u32, any shape) of `table` `(vocab, dim)`: `(ids…, dim)`. The table takes no gradient
/// (forge never trains embeddings; `forward_kernel`'s rule keeps one that does on candle's op).
pub fn embedding(table: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::forward_kernel(&[table]) && ids.dtype() == candle_core::DType::U32 {
        use crate::launch::{launch_on_tensors, Grid, Scalar};
        let dim = table.dim(1)?;
        let mut shape = ids.dims().to_vec();
        shape.push(dim);
        let n = ids.elem_count() * dim;
        return launch_on_tensors::<half::bf16>(
            "embedding_bf16",
            &[table, ids],
            shape,
            Grid::Stride(n),
            &[Scalar::I64(n as i64), Scalar::I32(dim as i32)],
        );
    }
    let mut shape = ids.dims().to_vec();
    shape.push(table.dim(1)?);
    table.embedding(&ids.flatten_all()?)?.reshape(shape)
}

/// `x` `(a, b, c, d)` with its middle dimensions swapped, contiguous: `(a, c, b, d)` — the values'
/// `(batch, seq, heads, d)` made heads-first for attention, and attention's output made tokens-first
/// for `o_proj`. Differentiable (the swap is its own inverse).
pub fn transpose12(x: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b, c, d) = x.dims4()?;
    // With one of the two of size 1 (decoding's one position) the swap moves nothing: a reshape,
    // where the kernel would be one more launch a layer.
    if (b == 1 || c == 1) && x.is_contiguous() {
        return tape::reshape(x, (a, c, b, d));
    }
    if on_kernel(&[x]) {
        return tape::apply_op1(&tape::contiguous(x)?, Transpose12);
    }
    Ok(tape::through_graph("transpose12", &[x], |v| Ok((v[0].transpose(1, 2)?.contiguous()?, ())))?.0)
}

/// `x.narrow(dim, start, len)`, contiguous. Differentiable (the backward pads the gradient with zeros,
/// on forge's tape or through candle's ops).
pub fn narrow(x: &Tensor, dim: usize, start: usize, len: usize) -> candle_core::Result<Tensor> {
    if tape::records(&[x]) {
        let size = x.dim(dim)?;
        return tape::record("narrow", &[x], narrow(&tape::detach(x)?, dim, start, len)?, move |g| {
            let zeros = |n: usize| {
                let mut dims = g.dims().to_vec();
                dims[dim] = n;
                Tensor::zeros(dims, g.dtype(), g.device())
            };
            let (before, after) = (zeros(start)?, zeros(size - start - len)?);
            let parts: Vec<&Tensor> = [(start > 0, &before), (true, g), (start + len < size, &after)]
                .into_iter()
                .filter(|p| p.0)
                .map(|p| p.1)
                .collect();
            Ok(vec![Some(Tensor::cat(&parts, dim)?)])
        });
    }
    #[cfg(feature = "cuda")]
    if on_kernel(&[x]) && !x.track_op() {
        use crate::launch::{launch_on_tensors, Grid, Scalar};
        let dims = x.dims();
        let (outer, size, inner) =
            (dims[..dim].iter().product::<usize>(), dims[dim], dims[dim + 1..].iter().product::<usize>());
        let mut shape = dims.to_vec();
        shape[dim] = len;
        let n = outer * len * inner;
        let scalars = [Scalar::I64(n as i64), Scalar::I32(size as i32), Scalar::I32(inner as i32)];
        let scalars = [&scalars[..], &[Scalar::I32(start as i32), Scalar::I32(len as i32)]].concat();
        return launch_on_tensors::<half::bf16>("narrow_bf16", &[x], shape, Grid::Stride(n), &scalars);
    }
    x.narrow(dim, start, len)?.contiguous()
}

struct Transpose12;

impl candle_core::CustomOp1 for Transpose12 {
    fn name(&self) -> &'static str {
        "transpose12"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("transpose12 runs on forge's CUDA kernel only (the CPU takes candle's transpose)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::launch::{launch, Grid, Scalar};
        let (b, s, h, d) = l.shape().dims4()?;
        let n = b * s * h * d;
        let scalars =
            [Scalar::I64(n as i64), Scalar::I32(s as i32), Scalar::I32(h as i32), Scalar::I32(d as i32)];
        Ok((
            launch::<half::bf16>("transpose12_bf16", &[(x, l)], n, Grid::Stride(n), &scalars)?,
            (b, h, s, d).into(),
        ))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(transpose12(grad)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// With one of the swapped dimensions of size 1 the swap is a reshape, with the values and the
    /// contiguous layout of the transpose.
    #[test]
    fn a_swap_with_a_dimension_of_one_is_the_transpose() -> candle_core::Result<()> {
        for dims in [(2, 1, 3, 4), (2, 3, 1, 4)] {
            let x = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape(dims)?;
            let swapped = transpose12(&x)?;
            let want = x.transpose(1, 2)?.contiguous()?;
            assert_eq!(swapped.dims(), want.dims());
            assert_eq!(swapped.flatten_all()?.to_vec1::<f32>()?, want.flatten_all()?.to_vec1::<f32>()?);
            assert!(swapped.is_contiguous());
        }
        Ok(())
    }
}
