//! `forge run`: a whole recipe (see [`crate::pipeline`]).
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::Runtime;
use crate::pipeline::{kept_in, run as run_recipe, Recipe, RunOptions};
use crate::runtime::DeviceChoice;
use crate::strategies::Registry;
use crate::training::{gpu_ranks, launch, Communicator, LocalGroup, RankOuts, RankSpec};
use crate::{Error, Result};

/// What names a recipe job: `forge run`'s and `forge submit`'s shared flags.
#[derive(Args, Debug)]
pub struct RecipeArgs {
    /// The recipe (TOML): model, data, and each step's strategy and options (see examples/*.toml).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Output folder: model/, cycles/, report.json, report.md, SVG pictures, recipe.executed.toml.
    #[arg(long)]
    pub out: PathBuf,
    /// Override a recipe key, KEY.PATH=VALUE in TOML syntax (repeatable), e.g. --set train.steps=50.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue an interrupted (or cancelled) run in --out from its last finished cycle.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    job: RecipeArgs,
    /// Data-parallel training over these devices, comma-separated: every rank runs the recipe and the
    /// training steps all-reduce, so the result equals one device's. GPUs (cuda:0,cuda:1) run one
    /// forge process each over NCCL; `cpu,cpu` runs CPU ranks in this process (docs/distributed.md).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<DeviceChoice>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

pub fn run(args: RunArgs, rt: &Runtime, registry: &Registry) -> Result<()> {
    let mut overrides = args.job.overrides.clone();
    if let Some(seed) = rt.seed_given {
        overrides.push(format!("seed={seed}"));
    }
    let recipe = Recipe::load(&args.job.recipe, &overrides)?;
    let rank = RankSpec::from_env()?;
    if rank.is_none() && gpu_ranks(&args.devices) {
        return launch(&args.devices, Some((&args.job.out, args.job.resume)))
            .map_err(|e| resumable(e, &args.job.out));
    }
    // A rank after the first runs quietly: rank 0 alone shows progress and reports.
    let options = |out: &Path, secondary: bool, comm: Option<Box<dyn Communicator>>| RunOptions {
        out: out.to_path_buf(),
        resume: args.job.resume,
        budget: rt.memory_budget,
        device: rt.device.clone(),
        dtype: rt.dtype,
        quiet: rt.quiet || secondary,
        comm,
    };
    let report = if !args.devices.is_empty() && rank.is_none() {
        let outs = RankOuts::prepare(&args.job.out, args.job.resume, args.devices.len())?;
        LocalGroup::run(args.devices.len(), |r| {
            if r.rank() > 0 {
                crate::events::mute_this_thread();
            }
            run_recipe(
                &recipe,
                registry,
                &options(outs.of(r.rank()), r.rank() > 0, Some(Box::new(r.clone()))),
            )
        })
        .map_err(|e| resumable(e, &args.job.out))?
    } else {
        let comm = rank.as_ref().map(|r| r.join(&rt.device)).transpose()?;
        let secondary = rank.as_ref().is_some_and(|r| r.rank > 0);
        let report = run_recipe(&recipe, registry, &options(&args.job.out, secondary, comm))?;
        if secondary {
            return Ok(());
        }
        report
    };
    let summary = json!({
        "baseline": report.baseline,
        "cycles": report.cycles.iter().map(|c| json!({
            "cycle": c.cycle, "heads_left": c.heads_left, "accepted": c.accepted, "pruned": c.pruned, "trained": c.trained,
            "loss_first": c.train["loss_first"], "loss_last": c.train["loss_last"],
        })).collect::<Vec<_>>(),
        "final": report.final_metrics,
        "outputs": report.outputs,
        "heads_before": report.heads_before,
        "heads_after": report.heads_after,
        "parameters_before": report.base_parameters,
        "parameters_after": report.final_parameters,
        "peak_memory_bytes": report.peak_memory_bytes,
        "out": args.job.out,
    });
    super::emit(&summary, args.json, |_| {
        let metric = &report.guard_metric;
        let get = |m: &forge_api::Metrics| m.get(metric).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        format!(
            "{} → {} heads, {} → {} parameters; {metric} {:.4} → {:.4}; report in {}",
            report.heads_before,
            report.heads_after,
            report.base_parameters,
            report.final_parameters,
            get(&report.baseline),
            get(&report.final_metrics),
            args.job.out.join("report.md").display()
        )
    });
    Ok(())
}

/// A data-parallel run that ended early keeps its finished cycles in `out`, as a one-device run does.
fn resumable(e: Error, out: &Path) -> Error {
    match e {
        Error::Strategy(m) => Error::Strategy(m + &kept_in(out)),
        Error::Interrupted(_) => Error::Interrupted(kept_in(out)),
        other => other,
    }
}
