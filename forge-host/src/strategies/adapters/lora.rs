//! `lora`: low-rank adapters (Hu et al. 2021). Each target layer gets `A` `(r, in)`, Kaiming-uniform
//! as PEFT initialises it, and `B` `(out, r)` at zero, so training starts from the base model exactly;
//! the layer computes `base(x) + s · B · A · dropout(x)` with `s = alpha / r` (or `alpha / √r` with
//! rsLoRA). A and B are f32 master weights, cast to the model's dtype in the forward pass. Files use
//! PEFT's layout, so adapters move between forge and PEFT both ways.
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use forge_api::{OptionKind, OptionSpec, Options, StrategyError};

use super::{
    module_path, write_adapter_files, Adapter, AttachedAdapter, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use crate::autograd::grad_enabled;
use crate::autograd::with_gradients;
use crate::loader::ModelConfig;
use crate::model::decoder_layer::LINEAR_MODULES;
use crate::model::linear::LinearAdapter;
use crate::model::CausalLm;
use crate::strategies::{Builtin, Factory};
use crate::{bad_input, Result};
use forge_kernels::SplitMix64;
use forge_kernels::{add_matmul, tape};

#[derive(Clone, Debug)]
struct LoraConfig {
    rank: usize,
    alpha: f64,
    dropout: f64,
    rslora: bool,
    /// Every module name the targets expand to (`all-linear` names the attention's, Gated DeltaNet's
    /// and the MLP's; a layer adapts those it has).
    targets: Vec<String>,
    /// The modules named one by one, each of which must be in some layer.
    named: Vec<String>,
}

impl LoraConfig {
    fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    fn from_options(o: &Options) -> Result<Self, StrategyError> {
        let rank = o.int("rank") as usize;
        if rank == 0 {
            return Err(StrategyError::bad_input("option `rank` of adapter `lora` is 0; give at least 1"));
        }
        let dropout = o.float("dropout");
        if !(0.0..1.0).contains(&dropout) {
            return Err(StrategyError::bad_input(format!(
                "option `dropout` of adapter `lora` is {dropout}; it must be in [0, 1)"
            )));
        }
        let (targets, named) = parse_targets(o.string("targets"))?;
        Ok(LoraConfig {
            rank,
            alpha: o.values()["alpha"].as_f64().unwrap_or(2.0 * rank as f64),
            dropout,
            rslora: o.bool("rslora"),
            targets,
            named,
        })
    }
}

/// `q_proj,v_proj`, `attention`, `mlp` or `all-linear` → module names, checked; and, apart, the
/// modules named one by one (each must be in some layer, where a group's need not).
fn parse_targets(text: &str) -> Result<(Vec<String>, Vec<String>), StrategyError> {
    let known: Vec<&str> = LINEAR_MODULES.iter().map(|m| m.0).collect();
    let mut out: Vec<String> = Vec::new();
    let mut named: Vec<String> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let of_parents = |parents: &[&str]| -> Vec<&str> {
            LINEAR_MODULES.iter().filter(|m| parents.contains(&m.1)).map(|m| m.0).collect()
        };
        let group: Vec<&str> = match item {
            "all-linear" => known.clone(),
            "attention" => of_parents(&["self_attn", "linear_attn"]),
            "mlp" => of_parents(&["mlp"]),
            name if known.contains(&name) => {
                named.push(name.to_string());
                vec![name]
            }
            other => {
                return Err(StrategyError::bad_input(format!(
                    "LoRA target `{other}` is not a linear layer; use {}, attention, mlp or all-linear",
                    known.join(", ")
                )))
            }
        };
        for name in group {
            if !out.iter().any(|t| t == name) {
                out.push(name.to_string());
            }
        }
    }
    if out.is_empty() {
        return Err(StrategyError::bad_input("option `targets` of adapter `lora` names no layer"));
    }
    Ok((out, named))
}

/// One adapted layer.
struct LoraLinear {
    a: Var,
    b: Var,
    scale: f64,
    dropout: f64,
    training: Arc<AtomicBool>,
}

impl LinearAdapter for LoraLinear {
    fn forward(&self, x: &Tensor, base: &Tensor) -> candle_core::Result<Tensor> {
        let (a, b) = if grad_enabled() {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        } else {
            (self.a.as_detached_tensor(), self.b.as_detached_tensor())
        };
        let dropout = if self.training.load(Ordering::Relaxed) { self.dropout } else { 0.0 };
        // On forge's tape (training's layer-wise backward) as one entry differentiated by candle's graph.
        let adapted = |v: &[Tensor]| -> candle_core::Result<(Tensor, ())> {
            let (x, base, a, b) = (&v[0], &v[1], &v[2], &v[3]);
            let mut x = x.reshape(((), x.dim(candle_core::D::Minus1)?))?;
            if dropout > 0.0 {
                x = candle_nn::ops::dropout(&x, dropout as f32)?;
            }
            let low = x.matmul(&a.to_dtype(x.dtype())?.t()?)?.matmul(&b.to_dtype(x.dtype())?.t()?)?;
            Ok(((base + (low * self.scale)?.reshape(base.shape())?)?, ()))
        };
        Ok(tape::through_graph("lora", &[x, base, &a, &b], adapted)?.0)
    }

    /// Without dropout: `x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`, the low-rank product added into the base one as
    /// cuBLAS writes it (`add_matmul`; the same ops as `forward` elsewhere). Training joins it to x, A
    /// and B outside the graph with the backward g·W + s·(g·B)·A, s·(g·B)ᵀ·x and s·gᵀ·(x·Aᵀ): through
    /// candle's autograd the graph kept the base output, the low-rank product and its scaled copy, each
    /// as large as the output, for every adapted layer.
    fn fused(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Option<candle_core::Result<Tensor>> {
        if self.dropout > 0.0 && self.training.load(Ordering::Relaxed) {
            return None;
        }
        let (a, b) = (self.a.as_tensor().clone(), self.b.as_tensor().clone());
        let scale = self.scale;
        let fused = || -> candle_core::Result<Tensor> {
            let dtype = x.dtype();
            // Flattened outside the graph, as `frozen_matmul` does.
            let (x_shape, in_dim) = (x.shape().clone(), x.dim(candle_core::D::Minus1)?);
            let x0 = tape::detach(x)?.reshape(((), in_dim))?;
            let (a0, b0) = (a.detach().to_dtype(dtype)?, b.detach().to_dtype(dtype)?);
            let low = x0.matmul(&a0.t()?)?;
            let base = x0.matmul(&weight.t()?)?;
            let base = match bias {
                Some(bias) => base.broadcast_add(bias)?,
                None => base,
            };
            let mut out_dims = x_shape.dims().to_vec();
            *out_dims.last_mut().expect("a linear input has at least one dimension") = weight.dim(0)?;
            let out = add_matmul(base, &low, &b0.t()?, scale)?.reshape(out_dims)?;
            if !grad_enabled() {
                return Ok(out);
            }
            let (weight, master) = (weight.clone(), a.dtype());
            // The scale goes on the rank-sized factors, never on a full-sized product.
            let (scaled_a, scaled_b, scaled_low) = ((&a0 * scale)?, (&b0 * scale)?, (&low * scale)?);
            with_gradients("lora backward", [x, &a, &b], out, move |grad| {
                let grad = grad.to_dtype(dtype)?.reshape(((), weight.dim(0)?))?;
                let dx = add_matmul(grad.matmul(&weight)?, &grad.matmul(&b0)?, &scaled_a, 1.0)?
                    .reshape(&x_shape)?;
                let da = grad.matmul(&scaled_b)?.t()?.matmul(&x0)?.to_dtype(master)?;
                let db = grad.t()?.matmul(&scaled_low)?.to_dtype(master)?;
                Ok([Some(dx), Some(da), Some(db)])
            })
        };
        Some(fused())
    }
}

/// A LoRA adapter wired into a model.
struct AttachedLora {
    config: LoraConfig,
    /// (checkpoint module path `model.layers.N.self_attn.q_proj`, layer).
    modules: Vec<(String, Arc<LoraLinear>)>,
    training: Arc<AtomicBool>,
}

/// Wires `config.targets` of every layer of `model`, taking A and B from `weights(path, (r, in), (out, r))`.
fn wire(
    config: LoraConfig,
    model: &mut CausalLm,
    mut weights: impl FnMut(&str, (usize, usize), (usize, usize)) -> Result<(Tensor, Tensor)>,
) -> Result<AttachedLora> {
    let training = Arc::new(AtomicBool::new(false));
    let mut modules = Vec::new();
    let model_config = model.config().clone();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for target in &config.targets {
            // A hybrid's layers have one mixer's modules or the other's.
            let Some(linear) = layer.linear_mut(target) else { continue };
            let path = module_path(&model_config, i, target);
            let (out_dim, in_dim) = linear.dims()?;
            let (a, b) = weights(&path, (config.rank, in_dim), (out_dim, config.rank))?;
            let lora = Arc::new(LoraLinear {
                a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
                scale: config.scale(),
                dropout: config.dropout,
                training: training.clone(),
            });
            linear.set_adapter(Some(lora.clone()));
            modules.push((path, lora));
        }
    }
    check_targets_exist(&config.named, |t| adapts(&modules, t))?;
    if modules.is_empty() {
        return Err(bad_input!("no LoRA target ({}) is a layer of this model", config.targets.join(", ")));
    }
    Ok(AttachedLora { config, modules, training })
}

/// Whether `modules` (checkpoint paths and their adapters) include a module named `target`.
fn adapts<T>(modules: &[(String, T)], target: &str) -> bool {
    modules.iter().any(|(path, _)| path.rsplit('.').next() == Some(target))
}

/// Refuses a target module named one by one that no layer of the model has (`in_proj_qkv` in a
/// dense model, say), rather than adapting nothing there without a word.
fn check_targets_exist(targets: &[String], exists: impl Fn(&str) -> bool) -> Result<()> {
    match targets.iter().find(|t| !exists(t)) {
        Some(t) => Err(bad_input!(
            "LoRA target `{t}` is in no layer of this model; q_proj … o_proj are attention's, in_proj_* and \
             out_proj Gated DeltaNet's (Qwen3.5), gate/up/down_proj the MLP's"
        )),
        None => Ok(()),
    }
}

impl Adapter for LoraConfig {
    /// `r · (in + out)` per adapted layer; a rank above a target's smaller side adds nothing a full
    /// update would not, and is refused.
    fn trainable_values(&self, config: &ModelConfig) -> Result<usize> {
        let mut total = 0;
        let mut narrowest: Option<(usize, usize, &str, usize, usize)> = None;
        for layer in 0..config.layers {
            for target in &self.targets {
                let Some((i, o)) = config.linear_dims(layer, target) else { continue };
                if narrowest.is_none_or(|n| i.min(o) < n.0) {
                    narrowest = Some((i.min(o), layer, target, i, o));
                }
                total += self.rank * (i + o);
            }
        }
        check_targets_exist(&self.named, |t| (0..config.layers).any(|l| config.linear_dims(l, t).is_some()))?;
        match narrowest {
            Some((side, layer, target, i, o)) if self.rank > side => Err(bad_input!(
                "adapter option `rank` is {} but `{target}` of layer {layer} is {i} → {o}; give a rank of at most {side}",
                self.rank
            )),
            _ => Ok(total),
        }
    }

    fn attach(&self, model: &mut CausalLm, seed: u64) -> Result<Box<dyn AttachedAdapter>> {
        let device = model.device().clone();
        let mut rng = SplitMix64::new(seed);
        let attached = wire(self.clone(), model, |_, (r, in_dim), (out_dim, r2)| {
            // PEFT: kaiming_uniform_(A, a=√5), i.e. U(-1/√in, 1/√in); B = 0.
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f32> =
                (0..r * in_dim).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
            Ok((
                Tensor::from_vec(a, (r, in_dim), &device)?,
                Tensor::zeros((out_dim, r2), DType::F32, &device)?,
            ))
        })?;
        Ok(Box::new(attached))
    }
}

impl AttachedAdapter for AttachedLora {
    fn parameters(&self) -> Vec<Var> {
        self.modules.iter().flat_map(|(_, m)| [m.a.clone(), m.b.clone()]).collect()
    }

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (path, m) in &self.modules {
            tensors.insert(
                format!("base_model.model.{path}.lora_A.weight"),
                m.a.as_tensor().to_device(&candle_core::Device::Cpu)?,
            );
            tensors.insert(
                format!("base_model.model.{path}.lora_B.weight"),
                m.b.as_tensor().to_device(&candle_core::Device::Cpu)?,
            );
        }
        let c = &self.config;
        // The modules adapted, as PEFT lists them: a group's names that this model lacks are left out.
        let wired: Vec<&String> = c.targets.iter().filter(|t| adapts(&self.modules, t)).collect();
        write_adapter_files(
            dir,
            &tensors,
            &serde_json::json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": c.rank,
                "lora_alpha": c.alpha,
                "lora_dropout": c.dropout,
                "use_rslora": c.rslora,
                "target_modules": wired,
                "bias": "none",
                "fan_in_fan_out": false,
                "inference_mode": true,
                "init_lora_weights": true,
            }),
        )
    }

    fn merge_deltas(&self) -> Result<Vec<(String, Tensor)>> {
        self.modules
            .iter()
            .map(|(path, m)| {
                Ok((format!("{path}.weight"), (m.b.as_tensor().matmul(m.a.as_tensor())? * m.scale)?))
            })
            .collect()
    }
}

/// Loads a PEFT LoRA adapter (its parsed `config`) from `dir` into `model`.
pub(super) fn load(
    dir: &Path,
    config: &serde_json::Value,
    model: &mut CausalLm,
) -> Result<Box<dyn AttachedAdapter>> {
    let file = dir.join(ADAPTER_CONFIG_FILE);
    let bad = |what: &str| bad_input!("{}: {what}", file.display());
    let rank = config["r"].as_u64().filter(|&r| r > 0).ok_or_else(|| bad("`r` must be a positive integer"))?
        as usize;
    if config["fan_in_fan_out"].as_bool() == Some(true) {
        return Err(bad("`fan_in_fan_out: true` (Conv1D-style weights) is not supported"));
    }
    let listed = match &config["target_modules"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            items.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(",")
        }
        _ => return Err(bad("`target_modules` must be a list of module names")),
    };
    let (targets, named) = parse_targets(&listed).map_err(|e| bad(&e.to_string()))?;
    let lora = LoraConfig {
        rank,
        alpha: config["lora_alpha"].as_f64().ok_or_else(|| bad("`lora_alpha` is missing"))?,
        dropout: config["lora_dropout"].as_f64().unwrap_or(0.0),
        rslora: config["use_rslora"].as_bool().unwrap_or(false),
        targets,
        named,
    };
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let store = crate::loader::WeightStore::open_files(std::slice::from_ref(&weights_path))?;
    let device = model.device().clone();
    let attached = wire(lora, model, |path, a_shape, b_shape| {
        let a = store.load(
            &format!("base_model.model.{path}.lora_A.weight"),
            &[a_shape.0, a_shape.1],
            DType::F32,
            &device,
        )?;
        let b = store.load(
            &format!("base_model.model.{path}.lora_B.weight"),
            &[b_shape.0, b_shape.1],
            DType::F32,
            &device,
        )?;
        Ok((a, b))
    })?;
    Ok(Box::new(attached))
}

inventory::submit! {
    Builtin {
        name: "lora",
        description: "low-rank adapters on chosen linear layers, saved in PEFT's layout",
        options: || vec![
            OptionSpec::new("rank", OptionKind::Int, 16, "rank r of each adapter"),
            OptionSpec::new("alpha", OptionKind::Float, serde_json::Value::Null, "scale numerator: s = alpha / r [default: 2 r]"),
            OptionSpec::new("dropout", OptionKind::Float, 0.0, "dropout on the adapter's input while training"),
            OptionSpec::new("rslora", OptionKind::Bool, false, "rank-stabilised scaling s = alpha / sqrt(r)"),
            OptionSpec::new("targets", OptionKind::String, "all-linear", "layers to adapt: names (q_proj,v_proj), attention, mlp or all-linear"),
        ],
        factory: Factory::Adapter(|o| Ok(Box::new(LoraConfig::from_options(o)?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_expand_groups_and_refuse_unknown_layers() {
        assert_eq!(
            parse_targets("attention").unwrap().0,
            [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "in_proj_qkv",
                "in_proj_z",
                "in_proj_b",
                "in_proj_a",
                "out_proj"
            ]
        );
        assert_eq!(parse_targets("q_proj, mlp,all-linear").unwrap().1, ["q_proj"]);
        assert_eq!(
            parse_targets("q_proj, mlp,q_proj").unwrap().0,
            ["q_proj", "gate_proj", "up_proj", "down_proj"]
        );
        let err = parse_targets("qkv").unwrap_err().to_string();
        assert!(err.contains("LoRA target `qkv` is not a linear layer; use q_proj, k_proj"), "{err}");
    }

    #[test]
    fn the_fused_layer_has_the_output_and_gradients_of_the_layer_through_the_graph() -> candle_core::Result<()>
    {
        use crate::autograd::frozen_matmul;
        use candle_core::Device;
        let dev = Device::Cpu;
        let values =
            |n: usize, k: usize| -> Vec<f32> { (0..n).map(|i| ((i * k % 23) as f32 - 11.0) / 9.0).collect() };
        let (rows, inp, out, r) = (5, 6, 7, 3);
        let t = |k, shape: (usize, usize)| Tensor::from_vec(values(shape.0 * shape.1, k), shape, &dev);
        let lora = LoraLinear {
            a: Var::from_tensor(&t(3, (r, inp))?)?,
            b: Var::from_tensor(&t(5, (out, r))?)?,
            scale: 1.5,
            dropout: 0.0,
            training: Arc::new(AtomicBool::new(true)),
        };
        let (weight, bias) = (t(7, (out, inp))?, Tensor::from_vec(values(out, 2), out, &dev)?);
        let x = Var::from_tensor(&t(11, (rows, inp))?)?;
        let weights = t(13, (rows, out))?;
        let fused =
            lora.fused(x.as_tensor(), &weight, Some(&bias)).expect("training without dropout fuses")?;
        let through_graph =
            lora.forward(x.as_tensor(), &frozen_matmul(x.as_tensor(), &weight)?.broadcast_add(&bias)?)?;
        assert_eq!(fused.to_vec2::<f32>()?, through_graph.to_vec2::<f32>()?);
        let gradients = |y: Tensor| -> candle_core::Result<Vec<Vec<f32>>> {
            let store = (y * &weights)?.sum_all()?.backward()?;
            [x.as_tensor(), lora.a.as_tensor(), lora.b.as_tensor()]
                .iter()
                .map(|v| store.get(v).expect("every input gets a gradient").flatten_all()?.to_vec1::<f32>())
                .collect()
        };
        for (name, (a, b)) in
            ["x", "A", "B"].iter().zip(gradients(fused)?.iter().zip(&gradients(through_graph)?))
        {
            for (a, b) in a.iter().zip(b) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "gradient of {name}: {a} vs {b}");
            }
        }
        Ok(())
    }
}
