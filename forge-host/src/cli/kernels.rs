//! `forge kernels`: checks forge's device kernels against their CPU references on random inputs —
//! forward values and gradients — so a GPU build can be trusted before it is timed.
use candle_core::{DType, Device, Module, Tensor, Var};
use clap::Args;
use serde::Serialize;

use super::Runtime;
use crate::model::causal_attention::causal_attention;
use crate::model::causal_softmax::causal_softmax;
use crate::model::config::{RopeConfig, RopeScaling};
use crate::model::loss::{chunked_nll, row_nll, RowNll};
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

/// The inputs' gradients are the gradients of `Σ weights · f(inputs)`.
type Differentiated = (Tensor, Vec<Tensor>);

/// `f` of `inputs` moved to `device` in `dtype`, and the gradients of `Σ weights · f` with respect to
/// each input. `f` moves whatever else it uses to its inputs' device.
fn value_and_grads(
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    inputs: &[Tensor],
    weights: &Tensor,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Differentiated> {
    let vars = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device)?.to_dtype(dtype)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors)?;
    let grads = (out.to_dtype(DType::F32)? * weights.to_device(device)?)?.sum_all()?.backward()?;
    let grads = tensors
        .iter()
        .map(|t| grads.get(t).cloned().ok_or_else(|| candle_core::Error::Msg("no gradient".into())))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((out, grads))
}

/// Runs `f` on the device in bf16 and on the CPU in `reference_dtype`, and compares values and
/// gradients (the largest relative difference over the inputs).
#[allow(clippy::too_many_arguments)]
fn check(
    kernel: &'static str,
    shape: Vec<usize>,
    past: usize,
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    inputs: &[Tensor],
    weights: &Tensor,
    reference_dtype: DType,
    tolerance: f64,
    device: &Device,
) -> Result<Check> {
    let (ref_out, ref_grads) = value_and_grads(f, inputs, weights, &Device::Cpu, reference_dtype)?;
    let (out, grads) = value_and_grads(f, inputs, weights, device, DType::BF16)?;
    let forward_rel_err = rel_diff(&out, &ref_out)?;
    let mut backward_rel_err = 0f64;
    for (g, r) in grads.iter().zip(&ref_grads) {
        backward_rel_err = backward_rel_err.max(rel_diff(g, r)?);
    }
    let pass = forward_rel_err < tolerance && backward_rel_err < tolerance;
    Ok(Check { kernel, shape, past, forward_rel_err, backward_rel_err, tolerance, pass })
}

pub fn run(args: KernelsArgs, rt: &Runtime) -> Result<()> {
    if rt.device.is_cpu() {
        return Err(bad_input!(
            "give --device cuda: the CPU references are what the device kernels are checked against"
        ));
    }
    let mut rng = SplitMix64::new(rt.seed);
    let dev = &rt.device;
    let mut checks = Vec::new();
    // Against f32 on the CPU: bf16 keeps 8 bits of mantissa, so outputs rounded to it differ from f32
    // by about 4e-3 at most.
    for (shape, past) in [
        (vec![2, 3, 5, 9], 4),
        (vec![2, 2, 7, 7], 0),
        (vec![1, 14, 1024, 1024], 0),
        (vec![1, 2, 1, 300], 299),
    ] {
        let inputs = [random(&shape, &mut rng, 8.0)?];
        let weights = random(&shape, &mut rng, 1.0)?;
        let softmax = |x: &[Tensor]| causal_softmax(&x[0], 1.0 / 8f64.sqrt(), past);
        checks.push(check(
            "causal_softmax_bf16",
            shape,
            past,
            &softmax,
            &inputs,
            &weights,
            DType::F32,
            1e-2,
            dev,
        )?);
    }
    // Attention through the softmax kernels and their backward, with the recomputing backward; bf16
    // operands of every matmul (as the peer's SDPA kernels have them).
    for ((b, heads, kv, seq, d), past) in [((2, 4, 2, 7, 16), 3), ((2, 14, 2, 1024, 64), 0)] {
        let inputs = [
            random(&[b, heads, seq, d], &mut rng, 2.0)?,
            random(&[b, kv, past + seq, d], &mut rng, 2.0)?,
            random(&[b, kv, past + seq, d], &mut rng, 1.0)?,
        ];
        let weights = random(&[b, seq, heads * d], &mut rng, 1.0)?;
        let attend = |x: &[Tensor]| Ok(causal_attention(&x[0], &x[1], &x[2], past)?.0);
        let shape = vec![b, heads, kv, seq, d];
        checks.push(check(
            "causal_attention",
            shape,
            past,
            &attend,
            &inputs,
            &weights,
            DType::F32,
            2e-2,
            dev,
        )?);
    }
    // The chunked NLL: the row NLL kernel forward, its backward kernel and the lm_head products.
    for (rows, hidden, vocab) in [(37, 64, 5003), (600, 128, 151936)] {
        let inputs = [random(&[rows, hidden], &mut rng, 1.0)?];
        let lm_head = random(&[vocab, hidden], &mut rng, 0.5)?;
        let targets: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
        let targets = Tensor::from_vec(targets, rows, &Device::Cpu)?;
        let weights = random(&[rows], &mut rng, 1.0)?;
        let nll = |x: &[Tensor]| {
            let lm_head = lm_head.to_device(x[0].device())?.to_dtype(x[0].dtype())?;
            chunked_nll(&x[0], &lm_head, &targets.to_device(x[0].device())?)
        };
        let shape = vec![rows, hidden, vocab];
        checks.push(check(
            "row_nll_bf16 (chunked NLL)",
            shape,
            0,
            &nll,
            &inputs,
            &weights,
            DType::F32,
            1e-2,
            dev,
        )?);
    }
    // The row NLL kernel alone, against its f64 reference on the same bf16 logits.
    for (rows, vocab) in [(37, 5003), (16, 151936)] {
        let logits = random(&[rows, vocab], &mut rng, 12.0)?.to_dtype(DType::BF16)?;
        let targets: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
        let targets = Tensor::from_vec(targets, rows, &Device::Cpu)?;
        let reference = logits.apply_op2_no_bwd(&targets, &RowNll)?;
        let got = row_nll(&logits.to_device(dev)?, &targets.to_device(dev)?)?;
        let forward_rel_err = rel_diff(&got, &reference)?;
        let tolerance = 1e-5;
        checks.push(Check {
            kernel: "row_nll_bf16",
            shape: vec![rows, vocab],
            past: 0,
            forward_rel_err,
            backward_rel_err: 0.0,
            tolerance,
            pass: forward_rel_err < tolerance,
        });
    }
    // The fused norm, RoPE and SwiGLU against the elementary bf16 ops they replace, run on the CPU
    // (forward and backward): the same rounding steps, so differences are single-ulp ties.
    let bf16 = |t: Tensor| t.to_dtype(DType::BF16);
    for (rows, n) in [(7, 96), (8192, 896), (3, 4096)] {
        let inputs = [random(&[rows, n], &mut rng, 4.0)?];
        let w = bf16(random(&[n], &mut rng, 2.0)?)?;
        let weights = random(&[rows, n], &mut rng, 1.0)?;
        let norm = |x: &[Tensor]| RmsNorm::new(w.to_device(x[0].device())?, 1e-6).forward(&x[0]);
        checks.push(check(
            "rms_norm_bf16",
            vec![rows, n],
            0,
            &norm,
            &inputs,
            &weights,
            DType::BF16,
            1e-2,
            dev,
        )?);
    }
    for (b, s, h, d) in [(2, 5, 3, 8), (8, 1024, 14, 64), (1, 1, 16, 128)] {
        let rope = RotaryEmbedding::new(&RopeConfig { theta: 1e6, scaling: RopeScaling::Default }, d);
        let inputs = [random(&[b, s, h, d], &mut rng, 4.0)?];
        let weights = random(&[b, h, s, d], &mut rng, 1.0)?;
        let rotate = |x: &[Tensor]| rope.tables(7, s, DType::BF16, x[0].device())?.apply_heads_first(&x[0]);
        let shape = vec![b, s, h, d];
        checks.push(check("rope_bf16", shape, 0, &rotate, &inputs, &weights, DType::BF16, 1e-2, dev)?);
    }
    for shape in [vec![3, 11], vec![8192, 4864]] {
        let inputs = [random(&shape, &mut rng, 6.0)?, random(&shape, &mut rng, 2.0)?];
        let weights = random(&shape, &mut rng, 1.0)?;
        let gate = |x: &[Tensor]| swiglu(&x[0], &x[1]);
        checks.push(check("swiglu_bf16", shape, 0, &gate, &inputs, &weights, DType::BF16, 1e-2, dev)?);
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
