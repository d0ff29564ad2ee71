use crate::StrategyError;

/// The shape of one adapted linear layer: `rows` inputs of width `in_dim`, outputs of width `out_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// Number of input rows (tokens) in this call.
    pub rows: usize,
}

/// An adapter as a kernel over flat f32 buffers: for each linear layer it adapts it owns one flat
/// parameter buffer, and it adds `f(x; params)` to the layer's output. The host keeps the buffers as
/// trainable variables and joins the kernel to its autograd graph through `backward`, so an adapter
/// needs no tensor library and can live in a plugin. Buffers are row-major: `x` is `rows × in_dim`,
/// `y` and `dy` are `rows × out_dim`.
pub trait AdapterKernel: Send + Sync {
    /// How many trainable values the adapter puts on `module` (`q_proj`, `down_proj`, …; in Qwen3.5's
    /// linear-attention layers also `in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`, `out_proj`)
    /// of a layer with weight `(out_dim, in_dim)`; 0 leaves the module alone. A layer is asked only
    /// about the modules it has.
    fn param_count(&self, module: &str, in_dim: usize, out_dim: usize) -> usize;
    /// Initial values of a module's parameters, from `seed` (different for every module).
    fn init(
        &self,
        module: &str,
        dims: LinearDims,
        seed: u64,
        params: &mut [f32],
    ) -> Result<(), StrategyError>;
    /// Writes what the adapter adds to the layer's output into `y` (overwriting it).
    fn forward(
        &self,
        dims: LinearDims,
        x: &[f32],
        params: &[f32],
        y: &mut [f32],
    ) -> Result<(), StrategyError>;
    /// Writes the gradients of the loss with respect to `x` and `params` (overwriting both), given
    /// its gradient `dy` with respect to the output of [`AdapterKernel::forward`].
    fn backward(
        &self,
        dims: LinearDims,
        x: &[f32],
        params: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dparams: &mut [f32],
    ) -> Result<(), StrategyError>;
    /// The same addition as a weight delta `dw` (`out_dim × in_dim`) to merge into the base weight;
    /// an adapter that is not linear in `x` returns a bad-input error saying it cannot be merged.
    fn delta_weight(&self, dims: LinearDims, params: &[f32], dw: &mut [f32]) -> Result<(), StrategyError>;
}
