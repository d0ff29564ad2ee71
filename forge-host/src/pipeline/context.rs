//! What every phase of a run shares: the recipe, strategies and options, the data read once, and the
//! peak memory of each phase, measured in one place.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use forge_api::{EvalInput, HeadMask, Metrics};
use serde_json::Value;

use super::recipe::{metric_key, Recipe};
use crate::data::{Documents, TokenWindows};
use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::runtime::PeakMemory;
use crate::strategies::evaluators::ModelEvalContext;
use crate::strategies::Registry;
use crate::tokenizer::Tokenizer;
use crate::{bad_input, Result};

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
    /// This process's data-parallel rank, when `forge run --devices` started it as one: its training
    /// steps all-reduce with the other ranks'.
    pub comm: Option<Box<dyn crate::training::Communicator>>,
}

/// The largest peak seen for each phase (load, score, train, eval).
#[derive(Default)]
pub struct PeakLog(pub BTreeMap<String, u64>);

impl PeakLog {
    /// Runs `work` as `phase` on `device`, keeping its peak memory.
    pub fn measure<T>(
        &mut self,
        phase: &str,
        device: &Device,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        crate::events::phase(phase);
        let memory = PeakMemory::start(device);
        let out = work()?;
        self.note(phase, memory.peak_bytes());
        Ok(out)
    }

    /// Keeps `bytes` as `phase`'s peak if it is the largest yet.
    pub fn note(&mut self, phase: &str, bytes: u64) {
        crate::events::peak(bytes);
        let p = self.0.entry(phase.to_string()).or_default();
        *p = (*p).max(bytes);
    }
}

/// A run's inputs, resolved once before the first phase.
pub struct RunContext<'a> {
    pub recipe: &'a Recipe,
    pub registry: &'a Registry,
    pub opts: &'a RunOptions,
    pub tokenizer: Tokenizer,
    /// Evaluation windows, one set per evaluator (None for evaluators without data).
    pub eval_sets: Vec<Option<TokenWindows>>,
    pub calibration: TokenWindows,
    pub train_windows: TokenWindows,
    pub guard_metric: String,
    pub total_heads: usize,
}

impl<'a> RunContext<'a> {
    /// Tokenizes every data set the recipe names.
    pub fn new(
        recipe: &'a Recipe,
        registry: &'a Registry,
        opts: &'a RunOptions,
        base: &ModelFolder,
    ) -> Result<Self> {
        let tokenizer = base.tokenizer()?;
        let windows = |path: &Path, seq_len, count| {
            TokenWindows::from_documents(Documents::open(path)?, &tokenizer, seq_len, count)
        };
        // Only an evaluator that reads windows gets its data file tokenized (`choice` reads records).
        let eval_sets = recipe
            .evaluate
            .iter()
            .map(|e| match &e.data {
                Some(d) if registry.evaluator(&e.name, &e.options)?.0.input() == EvalInput::Windows => {
                    windows(d, recipe.data.eval_seq_len, Some(recipe.data.eval_windows)).map(Some)
                }
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        let s = &recipe.score;
        let calibration_file = recipe.data.calibration.as_ref().unwrap_or(&recipe.data.train);
        let calibration = windows(calibration_file, s.calib_seq_len, Some(s.calib_windows))?;
        let train_windows = windows(&recipe.data.train, recipe.train.seq_len, None)?;
        Ok(RunContext {
            recipe,
            registry,
            opts,
            tokenizer,
            eval_sets,
            calibration,
            train_windows,
            guard_metric: recipe.guard_metric(),
            total_heads: base.config.geometry().total_heads(),
        })
    }

    /// Loads the model in `dir` with `mask` applied.
    pub fn load(&self, dir: &Path, mask: &HeadMask) -> Result<(ModelFolder, CausalLm)> {
        let folder = ModelFolder::open(dir)?;
        let mut model = CausalLm::load(&folder, self.opts.dtype, &self.opts.device)?;
        model.apply_head_mask(mask)?;
        Ok((folder, model))
    }

    /// Every evaluator of the recipe on `model` (the data-less ones, such as samples, only when
    /// `with_samples`).
    pub fn evaluate(&self, model: &CausalLm, with_samples: bool) -> Result<Metrics> {
        let mut metrics = Metrics::new();
        for (section, windows) in self.recipe.evaluate.iter().zip(&self.eval_sets) {
            crate::runtime::interrupt::check()?;
            if section.data.is_none() && !with_samples {
                continue;
            }
            let (evaluator, _) = self.registry.evaluator(&section.name, &section.options)?;
            let mut ctx = ModelEvalContext::new(model, &self.tokenizer, windows.as_ref())
                .with_records(section.data.as_deref());
            for (name, value) in evaluator.evaluate(&mut ctx)? {
                metrics.insert(metric_key(section, &name), value);
            }
        }
        crate::events::metrics(&metrics, &self.guard_metric);
        Ok(metrics)
    }

    /// The guarded metric's value in `metrics`.
    pub fn guarded(&self, metrics: &Metrics) -> Result<f64> {
        let key = &self.guard_metric;
        metrics.get(key).and_then(Value::as_f64).ok_or_else(|| bad_input!("no metric `{key}` was produced"))
    }
}
