//! forge-kernels' checks of the two composite ops built here on the fused kernels: attention (the
//! softmax kernels and their backward, through the recomputing backward) and the chunked NLL (the row
//! NLL kernels and the lm_head products), on a device against the CPU.
use candle_core::{Device, Tensor};
use forge_kernels::checks::{check, random, Case, Check};
use forge_kernels::SplitMix64;

use super::{causal_attention, chunked_nll};

/// Both composite checks on `dev`, from small shapes to qwen2.5-0.5b's attention and a 151,936-token
/// vocabulary.
pub fn all(dev: &Device, rng: &mut SplitMix64) -> candle_core::Result<Vec<Check>> {
    let mut checks = Vec::new();
    // bf16 operands of every matmul, as the peer's SDPA kernels have them.
    for ((b, heads, kv, seq, d), past) in [((2, 4, 2, 7, 16), 3), ((2, 14, 2, 1024, 64), 0)] {
        let inputs = vec![
            random(&[b, heads, seq, d], rng, 2.0)?,
            random(&[b, kv, past + seq, d], rng, 2.0)?,
            random(&[b, kv, past + seq, d], rng, 1.0)?,
        ];
        let weights = random(&[b, seq, heads * d], rng, 1.0)?;
        let f = |x: &[Tensor]| Ok(causal_attention(&x[0], &x[1], &x[2], past)?.0);
        let shape = vec![b, heads, kv, seq, d];
        let case = Case::new("causal_attention", shape, &f, inputs, weights).past(past).tolerance(2e-2);
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
