//! One cycle as phases — score → prune → evaluate → train → merge and save → reload and evaluate →
//! guard — each a short function over the run's context. A cycle starts from files on disk (the
//! previous cycle's saved model and mask) and uses seed + cycle, so a resumed run computes exactly
//! what the uninterrupted run would have; `cycle.json`, written last and atomically, marks it done.
use std::path::Path;
use std::time::Instant;

use forge_api::{HeadMask, HeadScores, PruneTarget, UnitKind};

use super::context::{PeakLog, RunContext};
use super::record::CycleRecord;
use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::outputs::{
    compact_parameters, source_config, stored_tensors, write_json_atomic, write_model_folder,
    zero_pruned_heads,
};
use crate::runtime::interrupt;
use crate::strategies::adapters::load_adapter;
use crate::strategies::adapters::merge_into;
use crate::strategies::ModelProbes;
use crate::training::{
    load_optimizer_state, load_teacher, save_optimizer_state, train_from, Distill, TrainInputs,
    TrainProgress, TrainReport, OPTIMIZER_STATE_FILE,
};
use crate::{bad_input, Result};

/// The score given to heads earlier cycles removed: they rank first, and the target is cumulative.
/// (A large finite score, not -inf: pruners average scores over KV groups.)
const REMOVED: f32 = -1e30;

/// Where a cycle starts from and what it must beat.
pub struct CycleStart<'p> {
    pub cycle: usize,
    pub source: &'p Path,
    pub mask: &'p HeadMask,
    /// The guarded metric of the cycle before (the baseline's for the first).
    pub previous: f64,
    /// The guarded metric of the unpruned baseline.
    pub baseline: f64,
}

/// Runs one cycle into `dir`.
pub fn run_cycle(ctx: &RunContext, start: &CycleStart, dir: &Path) -> Result<CycleRecord> {
    let started = Instant::now();
    let seed = ctx.recipe.seed + start.cycle as u64;
    let mut peaks = PeakLog::default();
    let (folder, mut model) = ctx.load(start.source, start.mask)?;
    let scores =
        peaks.measure("score", &ctx.opts.device, || score(ctx, &folder, &mut model, start.mask, seed))?;
    let mask = prune(ctx, &folder, &scores, start.cycle)?;
    model.apply_head_mask(&mask)?;
    let pruned = peaks.measure("eval", &ctx.opts.device, || ctx.evaluate(&model, false))?;
    interrupt::check()?;
    let trained = train_and_save(ctx, &folder, model, &mask, seed, dir)?;
    peaks.note("train", trained.peak_memory_bytes);
    let (_, reloaded) = ctx.load(&dir.join("model"), &mask)?;
    let after = peaks.measure("eval", &ctx.opts.device, || ctx.evaluate(&reloaded, true))?;
    let rejected_by = guard(ctx, start, ctx.guarded(&after)?);
    if let Some(reason) = &rejected_by {
        crate::events::warning(&format!("cycle {} rolled back: {reason}", start.cycle));
    }
    let record = CycleRecord {
        cycle: start.cycle,
        heads_removed: mask.count(),
        heads_left: ctx.total_heads - mask.count(),
        linear_heads_removed: mask.count_of(UnitKind::LinearHead),
        parameters_compact: compact_parameters(&folder, &mask)?,
        mask,
        scores: scores
            .scores
            .iter()
            .map(|r| r.iter().map(|&s| if s == REMOVED { 0.0 } else { s }).collect())
            .collect(),
        pruned,
        trained: after,
        train: serde_json::to_value(&trained).expect("reports serialise"),
        accepted: rejected_by.is_none(),
        rejected_by,
        seconds: started.elapsed().as_secs_f64(),
        peak_memory_bytes: peaks.0,
    };
    write_json_atomic(&dir.join("cycle.json"), &record)?;
    // The phase is done: its resume point is no longer needed.
    let _ = std::fs::remove_dir_all(dir.join("train-state"));
    Ok(record)
}

/// Head scores from the recipe's scorer, with the heads of earlier cycles marked removed.
fn score(
    ctx: &RunContext,
    folder: &ModelFolder,
    model: &mut CausalLm,
    removed: &HeadMask,
    seed: u64,
) -> Result<HeadScores> {
    let s = &ctx.recipe.score;
    let (scorer, _) = ctx.registry.scorer(&s.scorer, &s.options)?;
    let mut probes = ModelProbes::new(
        model,
        &folder.weights,
        Some(&ctx.calibration),
        s.calib_batch_size,
        seed,
        ctx.opts.quiet,
    );
    let mut scores = scorer.score(&mut probes)?;
    if let Some(name) = &s.layer_scorer {
        crate::strategies::scorers::use_layer_scores_of(name, ctx.registry, &mut probes, &mut scores)?;
    }
    scores
        .validate(&folder.config.geometry())
        .map_err(|e| bad_input!("scorer `{}` returned bad scores: {e}", s.scorer))?;
    for kind in UnitKind::ALL {
        // A kind the scorer left unscored has nothing to mark.
        if scores.of(kind).is_none() {
            continue;
        }
        let rows = scores.of_mut(kind);
        for (&layer, units) in removed.of(kind) {
            units.iter().for_each(|&u| rows[layer][u] = REMOVED);
        }
    }
    Ok(scores)
}

/// The recipe's pruner, to the cumulative target of `cycle`: a share of each kind's heads (the
/// pruner's `linear-ratio`, when given, sets the linear-attention share instead).
fn prune(ctx: &RunContext, folder: &ModelFolder, scores: &HeadScores, cycle: usize) -> Result<HeadMask> {
    crate::events::phase("prune");
    let p = &ctx.recipe.prune;
    let geometry = folder.config.geometry();
    let (pruner, _) = ctx.registry.pruner(&p.pruner, &p.options)?;
    let mask = pruner.prune(scores, &geometry, PruneTarget::Ratio(p.ratio_per_cycle * cycle as f64))?;
    mask.validate(&geometry).map_err(|e| bad_input!("pruner `{}` returned a bad mask: {e}", p.pruner))?;
    Ok(mask)
}

/// Trains an adapter on the pruned model, saves it, and writes the merged model (removed heads'
/// `o_proj` columns zeroed, the mask layout) with its mask to `dir/model`. An interrupt mid-training
/// saves the adapter, the optimizer's state and the progress to `dir/train-state`, from which a
/// resumed run continues the phase.
fn train_and_save(
    ctx: &RunContext,
    folder: &ModelFolder,
    mut model: CausalLm,
    mask: &HeadMask,
    seed: u64,
    dir: &Path,
) -> Result<TrainReport> {
    crate::events::phase("train");
    let t = &ctx.recipe.train;
    // Made before the adapter is attached: a teacher cloned from the model must not carry it.
    let device = (model.dtype(), model.device().clone());
    let teacher = t
        .teacher
        .as_deref()
        .map(|name| load_teacher(name, &model, (&folder.path, &ctx.recipe.model), (device.0, &device.1)))
        .transpose()?;
    let (mut optimizer, _) = ctx.registry.optimizer(&t.optimizer, &t.optimizer_options)?;
    let state = dir.join("train-state");
    let (attached, from) = match read_progress(&state)? {
        Some(progress) => {
            optimizer.load_state(load_optimizer_state(&state.join(OPTIMIZER_STATE_FILE))?)?;
            (load_adapter(&state.join("adapter"), &mut model, ctx.registry)?, progress)
        }
        None => {
            let (adapter, _) = ctx.registry.adapter(&t.adapter, &t.adapter_options)?;
            (adapter.attach(&mut model, seed)?, TrainProgress::default())
        }
    };
    attached.set_training(true);
    let (config, params) = (t.train_config(seed), attached.parameters());
    let inputs = TrainInputs {
        model: &model,
        params: &params,
        windows: &ctx.train_windows,
        config: &config,
        quiet: ctx.opts.quiet,
        distill: teacher.as_ref().map(|teacher| Distill {
            teacher,
            alpha: t.distill_alpha,
            temperature: t.distill_temperature,
        }),
        comm: ctx.opts.comm.as_deref(),
    };
    let mut save_state = |progress: &TrainProgress, optimizer: &dyn forge_api::Optimizer| {
        attached.save(&state.join("adapter"))?;
        save_optimizer_state(&state.join(OPTIMIZER_STATE_FILE), &optimizer.state()?)?;
        // Written last: its presence says the state is whole.
        write_json_atomic(&state.join(PROGRESS_FILE), progress)
    };
    let report = train_from(&inputs, optimizer.as_mut(), from, Some(&mut save_state))?;
    attached.set_training(false);
    attached.save(&dir.join("adapter"))?;
    interrupt::check()?;
    crate::events::phase("merge");
    let mut tensors = stored_tensors(folder)?;
    merge_into(&mut tensors, attached.as_ref())?;
    zero_pruned_heads(&mut tensors, &folder.config, mask)?;
    drop(model);
    let model_dir = dir.join("model");
    write_model_folder(folder, &tensors, &source_config(folder)?, &model_dir)?;
    write_json_atomic(&model_dir.join("mask.json"), mask)?;
    Ok(report)
}

/// Marks a whole training state in `train-state/`.
const PROGRESS_FILE: &str = "progress.json";

fn read_progress(state: &Path) -> Result<Option<TrainProgress>> {
    let path = state.join(PROGRESS_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(&path).map_err(|e| crate::Error::io(&path, e))?;
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        bad_input!("{}: {e}; delete {} to restart that training phase", path.display(), state.display())
    })
}

/// Why the guard rolls the cycle back (None: kept): its metric rose more than `max_increase` over
/// the previous cycle's, or more than `max_increase_over_baseline` over the unpruned model's.
fn guard(ctx: &RunContext, start: &CycleStart, value: f64) -> Option<String> {
    let g = &ctx.recipe.guard;
    let rise = |from: f64| value / from - 1.0;
    if !value.is_finite() {
        Some(format!("`{}` is {value}", ctx.guard_metric))
    } else if rise(start.previous) > g.max_increase {
        Some(format!(
            "`{}` rose {:.1}% over the previous cycle's {:.4} (guard.max_increase {})",
            ctx.guard_metric,
            rise(start.previous) * 100.0,
            start.previous,
            g.max_increase
        ))
    } else if g.max_increase_over_baseline >= 0.0 && rise(start.baseline) > g.max_increase_over_baseline {
        Some(format!(
            "`{}` is {:.1}% above the unpruned baseline's {:.4} (guard.max_increase_over_baseline {})",
            ctx.guard_metric,
            rise(start.baseline) * 100.0,
            start.baseline,
            g.max_increase_over_baseline
        ))
    } else {
        None
    }
}
