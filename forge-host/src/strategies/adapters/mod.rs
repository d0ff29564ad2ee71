//! Built-in adapters (one per file) and the host-side contract they implement. Adapters need the
//! autograd graph, which never crosses the plugin boundary, so this contract lives in the host.
mod lora;

use std::path::Path;

use candle_core::{Tensor, Var};

use crate::model::CausalLm;
use crate::{bad_input, Error, Result};

pub use lora::LORA_CONFIG_FILE;

/// An adapter kind, configured: wires fresh trainable parameters into a model.
pub trait Adapter {
    /// Attaches new parameters to `model`'s target layers, initialised from `seed`.
    fn attach(&self, model: &mut CausalLm, seed: u64) -> Result<Box<dyn AttachedAdapter>>;
}

/// Parameters wired into a model.
pub trait AttachedAdapter {
    /// The trainable parameters, in a stable order.
    fn parameters(&self) -> Vec<Var>;
    /// Switches training-only behaviour (dropout) on or off.
    fn set_training(&self, training: bool);
    /// Writes the adapter in its standard file layout (PEFT's, for LoRA), atomically.
    fn save(&self, dir: &Path) -> Result<()>;
    /// What merging adds to base weights: checkpoint name → ΔW (f32, the weight's shape).
    fn merge_deltas(&self) -> Result<Vec<(String, Tensor)>>;
}

/// Adds `adapter`'s merge deltas to a checkpoint's stored tensors, in f32, keeping each tensor's
/// stored dtype; returns how many weights changed.
pub fn merge_into(
    tensors: &mut std::collections::HashMap<String, Tensor>,
    adapter: &dyn AttachedAdapter,
) -> Result<usize> {
    let deltas = adapter.merge_deltas()?;
    for (name, delta) in &deltas {
        let base = tensors
            .get(name)
            .ok_or_else(|| bad_input!("the adapter targets `{name}`, which the model lacks"))?;
        let merged = (base.to_dtype(candle_core::DType::F32)?
            + delta.to_device(&candle_core::Device::Cpu)?)?
        .to_dtype(base.dtype())?;
        tensors.insert(name.clone(), merged);
    }
    Ok(deltas.len())
}

/// Loads an adapter saved in `dir` and wires it into `model`; its kind comes from its config file.
pub fn load_adapter(dir: &Path, model: &mut CausalLm) -> Result<Box<dyn AttachedAdapter>> {
    let config = dir.join(LORA_CONFIG_FILE);
    if !config.is_file() {
        return Err(bad_input!("{} not found: an adapter folder holds adapter_config.json and adapter_model.safetensors (PEFT's layout)", config.display()));
    }
    let text = std::fs::read(&config).map_err(|e| Error::io(&config, e))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad_input!("{}: {e}", config.display()))?;
    match value.get("peft_type").and_then(|v| v.as_str()) {
        Some("LORA") => lora::load(dir, &value, model),
        other => Err(bad_input!(
            "{}: adapter type {other:?} is not supported; forge loads LORA adapters",
            config.display()
        )),
    }
}
