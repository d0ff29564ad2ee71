//! Executing a recipe: check everything (recipe, model, budget, output folder) before the first file
//! is written, evaluate the baseline, run the cycles (see [`super::cycle`]) until one is rolled back,
//! then write the final model and the report. Every metric is taken on a model reloaded from what was
//! written. An interrupt stops at the next safe point with the command that resumes.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use forge_api::{HeadMask, Metrics};

use super::budget::{estimate, human, Estimate};
use super::context::{PeakLog, RunContext, RunOptions};
use super::cycle::{run_cycle, CycleStart};
use super::recipe::Recipe;
use super::record::{CycleRecord, RunReport};
use super::report::write_report;
use crate::loader::ModelFolder;
use crate::outputs::{check_out, remove_leftovers, save_pruned, write_atomic, write_json_atomic};
use crate::strategies::Registry;
use crate::{bad_input, Error, Result};

/// Runs `recipe` and writes every output into `opts.out`.
pub fn run(recipe: &Recipe, registry: &Registry, opts: &RunOptions) -> Result<RunReport> {
    let (base, estimates) = open_and_estimate(recipe, registry, (opts.dtype, &opts.device))?;
    let budget = opts.budget.or_else(|| {
        if opts.device.is_cpu() {
            None
        } else {
            crate::runtime::free_device_memory(&opts.device)
        }
    });
    check_budget(&estimates, budget)?;
    prepare_out(recipe, opts)?;
    let started = Instant::now();
    let ctx = RunContext::new(recipe, registry, opts, &base)?;
    let result = run_phases(&ctx, &base, estimates, budget, started);
    result.map_err(|e| match e {
        Error::Interrupted(_) => Error::Interrupted(kept_in(&opts.out)),
        other => other,
    })
}

/// What a run that stopped early says of `out`.
pub fn kept_in(out: &Path) -> String {
    format!(
        "; the finished cycles are kept in {}: continue with the same command and --resume",
        out.display()
    )
}

/// The recipe's base model and each phase's memory estimate on `device` in `dtype`, from the model's
/// config alone: what `run` checks against the budget before any work, and what `forge serve` admits
/// jobs by.
pub fn open_and_estimate(
    recipe: &Recipe,
    registry: &Registry,
    (dtype, device): (candle_core::DType, &candle_core::Device),
) -> Result<(ModelFolder, Vec<Estimate>)> {
    let base = ModelFolder::open(&recipe.model).map_err(|e| bad_input!("recipe key `model`: {e}"))?;
    let state = recipe.validate(registry, &base.config)?;
    let estimates = estimate(recipe, &base.config, base.loaded_parameter_count(), (dtype, device), state);
    Ok((base, estimates))
}

fn run_phases(
    ctx: &RunContext,
    base: &ModelFolder,
    estimates: Vec<Estimate>,
    budget: Option<u64>,
    started: Instant,
) -> Result<RunReport> {
    let (recipe, opts) = (ctx.recipe, ctx.opts);
    let mut peaks = PeakLog::default();
    let (_, base_model) =
        peaks.measure("load", &opts.device, || ctx.load(&recipe.model, &HeadMask::default()))?;
    let baseline = peaks.measure("eval", &opts.device, || ctx.evaluate(&base_model, true))?;
    drop(base_model);
    let (records, current, mask) = run_cycles(ctx, ctx.guarded(&baseline)?, &mut peaks)?;
    let (final_metrics, final_parameters) =
        peaks.measure("eval", &opts.device, || final_model(ctx, &current, &mask))?;
    let report = RunReport {
        forge_version: env!("CARGO_PKG_VERSION").to_string(),
        recipe: recipe.clone(),
        plugins: ctx.registry.plugin_origins().into_iter().map(str::to_string).collect(),
        guard_metric: ctx.guard_metric.clone(),
        baseline,
        cycles: records,
        final_metrics,
        final_parameters,
        base_parameters: base.weights.parameter_count(),
        heads_before: ctx.total_heads,
        heads_after: ctx.total_heads - mask.count(),
        mask,
        estimates,
        budget,
        peak_memory_bytes: peaks.0,
        seconds: started.elapsed().as_secs_f64(),
        outputs: BTreeMap::new(),
    };
    write_report(report, &opts.out)
}

/// The cycles, each from the last accepted one's model, until all ran or one was rolled back; a
/// finished cycle (its `cycle.json` on disk) is read back instead of run. Returns the records, the
/// folder of the last accepted model and its mask.
fn run_cycles(
    ctx: &RunContext,
    baseline: f64,
    peaks: &mut PeakLog,
) -> Result<(Vec<CycleRecord>, PathBuf, HeadMask)> {
    let mut records = Vec::new();
    let (mut current, mut mask, mut previous) = (ctx.recipe.model.clone(), HeadMask::default(), baseline);
    for cycle in 1..=ctx.recipe.prune.cycles {
        crate::runtime::interrupt::check()?;
        let dir = ctx.opts.out.join("cycles").join(cycle.to_string());
        let record = match read_record(&dir.join("cycle.json"))? {
            Some(record) => record,
            None => {
                crate::events::cycle(Some(cycle));
                let start = CycleStart { cycle, source: &current, mask: &mask, previous, baseline };
                run_cycle(ctx, &start, &dir)?
            }
        };
        for (phase, bytes) in &record.peak_memory_bytes {
            peaks.note(phase, *bytes);
        }
        let accepted = record.accepted;
        if accepted {
            current = dir.join("model");
            mask = record.mask.clone();
            previous = ctx.guarded(&record.trained)?;
        }
        records.push(record);
        if !accepted {
            break;
        }
    }
    crate::events::cycle(None);
    Ok((records, current, mask))
}

fn read_record(path: &Path) -> Result<Option<CycleRecord>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| bad_input!("{}: {e}; delete that cycle folder to redo it", path.display()))
}

/// Saves the last accepted model in the recipe's save mode, reloads and evaluates it.
fn final_model(ctx: &RunContext, current: &Path, mask: &HeadMask) -> Result<(Metrics, usize)> {
    let out = &ctx.opts.out;
    let saved =
        save_pruned(&ModelFolder::open(current)?, mask, ctx.recipe.prune.save_mode, &out.join("model"))?;
    let (_, model) = ctx.load(&out.join("model"), &HeadMask::default())?;
    let metrics = ctx.evaluate(&model, true)?;
    write_json_atomic(&out.join("mask.json"), mask)?;
    Ok((metrics, saved.parameters))
}

/// Refuses, before any allocation, a phase estimated above the budget.
pub fn check_budget(estimates: &[Estimate], budget: Option<u64>) -> Result<()> {
    let Some(budget) = budget else { return Ok(()) };
    if let Some(e) = estimates.iter().find(|e| e.total() > budget) {
        let parts: Vec<String> = e.parts.iter().map(|(n, b)| format!("{n} {}", human(*b))).collect();
        return Err(bad_input!(
            "the {} phase needs an estimated {} ({}) but --memory-budget is {}; to fit, use {}",
            e.phase,
            human(e.total()),
            parts.join(", "),
            human(budget),
            e.knob
        ));
    }
    Ok(())
}

/// Creates `--out` (after every check), or on `--resume` checks it holds the same recipe and sweeps
/// the temporary files of writes a kill cut short.
fn prepare_out(recipe: &Recipe, opts: &RunOptions) -> Result<()> {
    check_out(&opts.out, &[recipe.model.as_path()], "--out")?;
    let cycles = opts.out.join("cycles");
    if cycles.exists() && !opts.resume {
        return Err(bad_input!(
            "{} holds an earlier run; continue it with --resume, or give another --out",
            opts.out.display()
        ));
    }
    let recipe_text = recipe.to_toml();
    let state = opts.out.join("run-recipe.toml");
    if opts.resume && state.is_file() {
        let previous = std::fs::read_to_string(&state).map_err(|e| Error::io(&state, e))?;
        if previous != recipe_text {
            return Err(bad_input!(
                "--resume: the recipe differs from the one {} was started with ({}); resume with the same recipe and overrides",
                opts.out.display(),
                state.display()
            ));
        }
    }
    std::fs::create_dir_all(&cycles).map_err(|e| Error::io(&cycles, e))?;
    remove_leftovers(&opts.out);
    write_atomic(&state, |tmp| std::fs::write(tmp, &recipe_text).map_err(|e| Error::io(tmp, e)))
}
