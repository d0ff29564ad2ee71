use crate::{HeadScores, ModelGeometry, StrategyError};

/// A tensor copied to host memory as f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// What a scorer may ask the host for. The probes are computed by the host on calibration windows
/// from `--data` (the same windows for every probe of a run).
pub trait ScoringContext {
    /// The model's attention geometry.
    fn geometry(&self) -> &ModelGeometry;
    /// A weight by its checkpoint name (`model.layers.0.self_attn.q_proj.weight`), in f32.
    fn tensor(&self, name: &str) -> Result<HostTensor, StrategyError>;
    /// The run's seed.
    fn seed(&self) -> u64;
    /// Mean L2 norm per token of what each head writes to the residual stream (its attention output
    /// through its own `o_proj` columns), `[layer][head]`.
    fn head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError>;
    /// Mean absolute gradient of the calibration loss with respect to each head's mask, `[layer][head]`.
    fn head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError>;
    /// Mean entropy (nats) of each head's attention distribution, `[layer][head]`.
    fn attention_entropy(&mut self) -> Result<Vec<Vec<f32>>, StrategyError>;
    /// [`ScoringContext::head_output_norms`] for a hybrid's linear-attention value heads (their
    /// output through their own `out_proj` columns), `[layer][value head]`, empty rows elsewhere.
    fn linear_head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::bad_input("this host offers no linear-attention probes"))
    }
    /// [`ScoringContext::head_mask_gradients`] for a hybrid's linear-attention value heads,
    /// `[layer][value head]`, empty rows elsewhere.
    fn linear_head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::bad_input("this host offers no linear-attention probes"))
    }
    /// The mean norm per token of what each MLP channel writes into the residual stream (its
    /// activation times its `down_proj` column), `[layer][channel]`.
    fn mlp_channel_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::bad_input("this host offers no MLP-channel probes"))
    }
    /// Mean absolute gradient of the calibration loss with respect to each MLP channel's mask,
    /// `[layer][channel]`.
    fn mlp_channel_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::bad_input("this host offers no MLP-channel probes"))
    }
    /// Per layer, the mean norm per token of what the layer adds to the residual stream (its output
    /// minus its input), `[layer][0]`.
    fn layer_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::bad_input("this host offers no layer probes"))
    }
    /// Per layer, the mean |∂ loss / ∂ g| for a gate g scaling both its residual updates, `[layer][0]`.
    fn layer_gate_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::bad_input("this host offers no layer probes"))
    }
    /// Per layer, the mean cosine per token between its input and output hidden states, `[layer][0]`
    /// (ShortGPT's Block Influence is one minus it).
    fn layer_cosines(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::bad_input("this host offers no layer probes"))
    }
}

/// Scores each (layer, query head) by how much it matters.
pub trait ImportanceScorer {
    /// Scores every head of the model in `ctx`.
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError>;
}
