//! Adapters given as flat-buffer kernels (`forge_api::AdapterKernel`, what plugins provide), joined
//! to the autograd graph here: each adapted linear layer owns one flat f32 variable, and a custom op
//! runs the kernel's forward and backward on host buffers. Saved as `adapter_config.json`
//! (`peft_type` [`PEFT_TYPE`], the strategy's name and options) and `adapter_model.safetensors`
//! (one flat tensor per layer), so forge can reload it when the same plugin is loaded.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor, Var};
use forge_api::{AdapterKernel, LinearDims, Options, StrategyKind};

use super::{
    module_path, write_adapter_files, Adapter, AttachedAdapter, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use crate::autograd::grad_enabled;
use crate::loader::ModelConfig;
use crate::model::decoder_layer::LINEAR_MODULES;
use crate::model::linear::LinearAdapter;
use crate::model::CausalLm;
use crate::strategies::Registry;
use crate::{bad_input, Result};
use forge_kernels::SplitMix64;

/// `peft_type` of a kernel adapter's config (PEFT itself cannot load these).
pub const PEFT_TYPE: &str = "FORGE_KERNEL";

/// A kernel adapter, configured: what `forge train --adapter NAME` builds for a plugin adapter.
#[derive(Clone)]
pub struct KernelAdapter {
    kernel: Arc<dyn AdapterKernel>,
    name: String,
    options: Options,
    origin: String,
}

impl KernelAdapter {
    /// Wraps `kernel`, the adapter `name` with `options` from `origin` (a plugin's path).
    pub fn new(kernel: Box<dyn AdapterKernel>, name: &str, options: Options, origin: &str) -> Self {
        KernelAdapter { kernel: Arc::from(kernel), name: name.into(), options, origin: origin.into() }
    }

    /// Puts the kernel on every linear layer it asks for, with parameters from `values(path, module, dims, count)`.
    fn wire(
        &self,
        model: &mut CausalLm,
        mut values: impl FnMut(&str, &str, LinearDims, usize) -> Result<Vec<f32>>,
    ) -> Result<AttachedKernel> {
        let device = model.device().clone();
        let model_config = model.config().clone();
        let mut modules = Vec::new();
        for (i, layer) in model.layers.iter_mut().enumerate() {
            for (module, _) in LINEAR_MODULES {
                let Some(linear) = layer.linear_mut(module) else { continue };
                let (out_dim, in_dim) = linear.dims()?;
                let count = self.kernel.param_count(module, in_dim, out_dim);
                if count == 0 {
                    continue;
                }
                let path = module_path(&model_config, i, module);
                let dims = LinearDims { in_dim, out_dim, rows: 0 };
                let params = values(&path, module, dims, count)?;
                let adapted = Arc::new(KernelLinear {
                    kernel: self.kernel.clone(),
                    params: Var::from_tensor(&Tensor::from_vec(params, count, &device)?)?,
                    in_dim,
                    out_dim,
                });
                linear.set_adapter(Some(adapted.clone()));
                modules.push((path, adapted));
            }
        }
        if modules.is_empty() {
            return Err(bad_input!(
                "adapter `{}` of {} adapts none of this model's linear layers",
                self.name,
                self.origin
            ));
        }
        Ok(AttachedKernel { config: self.clone(), modules })
    }
}

impl Adapter for KernelAdapter {
    fn trainable_values(&self, config: &ModelConfig) -> Result<usize> {
        let count = |layer| {
            LINEAR_MODULES.iter().filter_map(move |(m, _)| {
                let (i, o) = config.linear_dims(layer, m)?;
                Some(self.kernel.param_count(m, i, o))
            })
        };
        Ok((0..config.layers).flat_map(count).sum())
    }

    fn attach(&self, model: &mut CausalLm, seed: u64) -> Result<Box<dyn AttachedAdapter>> {
        let mut rng = SplitMix64::new(seed);
        let attached = self.wire(model, |_, module, dims, count| {
            let mut params = vec![0f32; count];
            self.kernel.init(module, dims, rng.next_u64(), &mut params)?;
            Ok(params)
        })?;
        Ok(Box::new(attached))
    }
}

/// Loads a kernel adapter saved by forge; its strategy must be among `registry`'s (its plugin loaded).
pub(super) fn load(
    dir: &Path,
    config: &serde_json::Value,
    model: &mut CausalLm,
    registry: &Registry,
) -> Result<Box<dyn AttachedAdapter>> {
    let file = dir.join(ADAPTER_CONFIG_FILE);
    let name =
        config["adapter"].as_str().ok_or_else(|| bad_input!("{}: `adapter` is missing", file.display()))?;
    if registry.find(StrategyKind::Adapter, name).is_err() {
        return Err(bad_input!(
            "{}: adapter `{name}` comes from plugin {}; load it with --plugin",
            file.display(),
            config["plugin"].as_str().unwrap_or("(unknown)")
        ));
    }
    let given = config["options"].as_object().cloned().unwrap_or_default().into_iter().collect();
    let adapter = registry.kernel_adapter(name, &given)?;
    let store = crate::loader::WeightStore::open_files(&[dir.join(ADAPTER_WEIGHTS_FILE)])?;
    let attached = adapter.wire(model, |path, _, _, count| {
        let name = format!("base_model.model.{path}.forge_kernel");
        Ok(store.load(&name, &[count], DType::F32, &Device::Cpu)?.to_vec1::<f32>()?)
    })?;
    Ok(Box::new(attached))
}

/// One adapted layer: the kernel and its flat parameters.
struct KernelLinear {
    kernel: Arc<dyn AdapterKernel>,
    params: Var,
    in_dim: usize,
    out_dim: usize,
}

impl LinearAdapter for KernelLinear {
    fn forward(&self, x: &Tensor, base: &Tensor) -> candle_core::Result<Tensor> {
        let params =
            if grad_enabled() { self.params.as_tensor().clone() } else { self.params.as_detached_tensor() };
        let rows = x.elem_count() / self.in_dim;
        // Kernels run on host buffers; moving there and back are ops candle differentiates (on forge's
        // tape, as one entry differentiated by candle's graph).
        let adapted = |v: &[Tensor]| -> candle_core::Result<(Tensor, ())> {
            let (x, base, params) = (&v[0], &v[1], &v[2]);
            let x = x.reshape((rows, self.in_dim))?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let op = KernelOp { kernel: self.kernel.clone(), in_dim: self.in_dim, out_dim: self.out_dim };
            let delta = x.apply_op2(&params.to_device(&Device::Cpu)?, op)?;
            Ok(((base + delta.to_device(base.device())?.to_dtype(base.dtype())?.reshape(base.shape())?)?, ()))
        };
        Ok(forge_kernels::tape::through_graph("adapter kernel", &[x, base, &params], adapted)?.0)
    }
}

/// `(x, params) → kernel.forward`, with `kernel.backward` as its gradient.
struct KernelOp {
    kernel: Arc<dyn AdapterKernel>,
    in_dim: usize,
    out_dim: usize,
}

fn host_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("adapter kernels take contiguous f32 buffers"),
    }
}

fn kernel_error(e: forge_api::StrategyError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl CustomOp2 for KernelOp {
    fn name(&self) -> &'static str {
        "adapter-kernel"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, params) = (host_f32(xs, xl)?, host_f32(ps, pl)?);
        let rows = x.len() / self.in_dim;
        let mut y = vec![0f32; rows * self.out_dim];
        let dims = LinearDims { in_dim: self.in_dim, out_dim: self.out_dim, rows };
        self.kernel.forward(dims, x, params, &mut y).map_err(kernel_error)?;
        Ok((CpuStorage::F32(y), Shape::from((rows, self.out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (xv, pv) = (x.flatten_all()?.to_vec1::<f32>()?, params.to_vec1::<f32>()?);
        let dy = grad.flatten_all()?.to_vec1::<f32>()?;
        let (mut dx, mut dp) = (vec![0f32; xv.len()], vec![0f32; pv.len()]);
        let dims = LinearDims { in_dim: self.in_dim, out_dim: self.out_dim, rows: xv.len() / self.in_dim };
        self.kernel.backward(dims, &xv, &pv, &dy, &mut dx, &mut dp).map_err(kernel_error)?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dp, params.shape(), params.device())?),
        ))
    }
}

/// A kernel adapter wired into a model.
struct AttachedKernel {
    config: KernelAdapter,
    modules: Vec<(String, Arc<KernelLinear>)>,
}

impl AttachedAdapter for AttachedKernel {
    fn parameters(&self) -> Vec<Var> {
        self.modules.iter().map(|(_, m)| m.params.clone()).collect()
    }

    fn set_training(&self, _: bool) {}

    fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for (path, m) in &self.modules {
            tensors.insert(
                format!("base_model.model.{path}.forge_kernel"),
                m.params.as_tensor().to_device(&Device::Cpu)?,
            );
        }
        let c = &self.config;
        write_adapter_files(
            dir,
            &tensors,
            &serde_json::json!({
                "peft_type": PEFT_TYPE,
                "adapter": c.name,
                "plugin": c.origin,
                "options": c.options,
            }),
        )
    }

    fn merge_deltas(&self) -> Result<Vec<(String, Tensor)>> {
        self.modules
            .iter()
            .map(|(path, m)| {
                let params = m.params.as_tensor().to_device(&Device::Cpu)?.to_vec1::<f32>()?;
                let mut dw = vec![0f32; m.out_dim * m.in_dim];
                let dims = LinearDims { in_dim: m.in_dim, out_dim: m.out_dim, rows: 0 };
                m.kernel.delta_weight(dims, &params, &mut dw)?;
                Ok((format!("{path}.weight"), Tensor::from_vec(dw, (m.out_dim, m.in_dim), &Device::Cpu)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forge_api::StrategyError;

    /// `y = tanh(x Pᵀ)` with `P` `(out, in)`: non-linear, so a wrong backward cannot pass by luck.
    struct Tanh;

    impl AdapterKernel for Tanh {
        fn param_count(&self, _: &str, in_dim: usize, out_dim: usize) -> usize {
            in_dim * out_dim
        }
        fn init(&self, _: &str, _: LinearDims, _: u64, _: &mut [f32]) -> Result<(), StrategyError> {
            Ok(())
        }
        fn forward(&self, d: LinearDims, x: &[f32], p: &[f32], y: &mut [f32]) -> Result<(), StrategyError> {
            for r in 0..d.rows {
                for o in 0..d.out_dim {
                    let z: f32 = (0..d.in_dim).map(|i| x[r * d.in_dim + i] * p[o * d.in_dim + i]).sum();
                    y[r * d.out_dim + o] = z.tanh();
                }
            }
            Ok(())
        }
        fn backward(
            &self,
            d: LinearDims,
            x: &[f32],
            p: &[f32],
            dy: &[f32],
            dx: &mut [f32],
            dp: &mut [f32],
        ) -> Result<(), StrategyError> {
            let mut y = vec![0.0; d.rows * d.out_dim];
            self.forward(d, x, p, &mut y)?;
            dx.fill(0.0);
            dp.fill(0.0);
            for r in 0..d.rows {
                for o in 0..d.out_dim {
                    let dz = dy[r * d.out_dim + o] * (1.0 - y[r * d.out_dim + o].powi(2));
                    for i in 0..d.in_dim {
                        dx[r * d.in_dim + i] += dz * p[o * d.in_dim + i];
                        dp[o * d.in_dim + i] += dz * x[r * d.in_dim + i];
                    }
                }
            }
            Ok(())
        }
        fn delta_weight(&self, _: LinearDims, _: &[f32], _: &mut [f32]) -> Result<(), StrategyError> {
            Err(StrategyError::bad_input("tanh is not linear"))
        }
    }

    /// A loss value and, when both got one, the gradients of the input and the parameters.
    type LossAndGrads = (f64, Option<(Vec<f32>, Vec<f32>)>);

    #[test]
    fn the_kernel_op_passes_gradients_to_inputs_and_parameters_as_finite_differences_say() {
        let dev = Device::Cpu;
        let (rows, in_dim, out_dim) = (3, 4, 2);
        let xs: Vec<f32> = (0..rows * in_dim).map(|i| ((i * 5 % 7) as f32 - 3.0) / 5.0).collect();
        let ps: Vec<f32> = (0..in_dim * out_dim).map(|i| ((i * 3 % 5) as f32 - 2.0) / 4.0).collect();
        let w = Tensor::from_vec(
            (0..rows * out_dim).map(|i| i as f32 - 2.5).collect::<Vec<_>>(),
            (rows, out_dim),
            &dev,
        )
        .unwrap();
        let base = Tensor::ones((rows, out_dim), DType::F32, &dev).unwrap();
        let loss = |x: &[f32], p: &[f32]| -> LossAndGrads {
            let x = Var::from_tensor(&Tensor::from_vec(x.to_vec(), (rows, in_dim), &dev).unwrap()).unwrap();
            let p = Var::from_tensor(&Tensor::from_vec(p.to_vec(), in_dim * out_dim, &dev).unwrap()).unwrap();
            let layer = KernelLinear { kernel: Arc::new(Tanh), params: p.clone(), in_dim, out_dim };
            let l = (layer.forward(x.as_tensor(), &base).unwrap() * &w).unwrap().sum_all().unwrap();
            let grads = l.backward().unwrap();
            let get = |v: &Var| {
                grads.get(v.as_tensor()).map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            };
            (l.to_scalar::<f32>().unwrap() as f64, get(&x).zip(get(&p)))
        };
        let (_, grads) = loss(&xs, &ps);
        let (dx, dp) = grads.expect("both the input and the parameters get gradients");
        let eps = 1e-2;
        for (values, grad, is_x) in [(&xs, &dx, true), (&ps, &dp, false)] {
            for i in 0..values.len() {
                let (mut hi, mut lo) = (values.clone(), values.clone());
                hi[i] += eps;
                lo[i] -= eps;
                let (fh, fl) = if is_x {
                    (loss(&hi, &ps).0, loss(&lo, &ps).0)
                } else {
                    (loss(&xs, &hi).0, loss(&xs, &lo).0)
                };
                let fd = (fh - fl) / (2.0 * eps as f64);
                assert!(
                    (fd - grad[i] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                    "{is_x} {i}: {fd} vs {}",
                    grad[i]
                );
            }
        }
    }
}
