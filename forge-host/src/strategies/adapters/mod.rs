//! Built-in adapters (one per file) and the host-side contract they implement. Adapters need the
//! autograd graph, which never crosses the plugin boundary, so this contract lives in the host;
//! plugin adapters come as flat-buffer kernels (`forge_api::AdapterKernel`) that `kernel.rs` joins
//! to the graph.
mod kernel;
mod lora;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use crate::loader::ModelConfig;
use crate::model::decoder_layer::LINEAR_MODULES;
use crate::model::CausalLm;
use crate::outputs::{write_atomic, write_json_atomic};
use crate::strategies::Registry;
use crate::{bad_input, Error, Result};

pub use kernel::KernelAdapter;

/// An adapter folder's config file (PEFT's name).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// An adapter folder's weights file (PEFT's name).
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The checkpoint path of linear `module` of decoder layer `layer` under the model's weight prefix
/// (`model.layers.3.mlp.up_proj`; `model.language_model.layers.3…` in a Qwen3.5 checkpoint with a
/// vision tower), which is also the module's name in PEFT's adapter files.
fn module_path(config: &ModelConfig, layer: usize, module: &str) -> String {
    let parent = LINEAR_MODULES.iter().find(|m| m.0 == module).map_or("self_attn", |m| m.1);
    format!("{}.layers.{layer}.{parent}.{module}", config.weight_prefix)
}

/// Writes an adapter folder — weights, then config — each file atomically.
fn write_adapter_files(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    config: &serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(&dir.join(ADAPTER_WEIGHTS_FILE), |tmp| {
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(tensors.iter(), Some(metadata), tmp)
            .map_err(|e| bad_input!("cannot write {}: {e}", tmp.display()))
    })?;
    write_json_atomic(&dir.join(ADAPTER_CONFIG_FILE), config)
}

/// An adapter kind, configured: wires fresh trainable parameters into a model.
pub trait Adapter {
    /// How many trainable values attaching would add to a model of `config`, checked against its
    /// layers before anything is loaded (the memory budget and bad options are decided from this).
    fn trainable_values(&self, config: &ModelConfig) -> Result<usize>;
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

/// Loads an adapter saved in `dir` and wires it into `model`; its kind comes from its config file
/// (plugin adapters are found in `registry`).
pub fn load_adapter(
    dir: &Path,
    model: &mut CausalLm,
    registry: &Registry,
) -> Result<Box<dyn AttachedAdapter>> {
    let config = dir.join(ADAPTER_CONFIG_FILE);
    if !config.is_file() {
        return Err(bad_input!("{} not found: an adapter folder holds adapter_config.json and adapter_model.safetensors (PEFT's layout)", config.display()));
    }
    let text = std::fs::read(&config).map_err(|e| Error::io(&config, e))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad_input!("{}: {e}", config.display()))?;
    match value.get("peft_type").and_then(|v| v.as_str()) {
        Some("LORA") => lora::load(dir, &value, model),
        Some(kernel::PEFT_TYPE) => kernel::load(dir, &value, model, registry),
        other => Err(bad_input!(
            "{}: adapter type {other:?} is not supported; forge loads LORA and {} adapters",
            config.display(),
            kernel::PEFT_TYPE
        )),
    }
}
