//! `forge kernels`: the layer-wise backward (forge's tape) against candle's graph, on the device in
//! bf16: the same ops run in the same order either way, so the loss is the same and the LoRA gradients
//! differ only by the order gradients are summed in, plain and checkpointed. Always on a Qwen3.5 hybrid
//! of random weights (both layer kinds), and with `--model DIR` on that model too.
use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use forge_kernels::checks::{rel_diff, Check};
use forge_kernels::SplitMix64;

use super::{loss_and_grads, Backprop};
use crate::loader::{ModelConfig, ModelFolder};
use crate::model::CausalLm;
use crate::strategies::Registry;
use crate::Result;

/// tiny-qwen35's geometry cut to four layers (three linear-attention layers, then one of full
/// attention: Qwen3.5's pattern), the model the check runs on when given none.
pub(crate) const RANDOM_HYBRID: &str = r#"{
  "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text", "hidden_act": "silu",
  "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "vocab_size": 8192,
  "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
  "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "attention_bias": false,
  "linear_conv_kernel_dim": 4, "linear_key_head_dim": 32, "linear_num_key_heads": 4,
  "linear_num_value_heads": 8, "linear_value_head_dim": 32, "rms_norm_eps": 1e-06,
  "partial_rotary_factor": 0.25, "max_position_embeddings": 4096, "tie_word_embeddings": true,
  "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
}"#;

/// The model the check runs on without `--model`: [`RANDOM_HYBRID`] with random weights from `seed`.
pub fn random_hybrid(seed: u64) -> Result<ModelFolder> {
    Ok(ModelFolder::random(ModelConfig::from_json(RANDOM_HYBRID.as_bytes())?, seed))
}

/// The names of the two checks (plain, checkpointed).
pub type Names = (&'static str, &'static str);

/// The checks' names on the random hybrid.
pub const ON_RANDOM_HYBRID: Names = (
    "layer-wise backward (tape) vs graph, random hybrid",
    "layer-wise backward (tape) vs graph, random hybrid, checkpointed",
);
/// The checks' names on `--model`'s model.
pub const ON_MODEL: Names = (
    "layer-wise backward (tape) vs graph, --model",
    "layer-wise backward (tape) vs graph, --model, checkpointed",
);

/// The checks on `folder`'s model, loaded on `device` in `dtype`, LoRA of rank 8 on every linear layer
/// (B made non-zero, so that A's gradients are too), on `batch × seq` random tokens; `what` names the
/// model in the checks' names.
pub fn tape_against_graph(
    folder: &ModelFolder,
    (dtype, device): (DType, &Device),
    rng: &mut SplitMix64,
    (batch, seq): (usize, usize),
    what: Names,
) -> Result<Vec<Check>> {
    let mut model = CausalLm::load(folder, dtype, device)?;
    let given = BTreeMap::from([
        ("targets".to_string(), serde_json::Value::from("all-linear")),
        ("rank".to_string(), serde_json::Value::from(8)),
    ]);
    let (adapter, _) = Registry::builtin()?.adapter("lora", &given)?;
    let params = adapter.attach(&mut model, rng.next_u64())?.parameters();
    for p in params.iter().skip(1).step_by(2) {
        p.set(&Tensor::randn(0f32, 0.02, p.shape(), device)?.to_dtype(p.dtype())?)?;
    }
    let vocab = model.config().vocab as u64;
    let ids: Vec<u32> = (0..batch * seq).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let ids = Tensor::from_vec(ids, (batch, seq), device)?;
    let mut checks = Vec::new();
    for (checkpoint, kernel) in [(false, what.0), (true, what.1)] {
        let (graph_loss, graph) = loss_and_grads(&model, &ids, &params, checkpoint, None, Backprop::Graph)?;
        let (tape_loss, tape) =
            loss_and_grads(&model, &ids, &params, checkpoint, None, Backprop::StrictTape)?;
        let forward_rel_err = ((tape_loss.loss - graph_loss.loss) / graph_loss.loss).abs() as f64;
        let mut backward_rel_err = 0f64;
        for (t, g) in tape.iter().zip(&graph) {
            // A removed layer's adapter: no gradient on either side.
            if g.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? > 0.0 {
                backward_rel_err = backward_rel_err.max(rel_diff(t, g)?);
            }
        }
        let tolerance = 1e-2;
        checks.push(Check {
            kernel,
            shape: vec![batch, seq, model.layers.len()],
            past: 0,
            forward_rel_err,
            backward_rel_err: Some(backward_rel_err),
            tolerance,
            pass: forward_rel_err < tolerance && backward_rel_err < tolerance,
        });
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::LayerKind;

    /// The check `forge kernels` always runs, here on the CPU in f32: the random model has both layer
    /// kinds, and the tape gives the graph's loss and gradients on it, plain and checkpointed.
    #[test]
    fn the_tape_check_runs_on_a_random_hybrid_without_a_checkpoint() -> Result<()> {
        let folder = random_hybrid(7)?;
        let kinds: Vec<LayerKind> = (0..folder.config.layers).map(|l| folder.config.layer_kind(l)).collect();
        assert_eq!(kinds, [LayerKind::Linear, LayerKind::Linear, LayerKind::Linear, LayerKind::Full]);
        let mut rng = SplitMix64::new(1);
        let checks =
            tape_against_graph(&folder, (DType::F32, &Device::Cpu), &mut rng, (2, 70), ON_RANDOM_HYBRID)?;
        assert_eq!(checks.len(), 2);
        for check in &checks {
            assert!(check.pass, "{check}");
            assert!(check.forward_rel_err < 1e-6, "{check}");
        }
        Ok(())
    }
}
