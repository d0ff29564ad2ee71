use crate::StrategyError;

/// One named piece of an optimizer's state, as plain data (saved beside an adapter to resume).
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    /// Unique within the optimizer (`3.m.codes`).
    pub name: String,
    /// The values.
    pub data: StateData,
}

/// The values of a [`StateTensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum StateData {
    /// Full-precision values (moments, scales).
    F32(Vec<f32>),
    /// 8-bit codes.
    U8(Vec<u8>),
    /// Counters (step numbers).
    U64(Vec<u64>),
}

/// Updates trainable parameters from their gradients, as a kernel over flat f32 buffers: the host
/// owns the parameters (on any device) and hands each one over as host memory for the update, so an
/// optimizer needs no tensor library and can live in a plugin.
pub trait Optimizer {
    /// Updates parameter `id` (stable across steps) in place from `grads`, at learning rate `lr`.
    fn update(&mut self, id: usize, params: &mut [f32], grads: &[f32], lr: f64) -> Result<(), StrategyError>;
    /// Bytes of state held now.
    fn state_bytes(&self) -> usize;
    /// Bytes of state the optimizer will hold per trainable value, for memory budgets before any
    /// step (default: two f32 moments, AdamW's).
    fn state_bytes_per_value(&self) -> f64 {
        8.0
    }
    /// The whole state, to save.
    fn state(&self) -> Result<Vec<StateTensor>, StrategyError>;
    /// Restores a state returned by [`Optimizer::state`]. forge calls it when `forge run --resume`
    /// continues a training phase that an interrupt stopped: the phase goes on with the moments it
    /// had, as if never stopped (restarting AdamW from zero moments would take different steps).
    fn load_state(&mut self, state: Vec<StateTensor>) -> Result<(), StrategyError>;
}
