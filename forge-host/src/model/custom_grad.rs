//! Joining a result computed outside the autograd graph back into it, with a hand-written backward.
//!
//! candle's fused kernels have no backward, and some backwards it does have are wasteful (a matmul
//! always computes both operands' gradients). The pattern used throughout forge: compute the output
//! from a detached input (no graph, no stored intermediates), then attach it to the input with a
//! custom op whose forward passes the output through and whose backward is the closure given —
//! written once here, tested against finite differences or elementary ops where it is used.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

type Backward = Box<dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync>;

/// `output` (computed from `input` outside the graph), whose gradient reaches `input` as
/// `backward(grad_output, output)`.
pub fn with_gradient(
    input: &Tensor,
    output: Tensor,
    backward: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
) -> candle_core::Result<Tensor> {
    if !input.track_op() {
        return Ok(output);
    }
    input.apply_op2(&output, GradientFn { name: "with-gradient", backward: Box::new(backward) })
}

struct GradientFn {
    name: &'static str,
    backward: Backward,
}

impl CustomOp2 for GradientFn {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        output: &CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((output.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        output: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((output.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.backward)(grad, res)?), None))
    }
}
