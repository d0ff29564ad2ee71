//! `forge kernels --model DIR`: the layer-wise backward (forge's tape) against candle's graph on a real
//! model, on the device in bf16: the same ops run in the same order either way, so the loss is the same
//! and the LoRA gradients differ only by the order gradients are summed in, plain and checkpointed.
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use forge_kernels::checks::{rel_diff, Check};
use forge_kernels::SplitMix64;

use super::{loss_and_grads, Backprop};
use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::strategies::Registry;
use crate::Result;

/// The checks on the model in `dir`, loaded on `device` in bf16, LoRA of rank 8 on every linear layer
/// (B made non-zero, so that A's gradients are too), on `batch × seq` random tokens.
pub fn tape_against_graph(
    dir: &Path,
    device: &Device,
    rng: &mut SplitMix64,
    (batch, seq): (usize, usize),
) -> Result<Vec<Check>> {
    let mut model = CausalLm::load(&ModelFolder::open(dir)?, DType::BF16, device)?;
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
    for (checkpoint, kernel) in [
        (false, "layer-wise backward (tape) vs graph"),
        (true, "layer-wise backward (tape) vs graph, checkpointed"),
    ] {
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
