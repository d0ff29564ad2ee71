//! forge-kernels' checks of the composite ops built here on the fused kernels: attention (the softmax
//! kernels and their backward, through the recomputing backward), the chunked NLL (the row NLL kernels
//! and the lm_head products), the delta rule (its kernels, joined to autograd) and the output gate, on
//! a device against the CPU.
use candle_core::{Device, Tensor};
use forge_kernels::checks::{check, random, random_projections, Case, Check};
use forge_kernels::SplitMix64;

use forge_kernels::gated_delta_rule::{Heads, Projections};

use super::{
    causal_attention, causal_conv_silu, chunked_nll, gated_delta_rule, gated_rms_norm, sigmoid_gate,
};

/// Both composite checks on `dev`, from small shapes to qwen2.5-0.5b's attention and a 151,936-token
/// vocabulary.
pub fn all(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    // bf16 operands of every matmul, as the peer's SDPA kernels have them. Head sizes 64, 128 and 256
    // take the flash kernel's forward on CUDA, 64 and 128 its backward too: partial query and key tiles,
    // cached keys before the queries, one decoded token, KV heads shared by 7, 4 and 2 query heads (dk
    // and dv summed over several blocks, or in one where there are enough blocks: the fifth shape); 16 takes the score matrix.
    let shapes = [
        ((2, 4, 2, 7, 16), 3),
        ((2, 14, 2, 1024, 64), 0),
        ((1, 8, 2, 300, 128), 45),
        ((1, 16, 8, 1, 128), 200),
        ((16, 32, 16, 256, 128), 0),
        ((2, 8, 2, 130, 256), 3),
    ];
    for ((b, heads, kv, seq, d), past) in shapes {
        let inputs = vec![
            random(&[b, heads, seq, d], rng, 2.0)?,
            random(&[b, kv, past + seq, d], rng, 2.0)?,
            random(&[b, kv, past + seq, d], rng, 1.0)?,
        ];
        let weights = random(&[b, seq, heads * d], rng, 1.0)?;
        let f = |x: &[Tensor]| Ok(causal_attention(&x[0], &x[1], &x[2], past, false)?.0);
        let shape = vec![b, heads, kv, seq, d];
        let kernel = match (forge_kernels::takes_head_dim(d), forge_kernels::backward_takes_head_dim(d)) {
            (true, true) => "flash_attention_bf16 + flash backward",
            (true, false) => "flash_attention_bf16 + recomputing backward",
            _ => "causal_attention",
        };
        let case = Case::new(kernel, shape, &f, inputs, weights).past(past).tolerance(2e-2);
        checks.push(check(case, dev)?);
    }
    checks.extend(delta_rule_checks(dev, rng)?);
    // The output gate at a tiny shape and at qwen3.5-0.8b's attention (8 heads of 256, 8 × 1024).
    for (b, s, heads, d) in [(2, 5, 3, 8), (8, 1024, 8, 256)] {
        let inputs = vec![random(&[b, s, heads * d], rng, 3.0)?, random(&[b, s, heads * 2 * d], rng, 4.0)?];
        let weights = random(&[b, s, heads * d], rng, 1.0)?;
        let f = |x: &[Tensor]| sigmoid_gate(&x[0], &x[1], d);
        let case = Case::new("sigmoid_gate_backward_bf16", vec![b, s, heads, d], &f, inputs, weights);
        checks.push(check(case, dev)?);
    }
    for (rows, hidden, vocab) in [(37, 64, 5003), (600, 128, 151936)] {
        let inputs = vec![random(&[rows, hidden], rng, 1.0)?];
        let lm_head = random(&[vocab, hidden], rng, 0.5)?;
        let targets: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
        let targets = Tensor::from_vec(targets, rows, &Device::Cpu)?;
        let weights = random(&[rows], rng, 1.0)?;
        let f = |x: &[Tensor]| {
            let lm_head = lm_head.to_device(x[0].device())?.to_dtype(x[0].dtype())?;
            chunked_nll(&x[0], &lm_head, &targets.to_device(x[0].device())?)
        };
        let shape = vec![rows, hidden, vocab];
        let case = Case::new("row_nll_bf16 (chunked NLL)", shape, &f, inputs, weights);
        checks.push(check(case, dev)?);
    }
    Ok(checks)
}

/// Gated DeltaNet's layer ops as training runs them, the forward kernels joined to their backward
/// kernels, against candle's autograd through the elementary ops (and the host walk for the delta
/// rule) in f32 on the CPU: the causal convolution at qwen3.5-0.8b's 6144 channels, the gated norm at
/// its 16 heads of 128, and the delta rule, from tiny heads to 0.8b's.
fn delta_rule_checks(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (b, s, c, taps) in [(2, 9, 40, 4), (2, 512, 6144, 4)] {
        let weight = random(&[c, taps], rng, 0.5)?;
        let f = |x: &[Tensor]| {
            Ok(causal_conv_silu(&x[0], &weight.to_device(x[0].device())?.to_dtype(x[0].dtype())?, None)?.0)
        };
        let (inputs, weights) = (vec![random(&[b, s, c], rng, 2.0)?], random(&[b, s, c], rng, 1.0)?);
        checks.push(check(
            Case::new("causal_conv_silu_backward_bf16", vec![b, s, c, taps], &f, inputs, weights),
            dev,
        )?);
    }
    for (rows, n) in [(3 * 5 * 4, 32), (2 * 512 * 16, 128)] {
        let w = random(&[n], rng, 2.0)?;
        let f = |x: &[Tensor]| {
            let w = w.to_device(x[0].device())?.to_dtype(x[1].dtype())?;
            gated_rms_norm(&x[0].to_dtype(candle_core::DType::F32)?, &x[1], &w, 1e-6)
        };
        let inputs = vec![random(&[rows, n], rng, 3.0)?, random(&[rows, n], rng, 3.0)?];
        let weights = random(&[rows, n], rng, 1.0)?;
        checks
            .push(check(Case::new("gated_rms_norm_backward_bf16", vec![rows, n], &f, inputs, weights), dev)?);
    }
    for (b, s, kh, vh, dk) in [(2, 70, 2, 4, 32), (1, 300, 16, 16, 128)] {
        let heads = Heads { key_heads: kh, value_heads: vh, key_dim: dk, value_dim: dk };
        let [conv, a, beta, neg_a, dt_bias] = random_projections(b, s, heads, rng)?;
        let inputs = vec![conv, a, beta];
        let weights = random(&[b, s, vh, dk], rng, 1.0)?;
        let f = |x: &[Tensor]| {
            let (neg_a, dt_bias) = (neg_a.to_device(x[0].device())?, dt_bias.to_device(x[0].device())?);
            let p = Projections { conv: &x[0], a: &x[1], b: &x[2], neg_a: &neg_a, dt_bias: &dt_bias };
            Ok(gated_delta_rule(&p, None, heads)?.0)
        };
        let case = Case::new("gated delta rule (autograd)", vec![b, s, kh, vh, dk], &f, inputs, weights);
        checks.push(check(case, dev)?);
    }
    Ok(checks)
}
