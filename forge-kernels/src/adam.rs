//! The AdamW step on the device, one fused kernel per parameter (`adamw_f32`, `adamw8bit_f32`), for
//! forge-host's built-in `adamw` and `adamw8bit` when training on CUDA. The host path downloads every
//! gradient and parameter, steps on the CPU and uploads the result: two host round trips a parameter
//! a step. Here parameter, gradient and state stay where they are; the kernels follow the host's
//! order of operations rounding for rounding, so the device's parameters and state equal the host's
//! bit for bit (`forge kernels` checks both against forge-host's optimizers).
//!
//! A kernel writes its results into a new buffer: the parameter's new values first, then the new
//! state, which the caller keeps for the next step (a view of that buffer).
use candle_core::Tensor;

/// One step's constants, computed on the host as the host optimizer computes them.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub lr: f64,
    /// The step number, from 1.
    pub t: u64,
}

#[cfg(feature = "cuda")]
impl AdamStep {
    fn scalars(&self, n: usize) -> Vec<crate::launch::Scalar> {
        use crate::launch::Scalar::{F32, F64, I64};
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        vec![
            I64(n as i64),
            F32(b1),
            F32(1.0 - b1),
            F32(b2),
            F32(1.0 - b2),
            F64(1.0 - self.beta1.powi(self.t as i32)),
            F64(1.0 - self.beta2.powi(self.t as i32)),
            F64(1.0 - self.lr * self.weight_decay),
            F64(self.lr),
            F64(self.eps),
        ]
    }
}

/// Values of the f32 state buffer of `adamw8bit_f32` for `n` parameters: both absmax arrays, then
/// both code arrays as bytes, each padded to whole f32 words.
pub fn adam8bit_state_len(n: usize) -> usize {
    2 * n.div_ceil(256) + 2 * n.div_ceil(4)
}

/// AdamW with f32 moments: `param` and `grad` f32 of n values, `state` f32 `[m; n] ++ [v; n]`.
/// Returns the new parameter (its shape) and the new state. Without the `cuda` feature, an error.
#[cfg(feature = "cuda")]
pub fn adamw_step(
    param: &Tensor,
    grad: &Tensor,
    state: &Tensor,
    step: &AdamStep,
) -> candle_core::Result<(Tensor, Tensor)> {
    use crate::launch::{launch_on_tensors, Grid};
    let n = param.elem_count();
    check(param, grad, state, 2 * n)?;
    let inputs = [&param.flatten_all()?, &grad.flatten_all()?, state];
    let out = launch_on_tensors::<f32>("adamw_f32", &inputs, 3 * n, Grid::Stride(n), &step.scalars(n))?;
    Ok((out.narrow(0, 0, n)?.reshape(param.shape())?, out.narrow(0, n, 2 * n)?))
}

/// AdamW with block-wise 8-bit moments: `state` as [`adam8bit_state_len`] describes, `maps` the
/// signed then the unsigned 256-entry code book (f32). Returns the new parameter and the new state.
/// Without the `cuda` feature, an error.
#[cfg(feature = "cuda")]
pub fn adamw8bit_step(
    param: &Tensor,
    grad: &Tensor,
    state: &Tensor,
    maps: &Tensor,
    step: &AdamStep,
) -> candle_core::Result<(Tensor, Tensor)> {
    use crate::launch::{launch_on_tensors, Grid};
    let n = param.elem_count();
    let len = adam8bit_state_len(n);
    check(param, grad, state, len)?;
    let inputs = [&param.flatten_all()?, &grad.flatten_all()?, state, maps];
    let grid = Grid::PerRow { rows: n.div_ceil(256).min(65535), threads: 256 };
    let out = launch_on_tensors::<f32>("adamw8bit_f32", &inputs, n + len, grid, &step.scalars(n))?;
    Ok((out.narrow(0, 0, n)?.reshape(param.shape())?, out.narrow(0, n, len)?))
}

/// What the steps are without CUDA: callers check for a CUDA parameter first.
#[cfg(not(feature = "cuda"))]
pub fn adamw_step(_: &Tensor, _: &Tensor, _: &Tensor, _: &AdamStep) -> candle_core::Result<(Tensor, Tensor)> {
    candle_core::bail!("the device AdamW step needs a build with the `cuda` feature")
}

#[cfg(not(feature = "cuda"))]
pub fn adamw8bit_step(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &AdamStep,
) -> candle_core::Result<(Tensor, Tensor)> {
    candle_core::bail!("the device AdamW step needs a build with the `cuda` feature")
}

#[cfg(feature = "cuda")]
fn check(param: &Tensor, grad: &Tensor, state: &Tensor, state_len: usize) -> candle_core::Result<()> {
    use candle_core::DType::F32;
    let f32_on_gpu = [param, grad, state].iter().all(|t| t.dtype() == F32 && t.device().is_cuda());
    if !f32_on_gpu || grad.elem_count() != param.elem_count() || state.elem_count() != state_len {
        candle_core::bail!(
            "the device AdamW step takes f32 parameter, gradient and state on one CUDA device, \
             the gradient as long as the parameter and a state of {state_len} values"
        );
    }
    Ok(())
}
