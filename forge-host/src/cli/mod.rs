//! The command line (see CLI.md for the contract). Parsing only validates; each command module then
//! resolves files and devices and does its work, returning a JSON-able report.
mod eval;
mod generate;
mod inspect;
mod kernels;
mod list;
mod merge;
mod prune;
mod run;
mod score;
mod train;
mod worker;

use std::path::PathBuf;

use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use forge_kernels::profile::section;

use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::runtime::{parse_device, resolve_dtype, DeviceChoice};
use crate::strategies::Registry;
use crate::{bad_input, Error, Result};

/// forge — measure which attention heads matter for a domain, remove the rest, and evaluate what is left.
#[derive(Parser, Debug)]
#[command(name = "forge", version, max_term_width = 110)]
#[command(after_help = "Examples:\n  \
    forge inspect --model examples/tiny-qwen3\n  \
    forge eval --model examples/tiny-qwen3 --data examples/data/code-valid.jsonl --max-windows 8\n  \
    forge generate --model examples/tiny-qwen3 --prompt 'fn main() {' --max-new-tokens 32")]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug)]
struct GlobalArgs {
    /// Where to run: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, global = true, default_value = "cpu")]
    device: DeviceChoice,
    /// Weights and activations dtype: f32, bf16 or f16 [default: f32 on cpu, bf16 on cuda].
    #[arg(long, global = true, value_parser = ["f32", "bf16", "f16"])]
    dtype: Option<String>,
    /// Seed of everything random (sampling, scores, initialisation, data order), so runs repeat exactly [default: 0, or the recipe's].
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// Refuse work estimated to need more memory than this (e.g. 12GiB), before allocating it;
    /// enforced by `forge run` [default on CUDA: the device's free memory] and `forge eval` (which
    /// also prints its estimate as `predicted_peak_bytes`).
    #[arg(long, global = true, value_name = "SIZE")]
    memory_budget: Option<String>,
    /// Load strategies from a plugin library (repeatable); libraries in the folders of
    /// FORGE_PLUGIN_PATH are loaded too. Their strategies are chosen by name like built-ins (docs/plugins.md).
    #[arg(long = "plugin", global = true, value_name = "PATH")]
    plugins: Vec<PathBuf>,
    /// No progress bars or logs on stderr; errors are still printed.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Describe a model folder: architecture, geometry, parameters and dtype (reads headers only).
    Inspect(inspect::InspectArgs),
    /// Perplexity of a model on a data file, under forge's windowed protocol.
    Eval(eval::EvalArgs),
    /// Continue a prompt, greedily or by sampling.
    Generate(generate::GenerateArgs),
    /// List every strategy (scorers, pruners, adapters, optimizers, evaluators) with its options.
    List(list::ListArgs),
    /// Score every attention head's importance with a named scorer; write JSON and a heat map.
    Score(score::ScoreArgs),
    /// Remove the least important heads with a named pruner and write the smaller model.
    Prune(prune::PruneArgs),
    /// Train adapters (LoRA) on data, optionally on a pruned (--mask) model, and save them in PEFT's layout.
    Train(train::TrainArgs),
    /// Fold an adapter into the base weights and write a plain checkpoint.
    Merge(merge::MergeArgs),
    /// Check forge's GPU kernels against their CPU references on random inputs (needs --device cuda).
    Kernels(kernels::KernelsArgs),
    /// Run a whole recipe: baseline, cycles of score → prune → train → evaluate → merge, final model, report.
    Run(run::RunArgs),
    /// Be a long-lived worker on a Unix socket: queue, run, report and cancel jobs sent as JSON lines (docs/worker.md).
    Serve(worker::ServeArgs),
    /// Send a recipe to a running `forge serve` as a `model/forge` job, and optionally follow it.
    Submit(worker::SubmitArgs),
    /// List the jobs of a running `forge serve`.
    Jobs(worker::JobsArgs),
    /// Cancel a job of a running `forge serve` (a running one stops at its next safe point, resumable).
    Cancel(worker::CancelArgs),
}

/// Options naming a model and how to alter it before use.
#[derive(Args, Debug)]
struct ModelArgs {
    /// Model folder in Hugging Face layout: config.json, model.safetensors (or sharded with
    /// model.safetensors.index.json) and tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Mask file of units to remove, as `forge prune` writes it: `{"pruned": {"<layer>": [<query head>,
    /// ...]}}`, and optionally `pruned_linear_heads` (Gated DeltaNet value heads, same shape),
    /// `pruned_mlp_channels` (same shape) and `pruned_layers` (`[<layer>, ...]`).
    #[arg(long)]
    mask: Option<PathBuf>,
}

/// An adapter to apply before evaluating or generating.
#[derive(Args, Debug)]
struct AdapterDir {
    /// Adapter folder to apply (PEFT layout: adapter_config.json, adapter_model.safetensors), as `forge train` writes.
    #[arg(long = "adapter")]
    dir: Option<PathBuf>,
}

impl AdapterDir {
    fn apply(&self, model: &mut CausalLm, registry: &Registry) -> Result<()> {
        if let Some(dir) = &self.dir {
            crate::strategies::adapters::load_adapter(dir, model, registry)?;
        }
        Ok(())
    }
}

/// The device and dtype after resolution.
struct Runtime {
    device: Device,
    dtype: DType,
    seed: u64,
    /// The seed when given on the command line (it then overrides a recipe's).
    seed_given: Option<u64>,
    memory_budget: Option<u64>,
    quiet: bool,
}

impl GlobalArgs {
    fn resolve(&self) -> Result<Runtime> {
        // Start-up's share of a small model's load to first token (sections on the CPU device
        // synchronise nothing): CUDA's driver start and context, 0.18-0.20 s on an H200 (call T).
        let device = section("start: open the device", &Device::Cpu, || Ok(parse_device(self.device)))??;
        let dtype = resolve_dtype(self.dtype.as_deref(), &device)?;
        let memory_budget = match &self.memory_budget {
            Some(text) => Some(crate::pipeline::parse_size(text).ok_or_else(|| {
                bad_input!("--memory-budget `{text}` is not a size; write e.g. 12GiB, 512MiB or 2GB")
            })?),
            None => None,
        };
        Ok(Runtime {
            device,
            dtype,
            seed: self.seed.unwrap_or(0),
            seed_given: self.seed,
            memory_budget,
            quiet: self.quiet,
        })
    }
}

impl ModelArgs {
    /// Opens the folder and checks the positions asked for against the context, before anything
    /// loads.
    pub(super) fn open(&self, positions: &[(usize, &str)]) -> Result<ModelFolder> {
        let folder = section("load: open the folder", &Device::Cpu, || Ok(ModelFolder::open(&self.model)))??;
        for &(tokens, flag) in positions {
            folder.config.check_context(tokens, flag)?;
        }
        Ok(folder)
    }

    /// Builds the decoder of an opened folder and applies the mask, if any.
    pub(super) fn build(&self, folder: &ModelFolder, rt: &Runtime) -> Result<CausalLm> {
        let started = std::time::Instant::now();
        let mut model = section("load: weights to the device", &rt.device, || {
            Ok(CausalLm::load(folder, rt.dtype, &rt.device))
        })??;
        if let Some(path) = &self.mask {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let mask =
                forge_api::HeadMask::from_json(&text).map_err(|e| bad_input!("{}: {e}", path.display()))?;
            model.apply_head_mask(&mask).map_err(|e| bad_input!("{}: {e}", path.display()))?;
        }
        tracing::info!(
            "loaded {} ({}) in {:.2}s on {:?} as {:?}",
            self.model.display(),
            folder.config.class_name,
            started.elapsed().as_secs_f64(),
            rt.device.location(),
            rt.dtype
        );
        Ok(model)
    }
}

/// Prints a report: the JSON object with `--json`, else its human summary.
fn emit<T: serde::Serialize>(report: &T, json: bool, human: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string(report).expect("reports are plain data"));
    } else {
        println!("{}", human(report));
    }
}

/// Parses the command line, runs the command, prints any error, and returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let filter = if cli.global.quiet { "error" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FORGE_LOG").unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    crate::runtime::interrupt::install();
    forge_kernels::profile::set_memory_probe(crate::runtime::pool_usage);
    let result = run(cli);
    if let Some(profile) = forge_kernels::profile::report() {
        eprintln!("{profile}");
    }
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("forge: {err}");
            if let Some(hint) = err.hint() {
                eprintln!("forge: {hint}");
            }
            err.exit_code()
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let registry =
        Registry::builtin()?.with_plugins(&crate::strategies::plugin_paths(&cli.global.plugins)?)?;
    let rt = cli.global.resolve()?;
    if rt.memory_budget.is_some()
        && !matches!(cli.command, Command::Run(_) | Command::Eval(_) | Command::Serve(_))
    {
        return Err(bad_input!(
            "--memory-budget is enforced by `forge run`, `forge eval` and `forge serve` only so far; drop it here"
        ));
    }
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Eval(args) => eval::run(args, &rt, &registry),
        Command::Generate(args) => generate::run(args, &rt, &registry),
        Command::List(args) => list::run(args, &registry),
        Command::Score(args) => score::run(args, &rt, &registry),
        Command::Prune(args) => prune::run(args, &rt, &registry),
        Command::Train(args) => train::run(args, &rt, &registry),
        Command::Merge(args) => merge::run(args, &registry),
        Command::Kernels(args) => kernels::run(args, &rt),
        Command::Run(args) => run::run(args, &rt, &registry),
        Command::Serve(args) => worker::run_serve(args, &cli.global, &rt, registry),
        Command::Submit(args) => worker::run_submit(args, rt.quiet),
        Command::Jobs(args) => worker::run_jobs(args),
        Command::Cancel(args) => worker::run_cancel(args),
    }
}
