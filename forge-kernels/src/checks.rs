//! Each fused op on a device against its CPU reference, on random inputs: forward values and the
//! gradients of a random weighting of the output. `forge kernels --device cuda` prints these, and the
//! crate's GPU test asserts them, so a GPU build can be trusted before it is timed.
use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::gated_delta_rule::{self, Heads, Kept, Projections};
use crate::{
    add_bias, add_matmul, causal_conv_silu, causal_softmax, embedding, gated_rms_norm, narrow, residual_add,
    rms_norm, rms_norm_f32_weight, rope_heads_first, row_nll, sigmoid_gate, swiglu, transpose12, Int8Rows,
    RowNll, SplitMix64,
};

/// One comparison of a device result with its reference.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub kernel: &'static str,
    pub shape: Vec<usize>,
    pub past: usize,
    pub forward_rel_err: f64,
    /// None for the forward-only kernels.
    pub backward_rel_err: Option<f64>,
    pub tolerance: f64,
    pub pass: bool,
}

impl Check {
    /// A forward-only comparison: `forward_rel_err` against `tolerance`, with `pass` decided by the
    /// caller (some also require a bitwise match).
    pub fn forward_only(
        kernel: &'static str,
        shape: Vec<usize>,
        forward_rel_err: f64,
        tolerance: f64,
        pass: bool,
    ) -> Self {
        Check { kernel, shape, past: 0, forward_rel_err, backward_rel_err: None, tolerance, pass }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backward = match self.backward_rel_err {
            Some(err) => format!("backward {err:.2e}"),
            None => "no backward".to_string(),
        };
        write!(
            f,
            "{} {:?} past {}: forward {:.2e}, {backward} (tolerance {:.0e}) {}",
            self.kernel,
            self.shape,
            self.past,
            self.forward_rel_err,
            self.tolerance,
            if self.pass { "ok" } else { "FAILED" }
        )
    }
}

/// ‖a − b‖ / ‖b‖, in f64 on the CPU.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let (a, b) =
        (a.to_dtype(DType::F64)?.to_device(&Device::Cpu)?, b.to_dtype(DType::F64)?.to_device(&Device::Cpu)?);
    let num = (&a - &b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    Ok(num / b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?)
}

/// Uniform values in `[-spread, spread)`, rounded to bf16 so that the device and the reference see the
/// same inputs, as f32 on the CPU.
pub fn random(shape: &[usize], rng: &mut SplitMix64, spread: f64) -> candle_core::Result<Tensor> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}

/// A random norm weight of width `n` in one of the two conventions: Qwen3.5's `1 + w`, in f32
/// (`f32_weight`), or a bf16 `w`.
fn norm_weight(n: usize, f32_weight: bool, rng: &mut SplitMix64) -> candle_core::Result<Tensor> {
    match f32_weight {
        true => random(&[n], rng, 0.5)? + 1.0,
        false => random(&[n], rng, 2.0)?.to_dtype(DType::BF16),
    }
}

/// The norm of `x` by weight `w` in the convention `f32_weight` names (see [`norm_weight`]).
#[cfg(feature = "cuda")]
fn norm_by(x: &Tensor, w: &Tensor, f32_weight: bool) -> candle_core::Result<Tensor> {
    match f32_weight {
        true => rms_norm_f32_weight(x, w, 1e-6),
        false => rms_norm(x, w, 1e-6),
    }
}

/// A function of tensors, checked on the device in bf16 against the CPU in a reference dtype.
pub type Op<'a> = &'a dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// What a case compares: `f` on `inputs`, weighted by `weights` for the gradients.
pub struct Case<'a> {
    pub kernel: &'static str,
    pub shape: Vec<usize>,
    pub past: usize,
    pub f: Op<'a>,
    pub inputs: Vec<Tensor>,
    pub weights: Tensor,
    /// The CPU's dtype: f32 where the reference is the exact function, bf16 where it is the same
    /// rounding steps.
    pub reference_dtype: DType,
    pub tolerance: f64,
}

impl<'a> Case<'a> {
    /// A case against the exact function in f32 on the CPU, tolerance 1e-2 (bf16 outputs differ from
    /// f32 by about 4e-3 at most), no past.
    pub fn new(
        kernel: &'static str,
        shape: Vec<usize>,
        f: Op<'a>,
        inputs: Vec<Tensor>,
        weights: Tensor,
    ) -> Self {
        Case { kernel, shape, past: 0, f, inputs, weights, reference_dtype: DType::F32, tolerance: 1e-2 }
    }

    /// Against the same rounding steps on the CPU (bf16 elementary ops) rather than the exact function.
    pub fn same_rounding(self) -> Self {
        Case { reference_dtype: DType::BF16, ..self }
    }

    /// With keys before the queries (attention, softmax).
    pub fn past(self, past: usize) -> Self {
        Case { past, ..self }
    }

    pub fn tolerance(self, tolerance: f64) -> Self {
        Case { tolerance, ..self }
    }
}

/// `f` of `inputs` moved to `device` in `dtype`, and the gradients of `Σ weights · f` with respect to
/// each input. `f` moves whatever else it uses to its inputs' device.
fn value_and_grads(case: &Case, device: &Device, dtype: DType) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
    let vars = case
        .inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device)?.to_dtype(dtype)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = (case.f)(&tensors)?;
    let grads = (out.to_dtype(DType::F32)? * case.weights.to_device(device)?)?.sum_all()?.backward()?;
    let grads = tensors
        .iter()
        .map(|t| {
            grads
                .get(t)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("{}: no gradient", case.kernel)))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((out, grads))
}

/// Runs a case on `device` in bf16 and on the CPU in its reference dtype, and compares values and
/// gradients (the largest relative difference over the inputs).
pub fn check(case: Case, device: &Device) -> candle_core::Result<Check> {
    let (ref_out, ref_grads) = value_and_grads(&case, &Device::Cpu, case.reference_dtype)?;
    let (out, grads) = value_and_grads(&case, device, DType::BF16)?;
    let forward_rel_err = rel_diff(&out, &ref_out)?;
    let mut backward_rel_err = 0f64;
    for (g, r) in grads.iter().zip(&ref_grads) {
        backward_rel_err = backward_rel_err.max(rel_diff(g, r)?);
    }
    let pass = forward_rel_err < case.tolerance && backward_rel_err < case.tolerance;
    let Case { kernel, shape, past, tolerance, .. } = case;
    Ok(Check {
        kernel,
        shape,
        past,
        forward_rel_err,
        backward_rel_err: Some(backward_rel_err),
        tolerance,
        pass,
    })
}

/// A forward-only kernel: `f` builds its inputs on a device in a dtype; the device's bf16 run is
/// compared with the CPU's f32 one.
fn forward_check(
    kernel: &'static str,
    shape: Vec<usize>,
    f: &dyn Fn(&Device, DType) -> candle_core::Result<Tensor>,
    device: &Device,
    tolerance: f64,
) -> candle_core::Result<Check> {
    let forward_rel_err = rel_diff(&f(device, DType::BF16)?, &f(&Device::Cpu, DType::F32)?)?;
    Ok(Check::forward_only(kernel, shape, forward_rel_err, tolerance, forward_rel_err < tolerance))
}

/// Every kernel of this crate on `device`, on shapes from tiny to real models' (qwen2.5-0.5b's
/// attention, a 151,936-token vocabulary, 8 × 1024 tokens).
pub fn all(device: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = softmax_checks(device, rng)?;
    checks.extend(row_nll_checks(device, rng)?);
    checks.extend(elementwise_checks(device, rng)?);
    checks.extend(partial_rope_checks(device, rng)?);
    checks.extend(hybrid_checks(device, rng)?);
    Ok(checks)
}

/// The causal softmax and its backward, against f32 on the CPU: bf16 keeps 8 bits of mantissa, so
/// outputs rounded to it differ from f32 by about 4e-3 at most.
fn softmax_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let shapes = [
        (vec![2, 3, 5, 9], 4),
        (vec![2, 2, 7, 7], 0),
        (vec![1, 14, 1024, 1024], 0),
        (vec![1, 2, 1, 300], 299),
    ];
    shapes
        .into_iter()
        .map(|(shape, past)| {
            let f = move |x: &[Tensor]| causal_softmax(&x[0], 1.0 / 8f64.sqrt(), past);
            let (inputs, weights) = (vec![random(&shape, rng, 8.0)?], random(&shape, rng, 1.0)?);
            let case = Case::new("causal_softmax_bf16", shape, &f, inputs, weights).past(past);
            check(case, dev)
        })
        .collect()
}

/// The row NLL kernel against its f64 reference on the same bf16 logits (its backward is checked
/// through the chunked NLL, by forge).
fn row_nll_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    [(37, 5003), (16, 151936)]
        .into_iter()
        .map(|(rows, vocab)| {
            let logits = random(&[rows, vocab], rng, 12.0)?.to_dtype(DType::BF16)?;
            let targets: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            let targets = Tensor::from_vec(targets, rows, &Device::Cpu)?;
            let reference = logits.apply_op2_no_bwd(&targets, &RowNll)?;
            let got = row_nll(&logits.to_device(dev)?, &targets.to_device(dev)?)?;
            let forward_rel_err = rel_diff(&got, &reference)?;
            let tolerance = 1e-5;
            Ok(Check::forward_only(
                "row_nll_bf16",
                vec![rows, vocab],
                forward_rel_err,
                tolerance,
                forward_rel_err < tolerance,
            ))
        })
        .collect()
}

/// The fused norm and RoPE against the elementary bf16 ops they replace, run on the CPU (forward and
/// backward): the same rounding steps, so differences are single-ulp ties. SwiGLU against the exact
/// function in f32: its elementary bf16 backward rounds each intermediate product, so on a small
/// random case (33 values) it drifted 1.01e-2 from the kernel, which computes in f32 and rounds once
/// (H200, 2026-12-02); against f32 the kernel's error is bounded by two bf16 roundings, about 4e-3.
fn elementwise_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    // Rows a multiple of 8 wide go eight values a load; 100 wide, one at a time. Rows of up to 256 take
    // a warp each (a q/k norm over qwen3-4b's 32 heads of 128 at 4 × 1024 tokens, and partial blocks of
    // eight rows), longer ones a block.
    for (rows, n) in [(7, 96), (8192, 896), (3, 4096), (5, 100), (4 * 1024 * 32, 128), (13, 256)] {
        let w = norm_weight(n, false, rng)?;
        let f = |x: &[Tensor]| rms_norm(&x[0], &w.to_device(x[0].device())?, 1e-6);
        let (inputs, weights) = (vec![random(&[rows, n], rng, 4.0)?], random(&[rows, n], rng, 1.0)?);
        let shape = vec![rows, n];
        checks.push(check(Case::new("rms_norm_bf16", shape, &f, inputs, weights).same_rounding(), dev)?);
    }
    for (b, s, h, d) in [(2, 5, 3, 8), (8, 1024, 14, 64), (1, 1, 16, 128)] {
        let angles = (random(&[1, 1, s, d], rng, 1.0)? * 1e3)?;
        let f = |x: &[Tensor]| {
            let table = |t: Tensor| t.to_dtype(DType::BF16)?.to_device(x[0].device());
            rope_heads_first(&x[0], &table(angles.cos()?)?, &table(angles.sin()?)?)
        };
        let (inputs, weights) = (vec![random(&[b, s, h, d], rng, 4.0)?], random(&[b, h, s, d], rng, 1.0)?);
        let shape = vec![b, s, h, d];
        checks.push(check(Case::new("rope_bf16", shape, &f, inputs, weights).same_rounding(), dev)?);
    }
    for shape in [vec![3, 11], vec![8192, 4864]] {
        let f = |x: &[Tensor]| swiglu(&x[0], &x[1]);
        let inputs = vec![random(&shape, rng, 6.0)?, random(&shape, rng, 2.0)?];
        let weights = random(&shape, rng, 1.0)?;
        checks.push(check(Case::new("swiglu_bf16", shape, &f, inputs, weights), dev)?);
    }
    checks.extend(candle_free_checks(dev, rng)?);
    Ok(checks)
}

/// The ops that stand in for candle's on eval's path (residual add, bias add, embedding lookup,
/// heads-first copy), the int8 base's dequantization and Qwen3.5's norm with its f32 weight, forward and backward where they have one, against candle's own ops on the CPU.
fn candle_free_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    // Eight values a load (896 wide), and one at a time (10 wide).
    for shape in [vec![8, 1024, 896], vec![3, 7, 10]] {
        let f = |x: &[Tensor]| residual_add(&x[0], &x[1]);
        let inputs = vec![random(&shape, rng, 4.0)?, random(&shape, rng, 4.0)?];
        checks.push(check(
            Case::new("add_bias_bf16 (residual)", shape.clone(), &f, inputs, random(&shape, rng, 1.0)?),
            dev,
        )?);
        let bias = random(&shape[2..], rng, 2.0)?;
        let f = |x: &[Tensor]| add_bias(&x[0], &bias.to_device(x[0].device())?.to_dtype(x[0].dtype())?);
        let inputs = vec![random(&shape, rng, 4.0)?];
        checks.push(check(
            Case::new("add_bias_bf16", shape.clone(), &f, inputs, random(&shape, rng, 1.0)?),
            dev,
        )?);
    }
    let (b, s, h, d) = (2, 300, 7, 64);
    let f = |x: &[Tensor]| transpose12(&x[0]);
    let (inputs, weights) = (vec![random(&[b, s, h, d], rng, 4.0)?], random(&[b, h, s, d], rng, 1.0)?);
    checks.push(check(Case::new("transpose12_bf16", vec![b, s, h, d], &f, inputs, weights), dev)?);
    let x = random(&[8, 1024, 896], rng, 4.0)?;
    let f = |d: &Device, dtype: DType| narrow(&x.to_device(d)?.to_dtype(dtype)?, 1, 3, 1000);
    checks.push(forward_check("narrow_bf16", vec![8, 1024, 896], &f, dev, 1e-2)?);
    let (vocab, dim, rows) = (5003, 896, 4096);
    let table = random(&[vocab, dim], rng, 1.0)?;
    let ids: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    let ids = Tensor::from_vec(ids, (8, rows / 8), &Device::Cpu)?;
    let f = |d: &Device, dtype: DType| embedding(&table.to_device(d)?.to_dtype(dtype)?, &ids.to_device(d)?);
    checks.push(forward_check("embedding_bf16", vec![vocab, dim, rows], &f, dev, 1e-2)?);
    // A product added into another, as LoRA's output and input gradient take it: plain and transposed
    // operands, at qwen3.5-9b's hidden width and rank 16.
    let (c, a, b) =
        (random(&[4096, 4096], rng, 4.0)?, random(&[4096, 16], rng, 1.0)?, random(&[4096, 16], rng, 1.0)?);
    let f = |d: &Device, dtype: DType| {
        let on = |t: &Tensor| t.to_device(d)?.to_dtype(dtype);
        add_matmul(on(&c)?, &on(&a)?, &on(&b)?.t()?, 0.5)
    };
    checks.push(forward_check("add_matmul (cuBLAS, beta 1)", vec![4096, 16, 4096], &f, dev, 1e-2)?);
    // A frozen base in int8 (rows of qwen3.5-27b's hidden width), quantized and given back on each side.
    let w = random(&[1024, 5120], rng, 0.05)?;
    let f = |d: &Device, dtype: DType| Int8Rows::quantize(&w.to_device(d)?.to_dtype(dtype)?)?.dequantize();
    checks.push(forward_check("dequant_rows_u8_bf16", vec![1024, 5120], &f, dev, 1e-2)?);
    #[cfg(feature = "cuda")]
    checks.extend(matvec_checks(dev, rng)?);
    #[cfg(feature = "cuda")]
    checks.extend(add_norm_checks(dev, rng)?);
    #[cfg(feature = "cuda")]
    checks.extend(norm_rope_checks(dev, rng)?);
    // Qwen3.5's norm at qwen3.5-0.8b's hidden width and over its attention heads of 256 (a warp a row),
    // its weight `1 + w` in f32.
    for (rows, n) in [(4096, 1024), (2 * 1024 * 8 + 3, 256)] {
        let w = norm_weight(n, true, rng)?;
        let f = |x: &[Tensor]| rms_norm_f32_weight(&x[0], &w.to_device(x[0].device())?, 1e-6);
        let (inputs, weights) = (vec![random(&[rows, n], rng, 4.0)?], random(&[rows, n], rng, 1.0)?);
        checks.push(check(Case::new("rms_norm_f32w_bf16", vec![rows, n], &f, inputs, weights), dev)?);
    }
    Ok(checks)
}

/// Decoding's one-row products against f32 on the CPU: one weight at qwen3-4b's MLP widths (up and
/// down) and an output of a 50,000-token vocabulary; its q, k and v as one launch; its gate and up
/// with SwiGLU as one. The kernels must take each (a row of a width they refuse would fall back to
/// cuBLAS unchecked).
#[cfg(feature = "cuda")]
fn matvec_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let cases: [(&'static str, &[usize], usize); 5] = [
        ("matvec_bf16", &[9728], 2560),
        ("matvec_bf16", &[2560], 9728),
        ("matvec_bf16", &[50_000], 1024),
        ("matvec3_bf16 (q, k, v)", &[4096, 1024, 1024], 2560),
        ("matvec_swiglu_bf16", &[9728, 9728], 2560),
    ];
    for (kernel, rows, k) in cases {
        let x = random(&[1, k], rng, 2.0)?;
        let weights =
            rows.iter().map(|&n| random(&[n, k], rng, 0.05)).collect::<candle_core::Result<Vec<_>>>()?;
        let f = |d: &Device, dtype: DType| {
            let on = |t: &Tensor| t.to_device(d)?.to_dtype(dtype);
            let (x, ws) = (on(&x)?, weights.iter().map(on).collect::<candle_core::Result<Vec<_>>>()?);
            let ws = ws.iter().collect::<Vec<_>>();
            let swiglu = kernel.contains("swiglu");
            let fused =
                if swiglu { crate::matvec_swiglu(&x, ws[0], ws[1])? } else { crate::matvec(&x, &ws)? };
            let products = || ws.iter().map(|w| x.matmul(&w.t()?)).collect::<candle_core::Result<Vec<_>>>();
            match fused {
                Some(y) => Ok(y),
                None if d.is_cpu() && swiglu => products().and_then(|p| crate::swiglu(&p[0], &p[1])),
                None if d.is_cpu() => Tensor::cat(&products()?, 1),
                None => candle_core::bail!("{kernel} refused a row of {k}"),
            }
        };
        checks.push(forward_check(kernel, rows.iter().copied().chain([k]).collect(), &f, dev, 1e-2)?);
    }
    Ok(checks)
}

/// The residual add fused into the norm after it, both conventions: its sum and norm against f32 on
/// the CPU, and against the two kernels it replaces, which it must equal bit for bit (or decoding and
/// eval would drift from training's path). Rows of one token at qwen3-4b's width (a block a row),
/// of a tiny model's 64 (a warp a row), of 100 (a value a load) and a batch at qwen3.5-0.8b's.
#[cfg(feature = "cuda")]
fn add_norm_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (rows, n, f32_weight) in [(1, 2560, false), (9, 64, false), (5, 100, true), (4096, 1024, true)] {
        let (a, b) = (random(&[rows, n], rng, 4.0)?, random(&[rows, n], rng, 4.0)?);
        let w = norm_weight(n, f32_weight, rng)?;
        let norm = |x: &Tensor, w: &Tensor| norm_by(x, w, f32_weight);
        let on = |t: &Tensor, d: &Device, dtype: DType| t.to_device(d)?.to_dtype(dtype);
        let (da, db, dw) = (on(&a, dev, DType::BF16)?, on(&b, dev, DType::BF16)?, w.to_device(dev)?);
        let Some((sum, normed)) = crate::add_rms_norm(&da, &db, &dw, 1e-6)? else {
            candle_core::bail!("add_rms_norm refused rows of {n}")
        };
        let two = residual_add(&da, &db)?;
        let bitwise = rel_diff(&sum, &two)? == 0.0 && rel_diff(&normed, &norm(&two, &dw)?)? == 0.0;
        let exact = (on(&a, &Device::Cpu, DType::F32)? + on(&b, &Device::Cpu, DType::F32)?)?;
        let err = rel_diff(&sum, &exact)?.max(rel_diff(&normed, &norm(&exact, &w.to_dtype(DType::F32)?)?)?);
        let kernel = if f32_weight { "add_rms_norm_f32w_bf16" } else { "add_rms_norm_bf16" };
        let tolerance = 1e-2;
        let pass = bitwise && err < tolerance;
        checks.push(Check::forward_only(kernel, vec![rows, n], err, tolerance, pass));
    }
    Ok(checks)
}

/// The q/k norm fused with the RoPE after it: against f32 on the CPU, and bit for bit against the norm
/// and RoPE kernels it replaces. Qwen3's heads of 128 at one token and at a batch (a bf16 weight, all
/// dimensions turned), Qwen3.5's of 256 with 64 turned (its f32 `1 + w`), heads of 64.
#[cfg(feature = "cuda")]
fn norm_rope_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (b, s, h, d, rot) in
        [(1, 1, 32, 128, 128), (2, 300, 8, 128, 128), (1, 1, 8, 256, 64), (3, 17, 5, 64, 64)]
    {
        let f32_weight = d == 256;
        let x = random(&[b, s, h, d], rng, 4.0)?;
        let w = norm_weight(d, f32_weight, rng)?;
        let angles = (random(&[1, 1, s, rot], rng, 1.0)? * 1e3)?;
        let run = |on: &Device, dtype: DType, fused: bool| -> candle_core::Result<Tensor> {
            let x = x.to_device(on)?.to_dtype(dtype)?;
            let w = if dtype == DType::F32 { w.to_dtype(DType::F32)? } else { w.clone() }.to_device(on)?;
            let table = |t: Tensor| t.to_dtype(DType::BF16)?.to_dtype(dtype)?.to_device(on);
            let (cos, sin) = (table(angles.cos()?)?, table(angles.sin()?)?);
            if fused {
                return crate::rms_norm_rope(&x, &w, 1e-6, &cos, &sin)?
                    .ok_or_else(|| candle_core::Error::Msg(format!("rms_norm_rope refused heads of {d}")));
            }
            rope_heads_first(&norm_by(&x, &w, f32_weight)?, &cos, &sin)
        };
        let fused = run(dev, DType::BF16, true)?;
        let bitwise = rel_diff(&fused, &run(dev, DType::BF16, false)?)? == 0.0;
        let err = rel_diff(&fused, &run(&Device::Cpu, DType::F32, false)?)?;
        let kernel = if f32_weight { "rms_norm_f32w_rope_bf16" } else { "rms_norm_rope_bf16" };
        checks.push(Check::forward_only(kernel, vec![b, s, h, d, rot], err, 1e-2, bitwise && err < 1e-2));
    }
    Ok(checks)
}

/// RoPE on the first `rot` dimensions only (Qwen3.5's full attention: 64 of 256), forward and
/// backward, against the elementary bf16 ops.
fn partial_rope_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (b, s, h, d, rot) in [(2, 5, 3, 16, 8), (8, 1024, 8, 256, 64), (1, 1, 16, 256, 64)] {
        let angles = (random(&[1, 1, s, rot], rng, 1.0)? * 1e3)?;
        let f = |x: &[Tensor]| {
            let table = |t: Tensor| t.to_dtype(DType::BF16)?.to_device(x[0].device());
            rope_heads_first(&x[0], &table(angles.cos()?)?, &table(angles.sin()?)?)
        };
        let (inputs, weights) = (vec![random(&[b, s, h, d], rng, 4.0)?], random(&[b, h, s, d], rng, 1.0)?);
        let shape = vec![b, s, h, d, rot];
        checks
            .push(check(Case::new("rope_bf16 (partial)", shape, &f, inputs, weights).same_rounding(), dev)?);
    }
    Ok(checks)
}

/// A Gated DeltaNet layer's raw inputs of the delta rule over `(b, s)` for `heads`, as the checks draw
/// them (on the CPU, f32): `conv`, `a` and `b` (bf16-representable), then `neg_a` (< 0) and `dt_bias`.
pub fn random_projections(
    b: usize,
    s: usize,
    heads: Heads,
    rng: &mut SplitMix64,
) -> candle_core::Result<[Tensor; 5]> {
    let (kd, vh) = (heads.key_heads * heads.key_dim, heads.value_heads);
    let conv = random(&[b, s, 2 * kd + vh * heads.value_dim], rng, 2.0)?;
    let (a, beta) = (random(&[b, s, vh], rng, 3.0)?, random(&[b, s, vh], rng, 3.0)?);
    let neg_a = (random(&[vh], rng, 1.0)?.exp()? * -1.0)?;
    Ok([conv, a, beta, neg_a, random(&[vh], rng, 1.0)?])
}

/// Qwen3.5's linear-attention kernels and the attention's output gate, forward only, against the CPU
/// in f32 on the same bf16-representable inputs: tiny shapes, qwen3.5-0.8b's (16 key and 16 value
/// heads of 128, 6144 convolution channels, 8 × 1024 tokens in the convolution) and 9b's (32 value
/// heads, 5 × 1024 tokens: two groups of sequences in the chunked form), and one-token decoding steps
/// from a state. The delta rule's reference is the CPU's chunked form in f32: decoding's f32 step agrees
/// to rounding order (1e-4), the chunked form's TF32 products within 2e-3.
fn hybrid_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (b, s, c, taps, with_state) in [(2, 5, 40, 4, true), (8, 1024, 6144, 4, false), (1, 1, 6144, 4, true)]
    {
        let (x, w) = (random(&[b, s, c], rng, 2.0)?, random(&[c, taps], rng, 0.5)?);
        let state = random(&[b, taps - 1, c], rng, 2.0)?;
        let f = |d: &Device, dtype: DType| {
            let on = |t: &Tensor| t.to_device(d)?.to_dtype(dtype);
            let state = if with_state { Some(on(&state)?) } else { None };
            let (out, tail) = causal_conv_silu(&on(&x)?, &on(&w)?, state.as_ref())?;
            Tensor::cat(&[out.flatten_all()?, tail.flatten_all()?], 0)
        };
        checks.push(forward_check("causal_conv_silu_bf16", vec![b, s, c, taps], &f, dev, 1e-2)?);
    }
    // (batch, tokens, key heads, value heads, key width, value width, from a state): value heads of 48
    // leave the walks' second block of 32 state columns partly empty.
    for (b, s, kh, vh, dk, dv, with_state) in [
        (2, 70, 2, 4, 32, 32, true),
        (2, 100, 2, 4, 64, 48, true),
        (2, 300, 16, 16, 128, 128, false),
        (5, 1024, 16, 32, 128, 128, true),
        (3, 1, 16, 16, 128, 128, true),
    ] {
        let heads = Heads { key_heads: kh, value_heads: vh, key_dim: dk, value_dim: dv };
        let [conv, a, beta, neg_a, dt_bias] = random_projections(b, s, heads, rng)?;
        let state = random(&[b, vh, dk, dv], rng, 0.5)?;
        let f = |d: &Device, dtype: DType| {
            let on = |t: &Tensor| t.to_device(d)?.to_dtype(dtype);
            let f32_on = |t: &Tensor| t.to_device(d);
            let (conv, a, beta, neg_a, dt_bias) =
                (on(&conv)?, on(&a)?, on(&beta)?, f32_on(&neg_a)?, f32_on(&dt_bias)?);
            let p = Projections { conv: &conv, a: &a, b: &beta, neg_a: &neg_a, dt_bias: &dt_bias };
            let state = if with_state { Some(f32_on(&state)?) } else { None };
            let (out, state) = gated_delta_rule::from_projections(&p, state.as_ref(), heads)?;
            Tensor::cat(&[out.flatten_all()?, state.flatten_all()?], 0)
        };
        // The chunked form's products are TF32 (chunked_device.rs says why), decoding's step f32.
        let (kernel, tolerance) =
            if s == 1 { ("gated_delta_rule_dk*", 1e-4) } else { ("gdn_chunk_* (forward)", 2e-3) };
        checks.push(forward_check(kernel, vec![b, s, kh, vh, dk, dv], &f, dev, tolerance)?);
    }
    checks.extend(delta_rule_backward_checks(dev, rng)?);
    for (rows, n) in [(3 * 5 * 4, 32), (8 * 1024 * 16, 128)] {
        let (o, z, w) =
            (random(&[rows, n], rng, 3.0)?, random(&[rows, n], rng, 3.0)?, random(&[n], rng, 2.0)?);
        let f = |d: &Device, dtype: DType| {
            gated_rms_norm(
                &o.to_device(d)?,
                &z.to_device(d)?.to_dtype(dtype)?,
                &w.to_device(d)?.to_dtype(dtype)?,
                1e-6,
            )
        };
        checks.push(forward_check("gated_rms_norm_bf16", vec![rows, n], &f, dev, 1e-2)?);
    }
    for (b, s, heads, d) in [(2, 5, 3, 8), (8, 1024, 8, 256)] {
        let (out, projected) =
            (random(&[b, s, heads * d], rng, 3.0)?, random(&[b, s, heads * 2 * d], rng, 4.0)?);
        let f = |dev: &Device, dtype: DType| {
            let on = |t: &Tensor| t.to_device(dev)?.to_dtype(dtype);
            sigmoid_gate(&on(&out)?, &on(&projected)?, d)
        };
        checks.push(forward_check("sigmoid_gate_bf16", vec![b, s, heads, d], &f, dev, 1e-2)?);
    }
    Ok(checks)
}

/// The delta rule's backward on CUDA (the chunked form's kernels and products, then the preparation's
/// backward kernel) against the host's token-by-token walk and candle's autograd through the
/// preparation in f32, on the same inputs: key heads of 32, 64 and 128, value heads sharing key heads
/// (one of them 48 wide), lengths that are not multiples of the chunk, and qwen3.5-9b's 32 value heads
/// over 3 × 1024 tokens (two groups of sequences: two, then one). Each case twice: recomputing the
/// forward's intermediates, and taking those a forward kept (`from_projections_keeping`, a
/// checkpointed layer's second pass), which runs in the forward's groups. The gradients are rounded
/// to bf16 (the raw inputs' dtype) at the end, hence 1e-2.
fn delta_rule_backward_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (b, s, kh, vh, dk, dv) in [
        (2, 70, 2, 4, 32, 32),
        (1, 100, 4, 8, 64, 48),
        (2, 300, 16, 16, 128, 128),
        (3, 1024, 16, 32, 128, 128),
    ] {
        let heads = Heads { key_heads: kh, value_heads: vh, key_dim: dk, value_dim: dv };
        let [conv, a, beta, neg_a, dt_bias] = random_projections(b, s, heads, rng)?;
        let d_out = random(&[b, s, vh, dv], rng, 1.0)?;
        let grads = |d: &Device, dtype: DType, keep: bool| {
            let on = |t: &Tensor| t.to_device(d)?.to_dtype(dtype);
            let (conv, a, beta) = (on(&conv)?, on(&a)?, on(&beta)?);
            let (neg_a, dt_bias) = (neg_a.to_device(d)?, dt_bias.to_device(d)?);
            let p = Projections { conv: &conv, a: &a, b: &beta, neg_a: &neg_a, dt_bias: &dt_bias };
            let kept =
                if keep { gated_delta_rule::from_projections_keeping(&p, heads)?.2 } else { Kept::default() };
            let grads = gated_delta_rule::backward_from_projections(&p, heads, &d_out.to_device(d)?, kept)?;
            let flat = grads.iter().map(|g| g.to_dtype(DType::F32)?.flatten_all());
            Tensor::cat(&flat.collect::<candle_core::Result<Vec<_>>>()?, 0)
        };
        let reference = grads(&Device::Cpu, DType::F32, false)?;
        for (kernel, keep) in
            [("gdn_chunk_* (backward)", false), ("gdn_chunk_* (backward, kept forward)", true)]
        {
            let backward_rel_err = rel_diff(&grads(dev, DType::BF16, keep)?, &reference)?;
            let tolerance = 1e-2;
            checks.push(Check {
                kernel,
                shape: vec![b, s, kh, vh, dk, dv],
                past: 0,
                forward_rel_err: 0.0,
                backward_rel_err: Some(backward_rel_err),
                tolerance,
                pass: backward_rel_err < tolerance,
            });
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks' own machinery on the CPU: a case whose "device" run (bf16) computes the reference's
    /// function passes; one whose device run is off by 10% in one input fails, forward and backward.
    #[test]
    fn a_faithful_case_passes_and_a_planted_error_fails() -> candle_core::Result<()> {
        let mut rng = SplitMix64::new(1);
        let inputs = vec![random(&[3, 5], &mut rng, 2.0)?, random(&[3, 5], &mut rng, 2.0)?];
        let weights = random(&[3, 5], &mut rng, 1.0)?;
        let case = |f| Case::new("swiglu_bf16", vec![3, 5], f, inputs.clone(), weights.clone());
        let faithful_f = |x: &[Tensor]| swiglu(&x[0], &x[1]);
        let planted_f = |x: &[Tensor]| {
            let up = if x[1].dtype() == DType::BF16 { (&x[1] * 1.1)? } else { x[1].clone() };
            swiglu(&x[0], &up)
        };
        let faithful = check(case(&faithful_f), &Device::Cpu)?;
        assert!(faithful.pass, "{faithful}");
        let caught = check(case(&planted_f), &Device::Cpu)?;
        let backward = caught.backward_rel_err.unwrap();
        assert!(!caught.pass && caught.forward_rel_err > 0.05 && backward > 0.05, "{caught}");
        Ok(())
    }

    /// The forward-only checks compare what they should: the CPU's bf16 run of the conv against its f32
    /// run passes at bf16's tolerance, and fails at f32's.
    #[test]
    fn a_forward_check_compares_bf16_with_f32() -> candle_core::Result<()> {
        let mut rng = SplitMix64::new(2);
        let (x, w) = (random(&[2, 9, 16], &mut rng, 2.0)?, random(&[16, 4], &mut rng, 0.5)?);
        let f = |d: &Device, dtype: DType| {
            Ok(causal_conv_silu(&x.to_device(d)?.to_dtype(dtype)?, &w.to_device(d)?.to_dtype(dtype)?, None)?
                .0)
        };
        assert!(forward_check("causal_conv_silu_bf16", vec![2, 9, 16], &f, &Device::Cpu, 1e-2)?.pass);
        assert!(!forward_check("causal_conv_silu_bf16", vec![2, 9, 16], &f, &Device::Cpu, 1e-6)?.pass);
        Ok(())
    }
}
