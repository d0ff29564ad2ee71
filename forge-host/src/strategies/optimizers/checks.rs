//! `forge kernels`' check of the built-in optimizers' device step against their host step: three steps
//! of each on the same random parameter and gradients, at sizes below the 8-bit threshold (f32 moments
//! either way), above it, and not a whole number of 256-value blocks. `adamw` must agree bit for bit,
//! parameters and state; `adamw8bit` within 1e-3 of the parameters' norm (the kernel follows the host
//! rounding for rounding, so it is expected to agree bit for bit too; the map's resolution is about
//! 1e-2 of a block's largest moment).
use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use forge_api::StateData;
use forge_kernels::checks::{random, rel_diff, Check};
use forge_kernels::SplitMix64;

use super::TrainOptimizer;
use crate::strategies::Registry;
use crate::{Error, Result};

pub fn all(device: &Device, rng: &mut SplitMix64) -> Result<Vec<Check>> {
    let registry = Registry::builtin()?;
    let mut checks = Vec::new();
    for (name, kernel, tolerance) in [("adamw", "adamw_f32", 0.0), ("adamw8bit", "adamw8bit_f32", 1e-3)] {
        for n in [1000, 5000, 262_147] {
            let (mut host, _) = registry.optimizer(name, &BTreeMap::new())?;
            let (mut on_device, _) = registry.optimizer(name, &BTreeMap::new())?;
            let err = compare(&mut *host, &mut *on_device, n, device, rng)?;
            let pass = if tolerance == 0.0 { err == 0.0 } else { err < tolerance };
            checks.push(Check::forward_only(kernel, vec![n], err, tolerance, pass));
        }
    }
    Ok(checks)
}

/// Three steps of both on one parameter of `n` values: the larger of the parameters' relative
/// difference and the fraction of state values that differ.
fn compare(
    host: &mut dyn TrainOptimizer,
    on_device: &mut dyn TrainOptimizer,
    n: usize,
    device: &Device,
    rng: &mut SplitMix64,
) -> Result<f64> {
    let start = random(&[n], rng, 1.0)?;
    let mut host_param = start.to_vec1::<f32>()?;
    let param = Var::from_tensor(&start.to_device(device)?)?;
    for lr in [1e-2, 3e-3, 1e-3] {
        let grad = random(&[n], rng, 0.1)?;
        host.update(0, &mut host_param, &grad.to_vec1::<f32>()?, lr)?;
        if !on_device.update_on_device(0, &param, &grad.to_device(device)?, lr)? {
            return Err(Error::Strategy("the optimizer did not step on the device".into()));
        }
    }
    let host_param = Tensor::from_vec(host_param, n, &Device::Cpu)?;
    let params_err = rel_diff(param.as_tensor(), &host_param)?;
    let (a, b) = (host.state()?, on_device.state()?);
    let values = |s: &[forge_api::StateTensor]| -> Vec<f64> {
        s.iter()
            .flat_map(|t| match &t.data {
                StateData::F32(v) => v.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                StateData::U8(v) => v.iter().map(|&x| x as f64).collect(),
                StateData::U64(v) => v.iter().map(|&x| x as f64).collect(),
            })
            .collect()
    };
    let (a, b) = (values(&a), values(&b));
    let differing =
        a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count() + a.len().abs_diff(b.len());
    Ok(params_err.max(differing as f64 / a.len().max(1) as f64))
}
