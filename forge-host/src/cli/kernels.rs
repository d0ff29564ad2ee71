//! `forge kernels`: checks forge's device kernels against their CPU references on random inputs —
//! forward values and gradients — so a GPU build can be trusted before it is timed.
use candle_core::{DType, Device, Module, Tensor, Var};
use clap::Args;
use serde::Serialize;

use super::Runtime;
use crate::model::causal_softmax::causal_softmax;
use crate::model::config::{RopeConfig, RopeScaling};
use crate::model::loss::{row_nll, RowNll};
use crate::model::mlp::swiglu;
use crate::model::norm::RmsNorm;
use crate::model::rope::RotaryEmbedding;
use crate::runtime::SplitMix64;
use crate::{bad_input, Error, Result};

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Check {
    kernel: &'static str,
    shape: Vec<usize>,
    past: usize,
    forward_rel_err: f64,
    backward_rel_err: f64,
    tolerance: f64,
    pass: bool,
}

fn rel_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let (a, b) =
        (a.to_dtype(DType::F64)?.to_device(&Device::Cpu)?, b.to_dtype(DType::F64)?.to_device(&Device::Cpu)?);
    let num = (&a - &b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    Ok(num / b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?)
}

fn random(shape: &[usize], rng: &mut SplitMix64, spread: f64) -> candle_core::Result<Tensor> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect();
    // Rounded to bf16 so that the device and the reference see the same inputs.
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}

/// Probabilities and the gradient of `Σ w·probs` with respect to the scores, computed on `device` in `dtype`.
fn softmax_and_grad(
    scores: &Tensor,
    weights: &Tensor,
    past: usize,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<(Tensor, Tensor)> {
    let x = Var::from_tensor(&scores.to_device(device)?.to_dtype(dtype)?)?;
    let scale = 1.0 / 8f64.sqrt();
    let probs = causal_softmax(x.as_tensor(), scale, past)?;
    let loss = (probs.to_dtype(DType::F32)? * weights.to_device(device)?)?.sum_all()?;
    let grad = loss
        .backward()?
        .get(x.as_tensor())
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
    Ok((probs, grad))
}

/// A check of a kernel that has no backward: it serves only where no gradient flows.
fn check_without_backward(
    kernel: &'static str,
    shape: Vec<usize>,
    got: &Tensor,
    reference: &Tensor,
) -> Result<Check> {
    // The same bf16 rounding steps as the elementary ops: differences are single-ulp ties.
    let tolerance = 1e-2;
    let forward_rel_err = rel_diff(got, reference)?;
    Ok(Check {
        kernel,
        shape,
        past: 0,
        forward_rel_err,
        backward_rel_err: 0.0,
        tolerance,
        pass: forward_rel_err < tolerance,
    })
}

pub fn run(args: KernelsArgs, rt: &Runtime) -> Result<()> {
    if rt.device.is_cpu() {
        return Err(bad_input!(
            "give --device cuda: the CPU references are what the device kernels are checked against"
        ));
    }
    let mut rng = SplitMix64::new(rt.seed);
    let mut checks = Vec::new();
    for (shape, past) in [
        (vec![2, 3, 5, 9], 4),
        (vec![2, 2, 7, 7], 0),
        (vec![1, 14, 1024, 1024], 0),
        (vec![1, 2, 1, 300], 299),
    ] {
        let scores = random(&shape, &mut rng, 8.0)?;
        let weights = random(&shape, &mut rng, 1.0)?;
        let (ref_probs, ref_grad) = softmax_and_grad(&scores, &weights, past, &Device::Cpu, DType::F32)?;
        let (probs, grad) = softmax_and_grad(&scores, &weights, past, &rt.device, DType::BF16)?;
        // bf16 keeps 8 bits of mantissa: outputs rounded to it differ from f32 by about 4e-3 at most.
        let tolerance = 1e-2;
        let (forward_rel_err, backward_rel_err) =
            (rel_diff(&probs, &ref_probs)?, rel_diff(&grad, &ref_grad)?);
        let pass = forward_rel_err < tolerance && backward_rel_err < tolerance;
        checks.push(Check {
            kernel: "causal_softmax_bf16",
            shape,
            past,
            forward_rel_err,
            backward_rel_err,
            tolerance,
            pass,
        });
    }
    for (rows, vocab) in [(37, 5003), (16, 151936)] {
        let logits = random(&[rows, vocab], &mut rng, 12.0)?.to_dtype(DType::BF16)?;
        let targets: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
        let targets = Tensor::from_vec(targets, rows, &Device::Cpu)?;
        let reference = logits.apply_op2_no_bwd(&targets, &RowNll)?;
        let got = row_nll(&logits.to_device(&rt.device)?, &targets.to_device(&rt.device)?)?;
        // Same bf16 inputs; f32 accumulation against f64.
        let tolerance = 1e-5;
        let forward_rel_err = rel_diff(&got, &reference)?;
        let pass = forward_rel_err < tolerance;
        let shape = vec![rows, vocab];
        checks.push(Check {
            kernel: "row_nll_bf16",
            shape,
            past: 0,
            forward_rel_err,
            backward_rel_err: 0.0,
            tolerance,
            pass,
        });
    }
    // Kernels without a backward, against the elementary bf16 ops they replace, run on the CPU.
    let bf16 = |t: Tensor| t.to_dtype(DType::BF16);
    for (rows, n) in [(7, 96), (8192, 896), (3, 4096)] {
        let x = bf16(random(&[rows, n], &mut rng, 4.0)?)?;
        let w = bf16(random(&[n], &mut rng, 2.0)?)?;
        let reference = RmsNorm::new(w.clone(), 1e-6).forward(&x)?;
        let got = RmsNorm::new(w.to_device(&rt.device)?, 1e-6).forward(&x.to_device(&rt.device)?)?;
        checks.push(check_without_backward("rms_norm_bf16", vec![rows, n], &got, &reference)?);
    }
    for (b, s, h, d) in [(2, 5, 3, 8), (8, 1024, 14, 64), (1, 1, 16, 128)] {
        let rope = RotaryEmbedding::new(&RopeConfig { theta: 1e6, scaling: RopeScaling::Default }, d);
        let x = bf16(random(&[b, s, h, d], &mut rng, 4.0)?)?;
        let reference = rope.tables(7, s, DType::BF16, &Device::Cpu)?.apply_heads_first(&x)?;
        let got = rope.tables(7, s, DType::BF16, &rt.device)?.apply_heads_first(&x.to_device(&rt.device)?)?;
        checks.push(check_without_backward("rope_bf16", vec![b, s, h, d], &got, &reference)?);
    }
    for shape in [vec![3, 11], vec![8192, 4864]] {
        let (gate, up) = (bf16(random(&shape, &mut rng, 6.0)?)?, bf16(random(&shape, &mut rng, 2.0)?)?);
        let reference = swiglu(&gate, &up)?;
        let got = swiglu(&gate.to_device(&rt.device)?, &up.to_device(&rt.device)?)?;
        checks.push(check_without_backward("swiglu_bf16", shape, &got, &reference)?);
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    super::emit(&serde_json::json!({ "checks": &checks }), args.json, |_| {
        checks
            .iter()
            .map(|c| {
                format!(
                    "{} {:?} past {}: forward {:.2e}, backward {:.2e} (tolerance {:.0e}) {}",
                    c.kernel,
                    c.shape,
                    c.past,
                    c.forward_rel_err,
                    c.backward_rel_err,
                    c.tolerance,
                    if c.pass { "ok" } else { "FAILED" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    if failed > 0 {
        return Err(Error::Strategy(format!("{failed} kernel checks failed")));
    }
    Ok(())
}
