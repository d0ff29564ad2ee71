//! `forge generate`: continue a prompt.
use clap::Args;
use serde::Serialize;

use super::{ModelArgs, Runtime};
use crate::generate::{generate, SamplingConfig};
use crate::strategies::Registry;
use crate::Result;
use forge_kernels::profile::section;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: super::AdapterDir,
    /// The text to continue (encoded without special tokens).
    #[arg(long)]
    prompt: String,
    /// At most this many new tokens; generation also stops at end-of-text.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 picks the most likely token each step (greedy); higher values sample more freely.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample only from the most likely tokens that together hold this much probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Keep generating past end-of-text, to exactly --max-new-tokens (for timing).
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct GenerateReport {
    prompt_ids: Vec<u32>,
    token_ids: Vec<u32>,
    text: String,
    seconds: f64,
    new_tokens_per_s: f64,
    /// Peak memory of the generation, weights included (see `runtime::PeakMemory`).
    peak_memory_bytes: u64,
}

pub fn run(args: GenerateArgs, rt: &Runtime, registry: &Registry) -> Result<()> {
    let folder = args.model.open(&[])?;
    let tokenizer = section("load: tokenizer", &candle_core::Device::Cpu, || Ok(folder.tokenizer()))??;
    let prompt_ids = tokenizer.encode(&args.prompt)?;
    let what =
        format!("the prompt ({} tokens) and --max-new-tokens {}", prompt_ids.len(), args.max_new_tokens);
    folder.config.check_context(prompt_ids.len() + args.max_new_tokens, &what)?;
    let mut model = args.model.build(&folder, rt)?;
    args.adapter.apply(&mut model, registry)?;
    let config = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: rt.seed,
        stop_token: (!args.ignore_eos).then(|| tokenizer.eos_id()),
    };
    let memory = crate::runtime::PeakMemory::start(&rt.device);
    let started = std::time::Instant::now();
    let token_ids = generate(&model, &prompt_ids, &config)?;
    let seconds = started.elapsed().as_secs_f64();
    let report = GenerateReport {
        text: tokenizer.decode(&token_ids)?,
        new_tokens_per_s: token_ids.len() as f64 / seconds,
        prompt_ids,
        token_ids,
        seconds,
        peak_memory_bytes: memory.peak_bytes(),
    };
    super::emit(&report, args.json, |r| format!("{}{}", args.prompt, r.text));
    Ok(())
}
