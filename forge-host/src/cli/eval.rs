//! `forge eval`: perplexity on a data file (see [`crate::eval::perplexity`] for the protocol).
use std::path::PathBuf;

use clap::Args;
use forge_api::EvalInput;

use crate::defaults;

use super::{ModelArgs, Runtime};
use crate::data::{Documents, TokenWindows};
use crate::strategies::evaluators::ModelEvalContext;
use crate::strategies::Registry;
use crate::{bad_input, Result};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: super::AdapterDir,
    /// Data: `.jsonl` with one `{"text": ...}` a line, or any other file as one plain-text document.
    #[arg(long)]
    data: PathBuf,
    /// Tokens per window; each window scores its seq_len - 1 next-token predictions.
    #[arg(long, default_value_t = defaults::EVAL_SEQ_LEN)]
    seq_len: usize,
    /// Score only the first N windows [default: all].
    #[arg(long)]
    max_windows: Option<usize>,
    /// Windows per forward pass: more is faster until memory runs out.
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    batch_size: usize,
    /// Untimed passes over the first batch before measuring speed (GPU warm-up); results are unchanged.
    #[arg(long, default_value_t = 0)]
    warmup_batches: usize,
    /// Evaluator (`forge list` shows them): perplexity (the protocol below, with speed and memory), or
    /// another by name on the same --data, e.g. `choice` (multiple choice, JSONL {context, choices,
    /// answer}).
    #[arg(long, default_value = "perplexity")]
    evaluator: String,
    /// An option of the evaluator, KEY=VALUE (repeatable).
    #[arg(long = "evaluator-opt", value_name = "KEY=VALUE")]
    evaluator_opts: Vec<String>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs, rt: &Runtime, registry: &Registry) -> Result<()> {
    if args.batch_size == 0 {
        return Err(bad_input!("--batch-size is 0; give at least 1"));
    }
    if args.max_windows == Some(0) {
        return Err(bad_input!("--max-windows is 0; give at least 1, or leave it out to score all windows"));
    }
    if args.seq_len < 2 {
        return Err(bad_input!("--seq-len is {}; a window needs at least 2 tokens", args.seq_len));
    }
    let folder = args.model.open(&[(args.seq_len, "--seq-len")])?;
    let predicted = crate::pipeline::eval_estimate(
        &folder.config,
        folder.loaded_parameter_count(),
        (rt.dtype, &rt.device),
        (args.batch_size.min(args.max_windows.unwrap_or(usize::MAX)), args.seq_len),
    );
    crate::pipeline::check_budget(std::slice::from_ref(&predicted), rt.memory_budget)?;
    let tokenizer = folder.tokenizer()?;
    let build = || -> Result<crate::model::CausalLm> {
        let mut model = args.model.build(&folder, rt)?;
        args.adapter.apply(&mut model, registry)?;
        Ok(model)
    };
    if args.evaluator != "perplexity" {
        return run_evaluator(&args, build, &tokenizer, registry);
    }
    let windows = windows(&args, &tokenizer)?;
    let model = build()?;
    let report = crate::eval::perplexity(&model, &windows, args.batch_size, args.warmup_batches, rt.quiet)?;
    let report = EvalOutput { report, predicted_peak_bytes: predicted.total() };
    super::emit(&report, args.json, |out| {
        let r = &out.report;
        format!(
            "perplexity {:.4} (mean NLL {:.4} over {} tokens in {} windows of {}) · {:.1}s, {:.0} tokens/s, peak {:.0} MiB (estimated {:.0} MiB)",
            r.perplexity,
            r.mean_nll,
            r.tokens,
            r.windows,
            r.seq_len,
            r.seconds,
            r.tokens_per_s,
            r.peak_memory_bytes as f64 / (1 << 20) as f64,
            out.predicted_peak_bytes as f64 / (1 << 20) as f64
        )
    });
    Ok(())
}

/// The windows of `--data` that eval measures, cut before the model loads so a bad file costs nothing.
fn windows(args: &EvalArgs, tokenizer: &crate::tokenizer::Tokenizer) -> Result<TokenWindows> {
    TokenWindows::from_documents(Documents::open(&args.data)?, tokenizer, args.seq_len, args.max_windows)
}

/// `forge eval --evaluator NAME`: the evaluator's metrics on `--data`, read as the evaluator says
/// (windows of text, or JSONL records). The evaluator, its options and its data are checked before
/// `build` loads the model.
fn run_evaluator(
    args: &EvalArgs,
    build: impl FnOnce() -> Result<crate::model::CausalLm>,
    tokenizer: &crate::tokenizer::Tokenizer,
    registry: &Registry,
) -> Result<()> {
    let (evaluator, _) =
        registry.evaluator(&args.evaluator, &forge_api::Options::parse_pairs(&args.evaluator_opts)?)?;
    let windows = match evaluator.input() {
        EvalInput::Windows => Some(windows(args, tokenizer)?),
        EvalInput::Records if args.max_windows.is_some() || args.warmup_batches > 0 => {
            return Err(bad_input!(
                "--max-windows and --warmup-batches cut and time text windows, but the `{}` evaluator reads \
                 whole records from --data; leave them out (to score fewer records, give a shorter file: \
                 `head -n N {}`)",
                args.evaluator,
                args.data.display()
            ))
        }
        EvalInput::Records => None,
    };
    let model = build()?;
    let mut ctx = ModelEvalContext::new(&model, tokenizer, windows.as_ref()).with_records(Some(&args.data));
    let metrics = evaluator.evaluate(&mut ctx)?;
    super::emit(&metrics, args.json, |m| {
        m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(" · ")
    });
    Ok(())
}

/// What `forge eval` prints: the evaluation, and the peak the memory budget's estimate predicted for
/// it (what `--memory-budget` is checked against before anything loads).
#[derive(serde::Serialize)]
struct EvalOutput {
    #[serde(flatten)]
    report: crate::eval::PerplexityReport,
    predicted_peak_bytes: u64,
}
