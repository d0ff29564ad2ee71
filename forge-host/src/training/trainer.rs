//! The training loop: seeded window order, gradient accumulation, global-norm clipping, warm-up and
//! cosine schedule, and the optimizer applied to each parameter as a flat f32 buffer.
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use forge_api::Optimizer;
use serde::{Deserialize, Serialize};

use super::checkpoint::{loss_and_grads, Backprop, Distill};
use super::comm::Communicator;
use super::schedule::learning_rate;
use crate::data::TokenWindows;
use crate::model::CausalLm;
use crate::runtime::PeakMemory;
use crate::strategies::TrainOptimizer;
use crate::{bad_input, progress, Error, Result};
use forge_kernels::profile::section;
use forge_kernels::SplitMix64;

/// How to train.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged into one step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this (None: no clipping).
    pub clip_norm: Option<f64>,
    /// Seed of the window order.
    pub seed: u64,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations.
    pub grad_checkpoint: bool,
    /// The backward pass; None: the device's ([`Backprop::for_device`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backward: Option<Backprop>,
}

/// What a training run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Loss of the first step.
    pub loss_first: f64,
    /// Loss of the last step.
    pub loss_last: f64,
    /// Loss of every step.
    pub losses: Vec<f64>,
    /// Tokens trained on per second, over the steps this process took after its first (which pays
    /// one-time set-up: kernel loading, library handles); over the one step when there is only one.
    pub tokens_per_s: f64,
    /// Wall time of the loop.
    pub seconds: f64,
    /// Peak memory of the loop (see [`PeakMemory`]).
    pub peak_memory_bytes: u64,
    /// When distilling: the loss's parts at the first and last step this process took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillReport>,
}

/// The CE and KL parts of a distilling run's loss, `(1 − alpha) · ce + alpha · T² · kl`.
#[derive(Clone, Debug, Serialize)]
pub struct DistillReport {
    pub alpha: f64,
    pub temperature: f64,
    pub ce_first: f64,
    pub ce_last: f64,
    pub kl_first: f64,
    pub kl_last: f64,
}

/// Window indices in a seeded order, reshuffled every epoch.
struct WindowOrder {
    rng: SplitMix64,
    order: Vec<usize>,
    next: usize,
}

impl WindowOrder {
    fn new(count: usize, seed: u64) -> Self {
        WindowOrder { rng: SplitMix64::new(seed), order: (0..count).collect(), next: count }
    }

    fn take(&mut self) -> usize {
        if self.next == self.order.len() {
            for i in (1..self.order.len()).rev() {
                let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                self.order.swap(i, j);
            }
            self.next = 0;
        }
        self.next += 1;
        self.order[self.next - 1]
    }
}

/// What a training phase works on.
pub struct TrainInputs<'a> {
    /// The model, with `params` wired in.
    pub model: &'a CausalLm,
    /// The trainable parameters, in a stable order (the optimizer's ids).
    pub params: &'a [Var],
    /// The training windows.
    pub windows: &'a TokenWindows,
    pub config: &'a TrainConfig,
    /// No progress bar.
    pub quiet: bool,
    /// A teacher to distil from, or plain next-token training.
    pub distill: Option<Distill<'a>>,
    /// Data-parallel training: this rank's group (it then trains on its shard of each batch).
    pub comm: Option<&'a dyn Communicator>,
}

/// Where a training phase stands: optimizer steps done and their losses.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainProgress {
    pub step: usize,
    pub losses: Vec<f64>,
}

/// Called at a requested stop (SIGINT, SIGTERM) with the progress so far and the optimizer, to save
/// what resuming needs; the loop then returns [`Error::Interrupted`].
pub type OnStop<'a> = &'a mut dyn FnMut(&TrainProgress, &dyn Optimizer) -> Result<()>;

/// Trains from the first step; a requested stop ends it with [`Error::Interrupted`], saving nothing.
pub fn train(inputs: &TrainInputs, optimizer: &mut dyn TrainOptimizer) -> Result<TrainReport> {
    train_from(inputs, optimizer, TrainProgress::default(), None)
}

/// Trains from `from` (the parameters and the optimizer's state must be those it was saved with):
/// the window order is replayed to where it stood, so the steps after are the ones an uninterrupted
/// run would have taken.
pub fn train_from(
    inputs: &TrainInputs,
    optimizer: &mut dyn TrainOptimizer,
    from: TrainProgress,
    on_stop: Option<OnStop>,
) -> Result<TrainReport> {
    let config = inputs.config;
    if config.steps == 0 || config.batch_size == 0 || config.grad_accum == 0 {
        return Err(bad_input!("--steps, --batch-size and --grad-accum must each be at least 1"));
    }
    let memory = PeakMemory::start(inputs.model.device());
    let mut order = WindowOrder::new(inputs.windows.len(), config.seed);
    for _ in 0..from.step * config.grad_accum * config.batch_size {
        order.take();
    }
    tracing::info!("training from step {} of {}", from.step, config.steps);
    let bar = progress::bar(config.steps as u64, "steps", inputs.quiet);
    bar.inc(from.step as u64);
    let started = Instant::now();
    // Speed counts the steps this call takes: a resumed phase's earlier steps ran in another process.
    let first_step = from.step;
    let mut progress = from;
    let mut after_first = started;
    let mut parts: Vec<(f64, f64)> = Vec::new();
    while progress.step < config.steps {
        // One device stops before a step; data-parallel ranks agree on a stop in the step's
        // all-reduce and all stop after that same step, so none is left waiting for the others.
        if inputs.comm.is_none() && crate::runtime::interrupt::requested() {
            return stop(on_stop, &progress, optimizer);
        }
        let StepEnd { loss, ce_kl, agreed_stop } =
            optimizer_step(inputs, optimizer, &mut order, progress.step)?;
        parts.extend(ce_kl);
        progress.losses.push(loss);
        progress.step += 1;
        if progress.step == first_step + 1 {
            after_first = Instant::now();
            // FORGE_PROFILE then times the steps the speed counts (the first loads kernels).
            forge_kernels::profile::reset();
        }
        let done =
            (progress.step - first_step) * config.grad_accum * config.batch_size * inputs.windows.seq_len();
        if inputs.comm.is_none_or(|c| c.rank() == 0) {
            crate::events::step(
                progress.step,
                config.steps,
                loss,
                done as f64 / started.elapsed().as_secs_f64(),
            );
        }
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        if agreed_stop && progress.step < config.steps {
            return stop(on_stop, &progress, optimizer);
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let tokens_per_step = config.grad_accum * config.batch_size * inputs.windows.seq_len();
    let steps_here = progress.step - first_step;
    let tokens_per_s = if steps_here > 1 {
        (steps_here - 1) as f64 * tokens_per_step as f64 / after_first.elapsed().as_secs_f64()
    } else {
        (steps_here * tokens_per_step) as f64 / seconds
    };
    let losses = progress.losses;
    Ok(TrainReport {
        steps: config.steps,
        loss_first: losses[0],
        loss_last: *losses.last().expect("at least one step"),
        losses,
        tokens_per_s,
        seconds,
        peak_memory_bytes: memory.peak_bytes(),
        distill: distill_report(inputs.distill.as_ref(), &parts),
    })
}

/// The CE and KL parts of the first and last steps, when distilling.
fn distill_report(distill: Option<&Distill>, parts: &[(f64, f64)]) -> Option<DistillReport> {
    distill.zip(parts.first().zip(parts.last())).map(|(d, (first, last))| DistillReport {
        alpha: d.alpha,
        temperature: d.temperature,
        ce_first: first.0,
        ce_last: last.0,
        kl_first: first.1,
        kl_last: last.1,
    })
}

/// Saves what resuming needs (when the caller can) and ends the loop as interrupted.
fn stop(on_stop: Option<OnStop>, progress: &TrainProgress, optimizer: &dyn Optimizer) -> Result<TrainReport> {
    if let Some(save) = on_stop {
        save(progress, optimizer)?;
    }
    Err(Error::Interrupted(String::new()))
}

/// What one optimizer step reports.
struct StepEnd {
    loss: f64,
    /// The CE and KL parts, when distilling.
    ce_kl: Option<(f64, f64)>,
    /// Data-parallel ranks agreed to stop after this step (one of them was asked to).
    agreed_stop: bool,
}

/// One optimizer step: `grad_accum` micro-batches, the averaged gradients clipped, each parameter
/// updated.
fn optimizer_step(
    inputs: &TrainInputs,
    optimizer: &mut dyn TrainOptimizer,
    order: &mut WindowOrder,
    step: usize,
) -> Result<StepEnd> {
    let (model, config, seq_len) = (inputs.model, inputs.config, inputs.windows.seq_len());
    let mut sums = GradSums::new(inputs);
    let (mut loss, mut ce, mut kl) = (0f64, 0f64, 0f64);
    // Every rank draws the whole global batch, so the order stays in step, and keeps its shard.
    let (rank, world) = inputs.comm.map_or((0, 1), |c| (c.rank(), c.world()));
    let shard = config.batch_size / world;
    for _ in 0..config.grad_accum {
        let mut ids = Vec::with_capacity(shard * seq_len);
        for row in 0..config.batch_size {
            let window = order.take();
            if row / shard == rank {
                ids.extend_from_slice(inputs.windows.batch(window, 1));
            }
        }
        let ids = Tensor::from_vec(ids, (shard, seq_len), model.device())?;
        let (l, grads) = section("train forward + backward", model.device(), || {
            let backward = config.backward.unwrap_or_else(|| Backprop::for_device(model.device()));
            let checkpoint = config.grad_checkpoint;
            loss_and_grads(model, &ids, inputs.params, checkpoint, inputs.distill.as_ref(), backward)
        })?;
        let share = 1.0 / config.grad_accum as f64;
        loss += l.loss as f64 * share;
        ce += l.ce as f64 * share;
        kl += l.kl.unwrap_or(0.0) as f64 * share;
        sums.add(grads, config.grad_accum)?;
    }
    let mut agreed_stop = false;
    if let Some(comm) = inputs.comm {
        let asked = if crate::runtime::interrupt::requested() { 1.0 } else { 0.0 };
        let stops;
        [loss, ce, kl, stops] = all_reduce(comm, sums.host()?, [loss, ce, kl, asked])?;
        agreed_stop = stops > 0.0;
    }
    if !loss.is_finite() {
        return Err(Error::Strategy(format!(
            "the loss became {loss} at step {step}; lower --lr or set --clip-norm"
        )));
    }
    if let Some(max) = config.clip_norm {
        sums.clip(max)?;
    }
    let lr = learning_rate(step, config.steps, config.warmup_steps, config.lr);
    // The profile's sections take candle's errors; the step's own error is carried out beside it.
    let mut applied = Ok(());
    section("optimizer step", model.device(), || {
        applied = sums.apply(optimizer, inputs.params, lr);
        Ok(())
    })?;
    applied?;
    Ok(StepEnd { loss, ce_kl: inputs.distill.map(|_| (ce, kl)), agreed_stop })
}

/// A step's gradient sums: on the device, where the optimizer steps there and no ranks exchange them
/// (the all-reduce takes host buffers), or on the host.
enum GradSums {
    Device(Vec<Tensor>),
    Host(Vec<Vec<f32>>),
}

impl GradSums {
    fn new(inputs: &TrainInputs) -> Self {
        if inputs.comm.is_none() && inputs.model.device().is_cuda() && cfg!(feature = "cuda") {
            GradSums::Device(Vec::new())
        } else {
            GradSums::Host(inputs.params.iter().map(|p| vec![0.0; p.elem_count()]).collect())
        }
    }

    /// Adds one micro-batch's gradients, each divided by the micro-batches of the step.
    fn add(&mut self, grads: Vec<Tensor>, accum: usize) -> Result<()> {
        match self {
            GradSums::Device(sums) => {
                for (i, g) in grads.into_iter().enumerate() {
                    let g = (g.to_dtype(DType::F32)? / accum as f64)?;
                    match sums.get_mut(i) {
                        Some(sum) => *sum = (&*sum + g)?,
                        None => sums.push(g),
                    }
                }
            }
            GradSums::Host(sums) => {
                for (sum, g) in sums.iter_mut().zip(grads) {
                    let g = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    sum.iter_mut().zip(g).for_each(|(s, g)| *s += g / accum as f32);
                }
            }
        }
        Ok(())
    }

    /// The sums on the host (moved there if they were on the device).
    fn host(&mut self) -> Result<&mut Vec<Vec<f32>>> {
        if let GradSums::Device(sums) = self {
            let host =
                sums.iter().map(|s| s.flatten_all()?.to_vec1::<f32>()).collect::<candle_core::Result<_>>()?;
            *self = GradSums::Host(host);
        }
        match self {
            GradSums::Host(sums) => Ok(sums),
            GradSums::Device(_) => unreachable!("moved to the host above"),
        }
    }

    /// Scales the sums so that their global norm is at most `max`.
    fn clip(&mut self, max: f64) -> Result<()> {
        let norm = match self {
            GradSums::Device(sums) => {
                // One transfer: every tensor's sum of squares, stacked.
                let squares =
                    sums.iter().map(|s| s.sqr()?.sum_all()).collect::<candle_core::Result<Vec<_>>>()?;
                let squares = Tensor::stack(&squares, 0)?.to_vec1::<f32>()?;
                squares.iter().map(|&q| q as f64).sum::<f64>().sqrt()
            }
            GradSums::Host(sums) => sums.iter().flatten().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt(),
        };
        if norm > max {
            let scale = (max / norm) as f32;
            match self {
                GradSums::Device(sums) => {
                    for s in sums.iter_mut() {
                        *s = (&*s * scale as f64)?;
                    }
                }
                GradSums::Host(sums) => sums.iter_mut().flatten().for_each(|g| *g *= scale),
            }
        }
        Ok(())
    }

    /// Steps every parameter: on the device where the optimizer can, else through the host.
    fn apply(&mut self, optimizer: &mut dyn TrainOptimizer, params: &[Var], lr: f64) -> Result<()> {
        for (id, var) in params.iter().enumerate() {
            if let GradSums::Device(sums) = self {
                if optimizer.update_on_device(id, var, &sums[id], lr)? {
                    continue;
                }
            }
            let grad = self.host()?[id].as_slice();
            let mut values = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            optimizer.update(id, &mut values, grad, lr)?;
            var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// Averages the ranks' gradients and the step's scalars (loss parts, stop requests) in one
/// all-reduce of a packed buffer.
fn all_reduce(comm: &dyn Communicator, sums: &mut [Vec<f32>], parts: [f64; 4]) -> Result<[f64; 4]> {
    let mut packed: Vec<f32> = sums.iter().flatten().copied().collect();
    packed.extend(parts.map(|p| p as f32));
    comm.all_reduce_mean(&mut packed)?;
    let mut values = packed.iter();
    for value in sums.iter_mut().flatten() {
        *value = *values.next().expect("packed as many as unpacked");
    }
    Ok(parts.map(|_| f64::from(*values.next().expect("as many scalars as packed"))))
}
