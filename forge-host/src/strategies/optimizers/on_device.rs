//! The optimizer as forge's trainer holds it: forge-api's [`Optimizer`], whose steps take host
//! buffers (so a plugin needs no tensor library), and for the built-in `adamw` and `adamw8bit` a step
//! where the parameter lives: on CUDA, one fused kernel a parameter (forge-kernels' `adam`) instead
//! of downloading gradient and parameter, stepping on the CPU and uploading (two host round trips a
//! parameter a step). The state then lives on the device too, and moves to the host only to be
//! saved, or when a step on the host asks for it: a saved state is the same file either way.
use candle_core::{Tensor, Var};
use forge_api::{Optimizer, StateTensor, StrategyError};

/// An optimizer that may step on the device.
pub trait TrainOptimizer: Optimizer {
    /// Steps parameter `id` where it lives from `grad` (f32, the parameter's shape) at `lr`. False
    /// when this optimizer does not step there: the trainer then calls [`Optimizer::update`].
    fn update_on_device(
        &mut self,
        id: usize,
        param: &Var,
        grad: &Tensor,
        lr: f64,
    ) -> Result<bool, StrategyError> {
        let _ = (id, param, grad, lr);
        Ok(false)
    }
}

/// A plugin's optimizer: host steps only.
pub struct HostOnly(pub Box<dyn Optimizer>);

impl Optimizer for HostOnly {
    fn update(&mut self, id: usize, params: &mut [f32], grads: &[f32], lr: f64) -> Result<(), StrategyError> {
        self.0.update(id, params, grads, lr)
    }
    fn state_bytes(&self) -> usize {
        self.0.state_bytes()
    }
    fn state_bytes_per_value(&self) -> f64 {
        self.0.state_bytes_per_value()
    }
    fn state(&self) -> Result<Vec<StateTensor>, StrategyError> {
        self.0.state()
    }
    fn load_state(&mut self, state: Vec<StateTensor>) -> Result<(), StrategyError> {
        self.0.load_state(state)
    }
}

impl TrainOptimizer for HostOnly {}

/// A parameter's optimizer state in its host form, and as the one flat f32 buffer the device kernel
/// reads and writes.
pub trait HostState: Sized {
    fn pack(&self) -> Vec<f32>;
    /// From a buffer [`HostState::pack`] wrote, for a parameter of `values` values.
    fn unpack(packed: Vec<f32>, values: usize) -> Self;
    /// Bytes held on the host.
    fn bytes(&self) -> usize;
}

/// AdamW's moments, `m` then `v`: the same layout on both sides.
impl HostState for Vec<f32> {
    fn pack(&self) -> Vec<f32> {
        self.clone()
    }
    fn unpack(packed: Vec<f32>, _: usize) -> Self {
        packed
    }
    fn bytes(&self) -> usize {
        self.len() * 4
    }
}

/// A parameter's optimizer state, on the host or on the device it last stepped on; it moves when a
/// step on the other side asks for it.
pub struct Placed<H> {
    values: usize,
    at: At<H>,
}

enum At<H> {
    Host(H),
    Device(Tensor),
}

impl<H: HostState> Placed<H> {
    /// `state` on the host, for a parameter of `values` values.
    pub fn host_state(values: usize, state: H) -> Self {
        Placed { values, at: At::Host(state) }
    }

    /// The state on the host, downloading it (once) if it is on a device.
    pub fn host(&mut self) -> Result<&mut H, StrategyError> {
        if let At::Device(t) = &self.at {
            self.at = At::Host(H::unpack(t.to_vec1::<f32>().map_err(device_error)?, self.values));
        }
        match &mut self.at {
            At::Host(h) => Ok(h),
            At::Device(_) => unreachable!("downloaded above"),
        }
    }

    /// The state in its host form, wherever it is (for saving).
    pub fn to_host(&self) -> Result<std::borrow::Cow<'_, H>, StrategyError>
    where
        H: Clone,
    {
        match &self.at {
            At::Host(h) => Ok(std::borrow::Cow::Borrowed(h)),
            At::Device(t) => {
                Ok(std::borrow::Cow::Owned(H::unpack(t.to_vec1::<f32>().map_err(device_error)?, self.values)))
            }
        }
    }

    /// The packed state on `device`, uploading it (once) if it is on the host.
    fn on(&mut self, device: &candle_core::Device) -> Result<&Tensor, StrategyError> {
        if let At::Host(h) = &self.at {
            let packed = h.pack();
            self.at = At::Device(Tensor::from_slice(&packed, packed.len(), device).map_err(device_error)?);
        }
        match &self.at {
            At::Device(t) => Ok(t),
            At::Host(_) => unreachable!("uploaded above"),
        }
    }

    /// One device step of `param`: `kernel` takes the parameter and this packed state (uploaded if it
    /// was on the host) and returns the new parameter and state, which replace the old.
    pub fn step_on_device(
        &mut self,
        param: &Var,
        kernel: impl FnOnce(&Tensor, &Tensor) -> candle_core::Result<(Tensor, Tensor)>,
    ) -> Result<(), StrategyError> {
        let (new_param, new_state) =
            kernel(param.as_tensor(), self.on(param.device())?).map_err(device_error)?;
        param.set(&new_param).map_err(device_error)?;
        self.at = At::Device(new_state);
        Ok(())
    }

    /// Bytes held, wherever.
    pub fn bytes(&self) -> usize {
        match &self.at {
            At::Device(t) => t.elem_count() * 4,
            At::Host(h) => h.bytes(),
        }
    }
}

pub fn device_error(e: candle_core::Error) -> StrategyError {
    StrategyError::failed(format!("optimizer step on the device: {e}"))
}

/// Whether the device step runs for this parameter: on CUDA, with forge's kernels built in.
pub fn steps_on_device(param: &Var) -> bool {
    cfg!(feature = "cuda") && param.device().is_cuda() && param.dtype() == candle_core::DType::F32
}
