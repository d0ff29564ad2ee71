//! Joining a result computed outside the autograd graph back into it, with a hand-written backward.
//!
//! candle's fused kernels have no backward, and some backwards it does have are wasteful (a matmul
//! always computes both operands' gradients). The pattern used throughout forge: compute the output
//! from detached inputs (no graph, no stored intermediates), then attach it to the inputs with a
//! custom op whose forward passes the output through and whose backward is the closure given —
//! written once here, tested against finite differences or elementary ops where it is used. While
//! forge's tape records (training's layer-wise backward, `forge_kernels::tape`), the closure goes onto
//! the tape instead and candle's graph is not built.
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor};

use forge_kernels::profile::section;
use forge_kernels::tape;

type Backward1 = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync>;
type Backward2 = Box<dyn Fn(&Tensor) -> candle_core::Result<[Option<Tensor>; 2]> + Send + Sync>;
type Backward3 = Box<dyn Fn(&Tensor) -> candle_core::Result<[Option<Tensor>; 3]> + Send + Sync>;

/// `output` (computed from `input` outside the graph), whose gradient reaches `input` as
/// `backward(grad_output)`; `name` names the backward in profiles (`FORGE_PROFILE`).
pub fn with_gradient(
    name: &'static str,
    input: &Tensor,
    output: Tensor,
    backward: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
) -> candle_core::Result<Tensor> {
    if tape::records(&[input]) {
        return on_tape(name, &[input], output, move |g| Ok([Some(backward(g)?)]));
    }
    if !input.track_op() {
        return Ok(output);
    }
    input.apply_op1(Joined::new(name, output, Box::new(backward) as Backward1)?)
}

/// `output` (computed from two inputs outside the graph), whose gradients reach them as
/// `backward(grad_output)`, `None` for an input that gets none.
pub fn with_two_gradients(
    name: &'static str,
    inputs: [&Tensor; 2],
    output: Tensor,
    backward: impl Fn(&Tensor) -> candle_core::Result<[Option<Tensor>; 2]> + Send + Sync + 'static,
) -> candle_core::Result<Tensor> {
    if tape::records(&inputs) {
        return on_tape(name, &inputs, output, backward);
    }
    if !inputs.iter().any(|t| t.track_op()) {
        return Ok(output);
    }
    let [a, b] = inputs;
    a.apply_op2(b, Joined::new(name, output, Box::new(backward) as Backward2)?)
}

/// `output` (computed from three inputs outside the graph), whose gradients reach them as
/// `backward(grad_output)`, `None` for an input that gets none.
pub fn with_gradients(
    name: &'static str,
    inputs: [&Tensor; 3],
    output: Tensor,
    backward: impl Fn(&Tensor) -> candle_core::Result<[Option<Tensor>; 3]> + Send + Sync + 'static,
) -> candle_core::Result<Tensor> {
    if tape::records(&inputs) {
        return on_tape(name, &inputs, output, backward);
    }
    if !inputs.iter().any(|t| t.track_op()) {
        return Ok(output);
    }
    let [a, b, c] = inputs;
    a.apply_op3(b, c, Joined::new(name, output, Box::new(backward) as Backward3)?)
}

/// `output` recorded on forge's tape with `backward`, timed under `name` in profiles as the joined
/// op's backward is.
fn on_tape<const N: usize>(
    name: &'static str,
    inputs: &[&Tensor],
    output: Tensor,
    backward: impl Fn(&Tensor) -> candle_core::Result<[Option<Tensor>; N]> + 'static,
) -> candle_core::Result<Tensor> {
    tape::record(name, inputs, output, move |g| Ok(section(name, g.device(), || backward(g))?.into()))
}

/// The gradients of everything `output` depends on, given the gradient `grad` arriving at `output`
/// from above (a checkpointed layer's backward). Differentiating `∑ output · grad` gives the same, but
/// costs three passes over `output`'s size (the product, its sum, and the product's backward); here the
/// root is a scalar joined to `output` whose backward hands `grad` over as it is.
pub fn backward_from(
    output: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<candle_core::backprop::GradStore> {
    let root = Tensor::zeros((), output.dtype(), output.device())?;
    let grad = grad.clone();
    // The root is differentiated only as the root, where its own gradient is 1.
    with_gradient("backward from a gradient", output, root, move |_| Ok(grad.clone()))?.backward()
}

/// The custom op: it holds the output computed outside the graph until candle asks for its result,
/// then hands over a copy (candle's custom ops own their results) and drops its own, so the graph,
/// which keeps the op, does not keep the output twice.
struct Joined<B> {
    name: &'static str,
    output: Mutex<Option<Tensor>>,
    backward: B,
}

impl<B> Joined<B> {
    fn new(name: &'static str, output: Tensor, backward: B) -> candle_core::Result<Self> {
        // The copy below takes the whole buffer: a view with an offset or strides is made plain first.
        let plain = output.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
        let output = if plain { output } else { output.copy()? };
        Ok(Self { name, output: Mutex::new(Some(output)), backward })
    }

    fn take_output(&self) -> candle_core::Result<Tensor> {
        let taken = self.output.lock().expect("no panic while holding the output").take();
        taken.ok_or_else(|| candle_core::Error::Msg(format!("{}: the output was already taken", self.name)))
    }

    fn cpu_output(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let output = self.take_output()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.clone(), layout.shape().clone())),
            _ => {
                Err(candle_core::Error::Msg("a joined output lives on another device than its inputs".into()))
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_output(&self) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let output = self.take_output()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => {
                Err(candle_core::Error::Msg("a joined output lives on another device than its inputs".into()))
            }
        }
    }
}

impl CustomOp1 for Joined<Backward1> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu_output()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.cuda_output()
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        section(self.name, grad.device(), || Ok(Some((self.backward)(grad)?)))
    }
}

impl CustomOp2 for Joined<Backward2> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu_output()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.cuda_output()
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [a, b] = section(self.name, grad.device(), || (self.backward)(grad))?;
        Ok((a, b))
    }
}

impl CustomOp3 for Joined<Backward3> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu_output()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.cuda_output()
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [a, b, c] = section(self.name, grad.device(), || (self.backward)(grad))?;
        Ok((a, b, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn backward_from_gives_what_the_weighted_sum_gives() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?.sin()?)?;
        let grad = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?.cos()?;
        let y = (x.as_tensor().sqr()? * 3.0)?.exp()?;
        let seeded = backward_from(&y, &grad)?;
        let summed = (&y * &grad)?.sum_all()?.backward()?;
        let (a, b) = (seeded.get(x.as_tensor()).unwrap(), summed.get(x.as_tensor()).unwrap());
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        Ok(())
    }
}
