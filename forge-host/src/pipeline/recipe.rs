//! The recipe: a TOML file naming every step's strategy and options. Parsing is strict — an unknown
//! key, a value of the wrong type, an unknown strategy or option, or options that contradict each
//! other fail before any work, naming the key and what is valid.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use forge_api::{Options, StrategyKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::defaults;
use crate::loader::ModelConfig;
use crate::outputs::SaveMode;
use crate::strategies::Registry;
use crate::training::TrainConfig;
use crate::{bad_input, Error, Result};

/// What the recipe's adapter and optimizer say they will hold, asked of the strategies themselves.
#[derive(Clone, Copy, Debug)]
pub struct TrainState {
    /// Trainable values the adapter attaches ([`Adapter::trainable_values`](crate::strategies::adapters::Adapter::trainable_values)).
    pub values: u64,
    /// The optimizer's state bytes per trainable value.
    pub optimizer_bytes_per_value: f64,
}

impl TrainState {
    /// f32 master values and their gradients, plus the optimizer's state.
    pub(super) fn bytes(&self) -> u64 {
        (self.values as f64 * (8.0 + self.optimizer_bytes_per_value)) as u64
    }
}

/// A strategy's options as written in the recipe (any TOML values).
pub type OptionTable = BTreeMap<String, Value>;

/// A whole run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The model folder to start from.
    pub model: PathBuf,
    /// Seed of everything random; cycle c uses seed + c.
    #[serde(default)]
    pub seed: u64,
    /// Data sets.
    pub data: DataSection,
    /// Head scoring.
    pub score: ScoreSection,
    /// Head removal.
    pub prune: PruneSection,
    /// Adapter training after each removal.
    pub train: TrainSection,
    /// Evaluators run on the baseline, after every cycle and on the final model.
    #[serde(default = "default_evaluators")]
    pub evaluate: Vec<EvaluatorSection>,
    /// When a cycle is rolled back.
    #[serde(default)]
    pub guard: GuardSection,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training data for the adapters.
    pub train: PathBuf,
    /// Calibration data for scorers that run the model [default: the training data].
    pub calibration: Option<PathBuf>,
    /// Windows per evaluation set.
    #[serde(default = "d_eval_windows")]
    pub eval_windows: usize,
    /// Tokens per evaluation window.
    #[serde(default = "d_eval_seq_len")]
    pub eval_seq_len: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSection {
    pub scorer: String,
    #[serde(default)]
    pub options: OptionTable,
    /// Whole layers' scores from this scorer instead (`--layer-scorer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_scorer: Option<String>,
    #[serde(default = "d_calib_windows")]
    pub calib_windows: usize,
    #[serde(default = "d_calib_seq_len")]
    pub calib_seq_len: usize,
    #[serde(default = "d_batch")]
    pub calib_batch_size: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PruneSection {
    pub pruner: String,
    #[serde(default)]
    pub options: OptionTable,
    /// Share of all heads removed by each cycle (cumulative: cycle c leaves c × this removed).
    pub ratio_per_cycle: f64,
    pub cycles: usize,
    /// How the final model is written.
    #[serde(default = "d_compact")]
    pub save_mode: SaveMode,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    #[serde(default = "d_lora")]
    pub adapter: String,
    #[serde(default)]
    pub adapter_options: OptionTable,
    #[serde(default = "d_adamw")]
    pub optimizer: String,
    #[serde(default)]
    pub optimizer_options: OptionTable,
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_train_seq_len")]
    pub seq_len: usize,
    #[serde(default = "d_1")]
    pub grad_accum: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    pub warmup_steps: Option<usize>,
    #[serde(default = "d_clip")]
    pub clip_norm: f64,
    #[serde(default)]
    pub grad_checkpoint: bool,
    /// Distil from a teacher's logits: `base` (the run's unpruned model) or a model folder.
    #[serde(default)]
    pub teacher: Option<String>,
    /// With a teacher, the loss is `(1 − distill_alpha) · CE + distill_alpha · T² · KL`.
    #[serde(default = "d_alpha")]
    pub distill_alpha: f64,
    /// With a teacher, the temperature T.
    #[serde(default = "d_temperature")]
    pub distill_temperature: f64,
}

impl TrainSection {
    /// The training loop's settings, for `seed`.
    pub fn train_config(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup_steps: self.warmup_steps.unwrap_or(self.steps / 10),
            clip_norm: (self.clip_norm > 0.0).then_some(self.clip_norm),
            seed,
            grad_checkpoint: self.grad_checkpoint,
            backward: None,
        }
    }

    /// Checks the numbers and their combination with the adapter's resolved options; `key` names
    /// where they came from (`train.` in a recipe, `--` on the command line).
    pub fn validate(&self, adapter: &Options, key: &str) -> Result<()> {
        // Command-line flags spell words with hyphens, recipe keys with underscores.
        let k = |name: &str| {
            if key.starts_with("--") {
                format!("{key}{}", name.replace('_', "-"))
            } else {
                format!("{key}{name}")
            }
        };
        for (name, value, least) in [
            ("steps", self.steps, 1),
            ("batch_size", self.batch_size, 1),
            ("grad_accum", self.grad_accum, 1),
            ("seq_len", self.seq_len, 2),
        ] {
            if value < least {
                return Err(bad_input!("{} is {value}; give at least {least}", k(name)));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(bad_input!("{} is {}; give a positive learning rate such as 2e-4", k("lr"), self.lr));
        }
        if !(self.clip_norm >= 0.0 && self.clip_norm.is_finite()) {
            return Err(bad_input!(
                "{} is {}; give a positive gradient-norm bound such as 1.0, or 0 to turn clipping off",
                k("clip_norm"),
                self.clip_norm
            ));
        }
        if !(0.0..=1.0).contains(&self.distill_alpha) {
            return Err(bad_input!(
                "{} is {}; give a share in [0, 1]",
                k("distill_alpha"),
                self.distill_alpha
            ));
        }
        if self.distill_temperature.is_nan() || self.distill_temperature <= 0.0 {
            return Err(bad_input!(
                "{} is {}; give a positive temperature such as 2.0",
                k("distill_temperature"),
                self.distill_temperature
            ));
        }
        if self.grad_checkpoint
            && adapter.values().get("dropout").and_then(Value::as_f64).is_some_and(|d| d > 0.0)
        {
            return Err(bad_input!(
                "{} and the adapter's dropout contradict: recomputed layers would draw new dropout masks; use dropout=0",
                k("grad_checkpoint")
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorSection {
    /// Evaluator name (`forge list`).
    pub name: String,
    /// Data its windows come from, if it reads data.
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub options: OptionTable,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSection {
    /// The metric the guard watches (`perplexity:code-valid`) [default: the first perplexity].
    pub metric: Option<String>,
    /// A cycle whose metric ends more than this fraction worse than the previous cycle's is rolled
    /// back and the run stops there.
    #[serde(default = "d_increase")]
    pub max_increase: f64,
    /// Nor may a cycle end more than this fraction worse than the unpruned baseline, so cycles cannot
    /// drift a step at a time (each within `max_increase` of the last); a negative value turns this
    /// guard off.
    #[serde(default = "d_increase")]
    pub max_increase_over_baseline: f64,
}

impl Default for GuardSection {
    fn default() -> Self {
        GuardSection { metric: None, max_increase: d_increase(), max_increase_over_baseline: d_increase() }
    }
}

fn default_evaluators() -> Vec<EvaluatorSection> {
    vec![EvaluatorSection { name: "samples".into(), data: None, options: OptionTable::new() }]
}
fn d_1() -> usize {
    1
}
fn d_batch() -> usize {
    defaults::BATCH_SIZE
}
fn d_eval_windows() -> usize {
    defaults::EVAL_WINDOWS
}
fn d_eval_seq_len() -> usize {
    defaults::EVAL_SEQ_LEN
}
fn d_calib_windows() -> usize {
    defaults::CALIB_WINDOWS
}
fn d_calib_seq_len() -> usize {
    defaults::CALIB_SEQ_LEN
}
fn d_train_seq_len() -> usize {
    defaults::TRAIN_SEQ_LEN
}
fn d_steps() -> usize {
    defaults::TRAIN_STEPS
}
fn d_lr() -> f64 {
    defaults::LR
}
fn d_clip() -> f64 {
    defaults::CLIP_NORM
}
fn d_alpha() -> f64 {
    defaults::DISTILL_ALPHA
}
fn d_temperature() -> f64 {
    defaults::DISTILL_TEMPERATURE
}
fn d_increase() -> f64 {
    defaults::GUARD_MAX_INCREASE
}
fn d_compact() -> SaveMode {
    SaveMode::Compact
}
fn d_lora() -> String {
    "lora".into()
}
fn d_adamw() -> String {
    "adamw".into()
}

/// The name a metric of evaluator `e` gets in reports: `metric:data-stem`, or `metric` without data.
pub fn metric_key(e: &EvaluatorSection, metric: &str) -> String {
    match &e.data {
        Some(path) => {
            format!("{metric}:{}", path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default())
        }
        None => metric.to_string(),
    }
}

impl Recipe {
    /// Reads a recipe and applies `KEY.PATH=VALUE` overrides (values in TOML syntax, else strings).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut value: toml::Table =
            toml::from_str(&text).map_err(|e| bad_input!("{} is not valid TOML: {e}", path.display()))?;
        for item in overrides {
            let (key, raw) =
                item.split_once('=').ok_or_else(|| bad_input!("--set `{item}` is not KEY=VALUE"))?;
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            set_path(&mut value, key.trim(), parsed)?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut recipe: Recipe =
            serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
                bad_input!("{}: recipe key `{}`: {}", path.display(), e.path(), e.inner().message().trim())
            })?;
        recipe.resolve_paths(base);
        Ok(recipe)
    }

    /// Paths in a recipe are relative to the working directory when they exist from there, else to
    /// the recipe's folder.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.exists() && base.join(&*p).exists() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.model);
        fix(&mut self.data.train);
        if let Some(c) = &mut self.data.calibration {
            fix(c);
        }
        for e in &mut self.evaluate {
            if let Some(d) = &mut e.data {
                fix(d);
            }
        }
    }

    /// Checks everything that can be checked without loading the model — files, names, options,
    /// numbers and their combinations, the model's context and the adapter against its layers — and
    /// returns what training will hold, for the memory budget.
    pub fn validate(&self, registry: &Registry, config: &ModelConfig) -> Result<TrainState> {
        self.validate_files()?;
        self.validate_numbers(config)?;
        let t = &self.train;
        let resolve = |kind: StrategyKind, key: &str, name: &str, options: &OptionTable| -> Result<Options> {
            let entry = registry.find(kind, name).map_err(|e| bad_input!("recipe key `{key}`: {e}"))?;
            Options::resolve(&format!("{} `{name}`", kind.name()), &entry.info.options, options)
                .map_err(|e| bad_input!("recipe key `{key}`: {e}"))
        };
        resolve(StrategyKind::Scorer, "score.scorer", &self.score.scorer, &self.score.options)?;
        if let Some(name) = &self.score.layer_scorer {
            resolve(StrategyKind::Scorer, "score.layer_scorer", name, &OptionTable::new())?;
        }
        resolve(StrategyKind::Pruner, "prune.pruner", &self.prune.pruner, &self.prune.options)?;
        let adapter_options =
            resolve(StrategyKind::Adapter, "train.adapter", &t.adapter, &t.adapter_options)?;
        t.validate(&adapter_options, "train.")?;
        for (i, e) in self.evaluate.iter().enumerate() {
            resolve(StrategyKind::Evaluator, &format!("evaluate[{i}].name"), &e.name, &e.options)?;
        }
        self.validate_guard()?;
        let (adapter, _) = registry.adapter(&t.adapter, &t.adapter_options)?;
        let (optimizer, _) = registry.optimizer(&t.optimizer, &t.optimizer_options)?;
        let values = adapter
            .trainable_values(config)
            .map_err(|e| bad_input!("recipe key `train.adapter_options`: {e}"))?;
        Ok(TrainState { values: values as u64, optimizer_bytes_per_value: optimizer.state_bytes_per_value() })
    }

    fn validate_files(&self) -> Result<()> {
        let mut files = vec![("data.train".to_string(), &self.data.train)];
        files.extend(self.data.calibration.iter().map(|c| ("data.calibration".to_string(), c)));
        for (i, e) in self.evaluate.iter().enumerate() {
            files.extend(e.data.iter().map(|d| (format!("evaluate[{i}].data"), d)));
        }
        for (key, path) in files {
            if !path.is_file() {
                return Err(bad_input!("recipe key `{key}`: {} is not a file", path.display()));
            }
        }
        if !self.model.is_dir() {
            return Err(bad_input!("recipe key `model`: {} is not a model folder", self.model.display()));
        }
        Ok(())
    }

    fn validate_numbers(&self, config: &ModelConfig) -> Result<()> {
        let (d, s) = (&self.data, &self.score);
        let counts = [
            ("data.eval_windows", d.eval_windows, 1),
            ("data.eval_seq_len", d.eval_seq_len, 2),
            ("score.calib_windows", s.calib_windows, 1),
            ("score.calib_seq_len", s.calib_seq_len, 2),
            ("score.calib_batch_size", s.calib_batch_size, 1),
        ];
        for (key, value, least) in counts {
            if value < least {
                return Err(bad_input!("recipe key `{key}` is {value}; give at least {least}"));
            }
        }
        for (key, len) in [
            ("data.eval_seq_len", d.eval_seq_len),
            ("score.calib_seq_len", s.calib_seq_len),
            ("train.seq_len", self.train.seq_len),
        ] {
            config.check_context(len, &format!("recipe key `{key}`"))?;
        }
        let p = &self.prune;
        if !(p.ratio_per_cycle > 0.0 && p.ratio_per_cycle < 1.0) {
            return Err(bad_input!(
                "recipe key `prune.ratio_per_cycle` is {}; it must be in (0, 1)",
                p.ratio_per_cycle
            ));
        }
        if p.cycles == 0 {
            return Err(bad_input!("recipe key `prune.cycles` is 0; give at least 1"));
        }
        if p.ratio_per_cycle * p.cycles as f64 >= 1.0 {
            return Err(bad_input!(
                "recipe keys `prune.ratio_per_cycle` ({}) × `prune.cycles` ({}) would remove every head; keep the product below 1",
                p.ratio_per_cycle,
                p.cycles
            ));
        }
        Ok(())
    }

    fn validate_guard(&self) -> Result<()> {
        let g = &self.guard;
        for (key, value) in [
            ("guard.max_increase", g.max_increase),
            ("guard.max_increase_over_baseline", g.max_increase_over_baseline),
        ] {
            if !value.is_finite() {
                return Err(bad_input!("recipe key `{key}` is {value}; give a fraction such as 0.10"));
            }
        }
        let metric = self.guard_metric();
        let known: Vec<String> =
            self.evaluate.iter().filter(|e| e.data.is_some()).map(|e| metric_key(e, "perplexity")).collect();
        if !known.contains(&metric) {
            return Err(bad_input!(
                "recipe key `guard.metric` is `{metric}`, which no evaluator produces; known: {}",
                if known.is_empty() {
                    "none (add a perplexity evaluator with data)".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        Ok(())
    }

    /// The metric the guard watches.
    pub fn guard_metric(&self) -> String {
        self.guard.metric.clone().unwrap_or_else(|| {
            self.evaluate
                .iter()
                .find(|e| e.name == "perplexity" && e.data.is_some())
                .map(|e| metric_key(e, "perplexity"))
                .unwrap_or_else(|| "perplexity".into())
        })
    }

    /// The recipe as TOML (after overrides), for the executed-recipe record.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("recipes serialise")
    }
}

/// Sets `a.b.c` in a TOML table, creating tables on the way.
fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_string(), value);
            return Ok(());
        }
        current = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| bad_input!("--set `{key}`: `{part}` is not a table in the recipe"))?;
    }
    Err(bad_input!("--set has an empty key"))
}
