//! Perplexity under forge's protocol: each window scores its `seq_len - 1` next-token predictions,
//! and perplexity is `exp` of the mean NLL over all of them. NLLs are summed in f64 on the host so the
//! result does not depend on the batch size.
use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use crate::data::TokenWindows;
use crate::model::CausalLm;
use crate::progress;
use crate::runtime::PeakMemory;
use crate::Result;

/// What `forge eval` reports (the CLI contract's keys).
#[derive(Clone, Debug, Serialize)]
pub struct PerplexityReport {
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Mean next-token NLL in nats.
    pub mean_nll: f64,
    /// Predicted (scored) tokens: `windows × (seq_len - 1)`.
    pub tokens: usize,
    /// Windows scored.
    pub windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Wall time of the forward passes.
    pub seconds: f64,
    /// Tokens fed through the model per second (`windows × seq_len / seconds`).
    pub tokens_per_s: f64,
    /// Peak memory of the evaluation (see [`PeakMemory`]).
    pub peak_memory_bytes: u64,
}

/// The next-token NLL of each row of `ids` `(rows, seq)`: `seq − 1` values a row. The one evaluation
/// path: `forge eval`, `forge train --eval-data` and the `perplexity` evaluator of `forge run` (through
/// [`ModelEvalContext`](crate::strategies::evaluators::ModelEvalContext)) all score windows here, in
/// batches, so their numbers agree to the last digit.
///
/// It runs without a graph ([`no_grad`](crate::autograd::no_grad)): an adapter's parameters are read
/// detached, so an evaluation keeps no activations and takes the same fused kernels as the base model.
pub fn rows_nll(model: &CausalLm, ids: &Tensor) -> Result<Vec<Vec<f32>>> {
    let nll = crate::autograd::no_grad(|| model.next_token_nll(ids))?;
    Ok(nll.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

/// Scores every window of `windows`, `batch_size` at a time. `warmup` extra passes over the first
/// batch run before the clock starts (on a GPU the first passes pay for kernel loading and library
/// set-up); they do not change the result.
pub fn perplexity(
    model: &CausalLm,
    windows: &TokenWindows,
    batch_size: usize,
    warmup: usize,
    quiet: bool,
) -> Result<PerplexityReport> {
    let (count, seq_len) = (windows.len(), windows.seq_len());
    let batch_size = batch_size.max(1);
    let memory = PeakMemory::start(model.device());
    let batch = |start: usize| -> Result<Tensor> {
        let rows = batch_size.min(count - start);
        Ok(Tensor::from_slice(windows.batch(start, rows), (rows, seq_len), model.device())?)
    };
    for _ in 0..warmup {
        rows_nll(model, &batch(0)?)?;
    }
    if warmup > 0 {
        // FORGE_PROFILE then times the measured passes alone.
        forge_kernels::profile::reset();
    }
    let bar = progress::bar(count as u64, "windows", quiet);
    bar.set_message("evaluating");
    let started = Instant::now();
    let mut nll_sum = 0f64;
    for start in (0..count).step_by(batch_size) {
        crate::runtime::interrupt::check()?;
        let ids = batch(start)?;
        nll_sum += rows_nll(model, &ids)?.iter().flatten().map(|&v| v as f64).sum::<f64>();
        bar.inc(ids.dim(0)? as u64);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let tokens = count * (seq_len - 1);
    let mean_nll = nll_sum / tokens as f64;
    Ok(PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        tokens,
        windows: count,
        seq_len,
        seconds,
        tokens_per_s: (count * seq_len) as f64 / seconds,
        peak_memory_bytes: memory.peak_bytes(),
    })
}
