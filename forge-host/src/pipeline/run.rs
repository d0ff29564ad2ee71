//! Executing a recipe. Every cycle starts from files on disk — the previous cycle's saved model and
//! mask — and uses seed + cycle, so a run resumed after its last finished cycle computes exactly what
//! the uninterrupted run would have; a cycle's `cycle.json`, written last and atomically, marks it
//! finished. Every metric is taken on a model reloaded from what was written.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use forge_api::{HeadMask, HeadScores, PruneTarget};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::budget::{estimate, human, Estimate};
use super::recipe::{metric_key, Recipe};
use super::report::{write_report, RunReport};
use crate::data::{Documents, TokenWindows};
use crate::model::{CausalLm, ModelFolder};
use crate::outputs::{
    save_pruned, source_config, stored_tensors, write_json_atomic, write_model_folder, zero_pruned_heads,
};
use crate::runtime::PeakMemory;
use crate::strategies::adapters::merge_into;
use crate::strategies::evaluators::ModelEvalContext;
use crate::strategies::{ModelProbes, Registry};
use crate::tokenizer::Tokenizer;
use crate::training::{train, TrainReport};
use crate::{bad_input, Error, Result};

/// How to run a recipe.
pub struct RunOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Continue from the last finished cycle in `out`.
    pub resume: bool,
    /// Refuse phases estimated above this many bytes.
    pub budget: Option<u64>,
    /// Where to run.
    pub device: Device,
    /// Weights dtype.
    pub dtype: DType,
    /// No progress bars.
    pub quiet: bool,
}

/// Metrics by name (`perplexity:code-valid`, `samples`).
pub type Metrics = BTreeMap<String, Value>;

/// One finished cycle, as `cycles/N/cycle.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CycleRecord {
    pub cycle: usize,
    pub heads_removed: usize,
    pub heads_left: usize,
    pub parameters_compact: usize,
    pub mask: HeadMask,
    pub scores: Vec<Vec<f32>>,
    /// Metrics of the pruned model before training.
    pub pruned: Metrics,
    /// Metrics of the trained, merged, saved and reloaded model.
    pub trained: Metrics,
    pub train: Value,
    /// Whether the guard kept the cycle.
    pub accepted: bool,
    pub seconds: f64,
    /// Phase → peak bytes (see [`PeakMemory`]).
    pub peak_memory_bytes: BTreeMap<String, u64>,
}

/// Evaluation data sets, one per evaluator (None for evaluators without data).
struct EvalSets(Vec<Option<TokenWindows>>);

fn load_model(dir: &Path, mask: &HeadMask, opts: &RunOptions) -> Result<(ModelFolder, CausalLm)> {
    let folder = ModelFolder::open(dir)?;
    let mut model = folder.load(opts.dtype, &opts.device)?;
    model.apply_head_mask(mask)?;
    Ok((folder, model))
}

fn evaluate(
    recipe: &Recipe,
    registry: &Registry,
    model: &CausalLm,
    tokenizer: &Tokenizer,
    sets: &EvalSets,
    with_samples: bool,
) -> Result<Metrics> {
    let mut metrics = Metrics::new();
    for (section, windows) in recipe.evaluate.iter().zip(&sets.0) {
        if windows.is_none() && !with_samples {
            continue;
        }
        let (evaluator, _) = registry.evaluator(&section.name, &section.options)?;
        let mut ctx = ModelEvalContext::new(model, tokenizer, windows.as_ref());
        for (name, value) in evaluator.evaluate(&mut ctx)? {
            metrics.insert(metric_key(section, &name), value);
        }
    }
    Ok(metrics)
}

fn metric(metrics: &Metrics, key: &str) -> Result<f64> {
    metrics.get(key).and_then(Value::as_f64).ok_or_else(|| bad_input!("no metric `{key}` was produced"))
}

/// Refuses, before any allocation, a phase estimated above the budget.
fn check_budget(estimates: &[Estimate], budget: Option<u64>) -> Result<()> {
    let Some(budget) = budget else { return Ok(()) };
    for e in estimates {
        if e.total() > budget {
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
    }
    Ok(())
}

/// Keeps the largest peak seen for each phase.
fn note_peak(peaks: &mut BTreeMap<String, u64>, phase: &str, bytes: u64) {
    let p = peaks.entry(phase.to_string()).or_default();
    *p = (*p).max(bytes);
}

/// Leftovers of writes cut short (by a kill): temporary files are never valid outputs.
fn remove_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_partials(&path);
        } else if path.file_name().is_some_and(|n| n.to_string_lossy().contains(".partial-")) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The default budget on CUDA: the device's free memory.
fn default_budget(device: &Device) -> Option<u64> {
    if device.is_cpu() {
        None
    } else {
        crate::runtime::free_device_memory(device)
    }
}

/// Runs `recipe` (validated here) and writes every output into `opts.out`.
pub fn run(recipe: &Recipe, registry: &Registry, opts: &RunOptions) -> Result<RunReport> {
    recipe.validate(registry)?;
    let base = ModelFolder::open(&recipe.model)?;
    let estimates = estimate(recipe, &base.config, base.weights.parameter_count() as u64, opts.dtype);
    let budget = opts.budget.or_else(|| default_budget(&opts.device));
    check_budget(&estimates, budget)?;

    let cycles_dir = opts.out.join("cycles");
    if cycles_dir.exists() && !opts.resume {
        return Err(bad_input!(
            "{} holds an earlier run; continue it with --resume, or give another --out",
            opts.out.display()
        ));
    }
    std::fs::create_dir_all(&cycles_dir).map_err(|e| Error::io(&cycles_dir, e))?;
    remove_partials(&opts.out);
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
    crate::outputs::write_atomic(&state, |tmp| {
        std::fs::write(tmp, &recipe_text).map_err(|e| Error::io(tmp, e))
    })?;

    let started = Instant::now();
    let tokenizer = base.tokenizer()?;
    let sets = EvalSets(
        recipe
            .evaluate
            .iter()
            .map(|e| {
                e.data
                    .as_ref()
                    .map(|d| {
                        TokenWindows::from_documents(
                            Documents::open(d)?,
                            &tokenizer,
                            recipe.data.eval_seq_len,
                            Some(recipe.data.eval_windows),
                        )
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?,
    );
    let calibration_file = recipe.data.calibration.as_ref().unwrap_or(&recipe.data.train);
    let calibration = TokenWindows::from_documents(
        Documents::open(calibration_file)?,
        &tokenizer,
        recipe.score.calib_seq_len,
        Some(recipe.score.calib_windows),
    )?;
    let train_windows = TokenWindows::from_documents(
        Documents::open(&recipe.data.train)?,
        &tokenizer,
        recipe.train.seq_len,
        None,
    )?;
    let guard_metric = recipe.guard_metric();
    let mut peaks: BTreeMap<String, u64> = BTreeMap::new();

    let memory = PeakMemory::start(&opts.device);
    let (_, base_model) = load_model(&recipe.model, &HeadMask::default(), opts)?;
    note_peak(&mut peaks, "load", memory.peak_bytes());
    let memory = PeakMemory::start(&opts.device);
    let baseline = evaluate(recipe, registry, &base_model, &tokenizer, &sets, true)?;
    note_peak(&mut peaks, "eval", memory.peak_bytes());
    drop(base_model);

    let total_heads = base.config.geometry().total_heads();
    let mut records: Vec<CycleRecord> = Vec::new();
    let mut current_dir = recipe.model.clone();
    let mut mask = HeadMask::default();
    let mut previous = metric(&baseline, &guard_metric)?;
    for cycle in 1..=recipe.prune.cycles {
        let dir = cycles_dir.join(cycle.to_string());
        let record_path = dir.join("cycle.json");
        let record: CycleRecord = if record_path.is_file() {
            let text = std::fs::read(&record_path).map_err(|e| Error::io(&record_path, e))?;
            serde_json::from_slice(&text).map_err(|e| {
                bad_input!("{}: {e}; delete that cycle folder to redo it", record_path.display())
            })?
        } else {
            run_cycle(
                recipe,
                registry,
                opts,
                cycle,
                &current_dir,
                &mask,
                &dir,
                &tokenizer,
                &sets,
                &calibration,
                &train_windows,
                previous,
                &guard_metric,
                total_heads,
            )?
        };
        for (phase, bytes) in &record.peak_memory_bytes {
            note_peak(&mut peaks, phase, *bytes);
        }
        let accepted = record.accepted;
        if accepted {
            current_dir = dir.join("model");
            mask = record.mask.clone();
            previous = metric(&record.trained, &guard_metric)?;
        }
        records.push(record);
        if !accepted {
            break;
        }
    }

    let memory = PeakMemory::start(&opts.device);
    let final_folder = ModelFolder::open(&current_dir)?;
    let model_out = opts.out.join("model");
    let saved = save_pruned(&final_folder, &mask, recipe.prune.save_mode, &model_out)?;
    let (_, final_model) = load_model(&model_out, &HeadMask::default(), opts)?;
    let final_metrics = evaluate(recipe, registry, &final_model, &tokenizer, &sets, true)?;
    note_peak(&mut peaks, "eval", memory.peak_bytes());
    drop(final_model);
    write_json_atomic(&opts.out.join("mask.json"), &mask)?;

    let report = RunReport {
        forge_version: env!("CARGO_PKG_VERSION").to_string(),
        recipe: recipe.clone(),
        plugins: registry.plugin_origins().into_iter().map(str::to_string).collect(),
        guard_metric,
        baseline,
        cycles: records,
        final_metrics,
        final_parameters: saved.parameters,
        base_parameters: base.weights.parameter_count(),
        heads_before: total_heads,
        heads_after: total_heads - mask.count(),
        mask,
        estimates,
        budget,
        peak_memory_bytes: peaks,
        seconds: started.elapsed().as_secs_f64(),
        outputs: BTreeMap::new(),
    };
    write_report(report, &opts.out)
}

/// The score given to heads earlier cycles removed.
const REMOVED: f32 = -1e30;

/// One cycle: score → prune → evaluate → train → merge → save → reload → evaluate → guard.
#[allow(clippy::too_many_arguments)]
fn run_cycle(
    recipe: &Recipe,
    registry: &Registry,
    opts: &RunOptions,
    cycle: usize,
    source: &Path,
    previous_mask: &HeadMask,
    dir: &Path,
    tokenizer: &Tokenizer,
    sets: &EvalSets,
    calibration: &TokenWindows,
    train_windows: &TokenWindows,
    previous_metric: f64,
    guard_metric: &str,
    total_heads: usize,
) -> Result<CycleRecord> {
    let started = Instant::now();
    let seed = recipe.seed + cycle as u64;
    let mut peaks: BTreeMap<String, u64> = BTreeMap::new();
    let (folder, mut model) = load_model(source, previous_mask, opts)?;
    let geometry = folder.config.geometry();

    let memory = PeakMemory::start(&opts.device);
    let (scorer, _) = registry.scorer(&recipe.score.scorer, &recipe.score.options)?;
    let mut scores: HeadScores = {
        let mut ctx = ModelProbes::new(
            &mut model,
            &folder.weights,
            Some(calibration),
            recipe.score.calib_batch_size,
            seed,
            opts.quiet,
        );
        scorer.score(&mut ctx)?
    };
    scores
        .validate(&geometry)
        .map_err(|e| bad_input!("scorer `{}` returned bad scores: {e}", recipe.score.scorer))?;
    note_peak(&mut peaks, "score", memory.peak_bytes());
    // Heads removed by earlier cycles stay removed: they rank first, and the target is cumulative.
    // (A large finite score, not -inf: pruners average scores over KV groups.)
    for (&layer, heads) in &previous_mask.pruned {
        for &h in heads {
            scores.scores[layer][h] = REMOVED;
        }
    }
    let (pruner, _) = registry.pruner(&recipe.prune.pruner, &recipe.prune.options)?;
    let target = (recipe.prune.ratio_per_cycle * cycle as f64 * total_heads as f64).round() as usize;
    let mask = pruner.prune(&scores, &geometry, PruneTarget::Count(target))?;
    mask.validate(&geometry)
        .map_err(|e| bad_input!("pruner `{}` returned a bad mask: {e}", recipe.prune.pruner))?;
    model.apply_head_mask(&mask)?;
    let memory = PeakMemory::start(&opts.device);
    let pruned = evaluate(recipe, registry, &model, tokenizer, sets, false)?;
    note_peak(&mut peaks, "eval", memory.peak_bytes());

    let t = &recipe.train;
    let (adapter, _) = registry.adapter(&t.adapter, &t.adapter_options)?;
    let (mut optimizer, _) = registry.optimizer(&t.optimizer, &t.optimizer_options)?;
    let attached = adapter.attach(&mut model, seed)?;
    attached.set_training(true);
    let config = t.train_config(seed);
    let trained: TrainReport =
        train(&model, &attached.parameters(), optimizer.as_mut(), train_windows, &config, opts.quiet)?;
    note_peak(&mut peaks, "train", trained.peak_memory_bytes);
    attached.set_training(false);
    attached.save(&dir.join("adapter"))?;

    // Merge into the stored weights, with the removed heads' o_proj columns zeroed (mask layout).
    let mut tensors = stored_tensors(&folder)?;
    merge_into(&mut tensors, attached.as_ref())?;
    zero_pruned_heads(&mut tensors, &geometry.heads, folder.config.head_dim, &mask)?;
    drop(model);
    let model_dir = dir.join("model");
    write_model_folder(&folder, &tensors, &source_config(&folder)?, &model_dir)?;
    write_json_atomic(&model_dir.join("mask.json"), &mask)?;

    let (_, reloaded) = load_model(&model_dir, &mask, opts)?;
    let memory = PeakMemory::start(&opts.device);
    let after = evaluate(recipe, registry, &reloaded, tokenizer, sets, true)?;
    note_peak(&mut peaks, "eval", memory.peak_bytes());
    let value = metric(&after, guard_metric)?;
    let accepted = value <= previous_metric * (1.0 + recipe.guard.max_increase);
    let compact = crate::outputs::compact_parameters(&folder, &mask)?;
    let record = CycleRecord {
        cycle,
        heads_removed: mask.count(),
        heads_left: total_heads - mask.count(),
        parameters_compact: compact,
        mask,
        scores: scores
            .scores
            .iter()
            .map(|r| r.iter().map(|&s| if s == REMOVED { 0.0 } else { s }).collect())
            .collect(),
        pruned,
        trained: after,
        train: serde_json::to_value(&trained).expect("reports serialise"),
        accepted,
        seconds: started.elapsed().as_secs_f64(),
        peak_memory_bytes: peaks,
    };
    write_json_atomic(&dir.join("cycle.json"), &record)?;
    Ok(record)
}
