//! A prefix into a [`WeightStore`], as candle-nn's `VarBuilder` is: builders take one and call
//! `pp("name")`, so the code that builds a layer reads like the checkpoint's keys.
use candle_core::{DType, Device, Tensor};

use super::weights::WeightStore;
use crate::Result;

/// Loads tensors under a key prefix, in the dtype and on the device the model runs in.
#[derive(Clone)]
pub struct WeightScope<'a> {
    store: &'a WeightStore,
    prefix: String,
    dtype: DType,
    device: Device,
}

impl<'a> WeightScope<'a> {
    /// The root scope of a checkpoint.
    pub fn new(store: &'a WeightStore, dtype: DType, device: &Device) -> Self {
        WeightScope { store, prefix: String::new(), dtype, device: device.clone() }
    }

    /// The scope one level down (`model` → `model.layers`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix =
            if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        WeightScope { prefix, ..self.clone() }
    }

    /// The full key of `name` in this scope.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Loads `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store.load(&self.key(name), shape, self.dtype, &self.device)
    }

    /// Loads `name` in the model's dtype, forms `f` of it in f32 on the host, and moves the result to
    /// the model's device: the small parameters a layer keeps in f32 (Qwen3.5's `1 + w` norm weights,
    /// its decay rates). On CUDA the cast and `f` would each load one of candle's PTX modules, which a
    /// fresh machine compiles inside the first forward pass.
    pub fn get_f32_with(
        &self,
        name: &str,
        shape: &[usize],
        f: impl FnOnce(Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Tensor> {
        let host = self.store.load(&self.key(name), shape, self.dtype, &Device::Cpu)?.to_dtype(DType::F32)?;
        Ok(f(host)?.to_device(&self.device)?)
    }

    /// Whether the checkpoint has `name` in this scope.
    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.key(name))
    }

    /// The dtype weights are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device weights are loaded onto.
    pub fn device(&self) -> &Device {
        &self.device
    }
}
