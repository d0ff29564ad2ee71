//! `forge train`: train an adapter (LoRA by default) on a data file and write it in PEFT's layout.
use std::path::PathBuf;

use clap::Args;

use crate::defaults;
use forge_api::Options;
use serde::Serialize;

use super::{ModelArgs, Runtime};
use crate::data::{Documents, TokenWindows};
use crate::eval::{perplexity, PerplexityReport};
use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::outputs::write_json_atomic;
use crate::pipeline::TrainSection;
use crate::runtime::DeviceChoice;
use crate::strategies::adapters::AttachedAdapter;
use crate::strategies::Registry;
use crate::tokenizer::Tokenizer;
use crate::training::{
    check_devices, gpu_ranks, launch, load_teacher, save_optimizer_state, train, Backprop, Communicator,
    Distill, LocalGroup, RankSpec, TrainConfig, TrainInputs, TrainReport, OPTIMIZER_STATE_FILE,
};
use crate::{bad_input, Result};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training data: JSONL (`{"text": ...}` a line) or plain text.
    #[arg(long)]
    data: PathBuf,
    /// Data-parallel training over these devices, comma-separated: each rank trains on its share of
    /// every batch (--batch-size stays the global batch) and one all-reduce a step averages the
    /// adapter's gradients, so the result equals one device's. GPUs (cuda:0,cuda:1) run one forge
    /// process each over NCCL (libnccl.so.2, loaded at run time); `cpu,cpu` runs CPU ranks in this
    /// process.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<DeviceChoice>,
    /// Output folder: adapter_model.safetensors and adapter_config.json (PEFT's layout), optimizer state.
    #[arg(long)]
    out: PathBuf,
    /// Adapter (`forge list` shows them).
    #[arg(long, default_value = "lora")]
    adapter: String,
    /// An option of the adapter, KEY=VALUE (repeatable).
    #[arg(long = "adapter-opt", value_name = "KEY=VALUE")]
    adapter_opts: Vec<String>,
    /// LoRA rank (the adapter's `rank` option).
    #[arg(long)]
    rank: Option<u64>,
    /// LoRA alpha (the adapter's `alpha` option) [default: 2 × rank].
    #[arg(long)]
    alpha: Option<f64>,
    /// Layers to adapt: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, attention, mlp or all-linear.
    #[arg(long)]
    targets: Option<String>,
    /// Optimizer: adamw or adamw8bit (8-bit moments, about 4x less state).
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// An option of the optimizer, KEY=VALUE (repeatable): beta1, beta2, eps, weight-decay.
    #[arg(long = "optimizer-opt", value_name = "KEY=VALUE")]
    optimizer_opts: Vec<String>,
    /// Peak learning rate (after warm-up; cosine decay to zero at the last step).
    #[arg(long, default_value_t = defaults::LR)]
    lr: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = defaults::TRAIN_STEPS)]
    steps: usize,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    batch_size: usize,
    /// Tokens per training window.
    #[arg(long, default_value_t = defaults::TRAIN_SEQ_LEN)]
    seq_len: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Warm-up steps [default: a tenth of --steps].
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    #[arg(long, default_value_t = defaults::CLIP_NORM)]
    clip_norm: f64,
    /// Recompute each decoder layer in the backward pass instead of storing its activations (less memory, more time).
    #[arg(long)]
    grad_checkpoint: bool,
    /// How the frozen base weights of the decoder's linear layers are held. `int8` (with
    /// --grad-checkpoint): rows of int8 codes, one scale a row, made dense a layer at a time:
    /// half of bf16's memory, e.g. qwen3.5-27b's 50 GiB of linear weights in 25 (QLoRA's idea). The
    /// adapter then learns against that rounded base; apply it to the model as usual. Embeddings and the
    /// head stay as loaded.
    #[arg(long, value_enum, default_value_t = FrozenBase::Model)]
    frozen_base: FrozenBase,
    /// The backward pass: `tape`, forge's own, layer by layer, each op's backward and gradients kept
    /// where they arrive; `graph`, candle's autograd (every node's gradient made as zeros, then added
    /// to). The same losses and gradients, up to the order a tensor's gradients are summed in
    /// [default: tape on a GPU, graph on the CPU, the faster on each].
    #[arg(long, value_enum)]
    backward: Option<Backprop>,
    /// Distil from a teacher's logits: `base` (the model as loaded, before --mask and the adapter,
    /// sharing its weights) or another model folder with the same vocabulary.
    #[arg(long)]
    teacher: Option<String>,
    /// With --teacher: the loss is `(1 − A) · CE + A · T² · KL(teacher ‖ student)`.
    #[arg(long, default_value_t = defaults::DISTILL_ALPHA, requires = "teacher")]
    distill_alpha: f64,
    /// With --teacher: the temperature T both distributions are softened by.
    #[arg(long, default_value_t = defaults::DISTILL_TEMPERATURE, requires = "teacher")]
    distill_temperature: f64,
    /// Evaluate perplexity on this data before and after training.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Windows of --eval-data to score.
    #[arg(long, default_value_t = defaults::EVAL_WINDOWS)]
    eval_windows: usize,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = defaults::EVAL_SEQ_LEN)]
    eval_seq_len: usize,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

/// `--frozen-base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum FrozenBase {
    /// As loaded (--dtype).
    Model,
    /// int8 rows with an f32 scale each.
    Int8,
}

#[derive(Serialize)]
struct TrainOutput {
    #[serde(flatten)]
    report: TrainReport,
    /// The data-parallel ranks' devices (`--devices`), empty for one device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    devices: Vec<String>,
    adapter: String,
    adapter_options: Options,
    optimizer: String,
    optimizer_options: Options,
    optimizer_state_bytes: usize,
    frozen_base: FrozenBase,
    config: TrainConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval: Option<BeforeAfter>,
    out: PathBuf,
}

#[derive(Serialize)]
struct BeforeAfter {
    before: PerplexityReport,
    after: PerplexityReport,
}

fn eval_windows(path: &std::path::Path, tokenizer: &Tokenizer, args: &TrainArgs) -> Result<TokenWindows> {
    TokenWindows::from_documents(
        Documents::open(path)?,
        tokenizer,
        args.eval_seq_len,
        Some(args.eval_windows),
    )
}

fn evaluate(model: &CausalLm, windows: &TokenWindows, quiet: bool) -> Result<PerplexityReport> {
    perplexity(model, windows, defaults::BATCH_SIZE, 0, quiet)
}

impl TrainArgs {
    /// The number of data-parallel ranks (`--devices`, or the group this process is a rank of),
    /// checked: GPUs named once each, and a batch that splits evenly.
    fn world(&self, rank: Option<&RankSpec>) -> Result<usize> {
        let world = rank.map_or(self.devices.len().max(1), |r| r.world);
        if gpu_ranks(&self.devices) {
            check_devices(&self.devices)?;
        }
        if !self.batch_size.is_multiple_of(world) {
            return Err(bad_input!(
                "--batch-size {} does not split over the {world} ranks of --devices; give a multiple of {world}",
                self.batch_size
            ));
        }
        Ok(world)
    }

    /// The flags as the recipe's `[train]` section, so both are checked by one rule.
    fn section(
        &self,
        adapter_options: std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<TrainSection> {
        Ok(TrainSection {
            adapter: self.adapter.clone(),
            adapter_options,
            optimizer: self.optimizer.clone(),
            optimizer_options: Options::parse_pairs(&self.optimizer_opts)?,
            steps: self.steps,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            clip_norm: self.clip_norm,
            grad_checkpoint: self.grad_checkpoint,
            teacher: self.teacher.clone(),
            distill_alpha: self.distill_alpha,
            distill_temperature: self.distill_temperature,
        })
    }

    /// The distillation `--teacher` asks for, from its loaded `teacher`.
    fn distill<'a>(&self, teacher: Option<&'a CausalLm>) -> Option<Distill<'a>> {
        teacher.map(|teacher| Distill {
            teacher,
            alpha: self.distill_alpha,
            temperature: self.distill_temperature,
        })
    }

    /// The adapter's options: `--adapter-opt` pairs, with `--rank`, `--alpha` and `--targets` on top.
    fn adapter_given(&self) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
        let mut given = Options::parse_pairs(&self.adapter_opts)?;
        let shorthands = [
            ("rank", self.rank.map(serde_json::Value::from)),
            ("alpha", self.alpha.map(serde_json::Value::from)),
            ("targets", self.targets.clone().map(serde_json::Value::from)),
        ];
        for (key, value) in shorthands {
            if let Some(v) = value {
                given.insert(key.to_string(), v);
            }
        }
        Ok(given)
    }
}

pub fn run(args: TrainArgs, rt: &Runtime, registry: &Registry) -> Result<()> {
    let adapter_given = args.adapter_given()?;
    let (adapter, adapter_options) = registry.adapter(&args.adapter, &adapter_given)?;
    let (_, optimizer_options) =
        registry.optimizer(&args.optimizer, &Options::parse_pairs(&args.optimizer_opts)?)?;
    let section = args.section(adapter_given)?;
    section.validate(&adapter_options, "--")?;
    if args.frozen_base == FrozenBase::Int8 && !args.grad_checkpoint {
        // The products' backward closures hold the dense weight they used until the graph goes:
        // without checkpointing that is every layer's at once.
        return Err(bad_input!(
            "--frozen-base int8 needs --grad-checkpoint: without it the backward keeps every layer's \
             dense weights at once and int8 would save no memory; add --grad-checkpoint"
        ));
    }
    let config = TrainConfig { backward: args.backward, ..section.train_config(rt.seed) };
    let rank = RankSpec::from_env()?;
    let world = args.world(rank.as_ref())?;
    let folder = args.model.open(&[])?;
    folder.config.check_context(args.seq_len, "--seq-len")?;
    if args.eval_data.is_some() {
        folder.config.check_context(args.eval_seq_len, "--eval-seq-len")?;
    }
    adapter.trainable_values(&folder.config)?;
    crate::outputs::check_out(&args.out, &[args.model.model.as_path()], "--out")?;
    if gpu_ranks(&args.devices) {
        return launch(&args.devices, None);
    }
    let tokenizer = folder.tokenizer()?;
    let windows = TokenWindows::from_documents(Documents::open(&args.data)?, &tokenizer, args.seq_len, None)?;
    let eval_set = args.eval_data.as_ref().map(|p| eval_windows(p, &tokenizer, &args)).transpose()?;
    let job = RankJob { args: &args, rt, registry, folder: &folder, windows: &windows, config: &config };
    let lead = match (&rank, world) {
        (Some(spec), _) => {
            let lead = job.train(Some(spec.join(&rt.device)?.as_ref()), eval_set.as_ref())?;
            // Rank 0 alone writes and reports.
            if spec.rank > 0 {
                return Ok(());
            }
            lead
        }
        (None, 1) => job.train(None, eval_set.as_ref())?,
        (None, _) => LocalGroup::run(world, |rank| job.train(Some(rank), eval_set.as_ref()))?,
    };
    let Lead { attached, optimizer, report, before, after } = lead;
    attached.save(&args.out)?;
    save_optimizer_state(&args.out.join(OPTIMIZER_STATE_FILE), &optimizer.state()?)?;
    let output = TrainOutput {
        report,
        devices: args.devices.iter().map(ToString::to_string).collect(),
        adapter: args.adapter.clone(),
        adapter_options,
        optimizer: args.optimizer.clone(),
        optimizer_state_bytes: optimizer.state_bytes(),
        optimizer_options,
        frozen_base: args.frozen_base,
        config,
        eval: before.zip(after).map(|(before, after)| BeforeAfter { before, after }),
        out: args.out.clone(),
    };
    write_json_atomic(&args.out.join("training.json"), &output)?;
    super::emit(&output, args.json, |o| {
        let eval = o.eval.as_ref().map_or(String::new(), |e| {
            format!("; perplexity {:.4} → {:.4}", e.before.perplexity, e.after.perplexity)
        });
        format!(
            "{} steps: loss {:.4} → {:.4}, {:.0} tokens/s{eval}; adapter in {}",
            o.report.steps,
            o.report.loss_first,
            o.report.loss_last,
            o.report.tokens_per_s,
            o.out.display()
        )
    });
    Ok(())
}

/// What rank 0 keeps of its training: what is saved and reported.
struct Lead {
    attached: Box<dyn AttachedAdapter>,
    optimizer: Box<dyn crate::strategies::TrainOptimizer>,
    report: TrainReport,
    before: Option<PerplexityReport>,
    after: Option<PerplexityReport>,
}

/// The inputs every rank trains from.
struct RankJob<'a> {
    args: &'a TrainArgs,
    rt: &'a Runtime,
    registry: &'a Registry,
    folder: &'a ModelFolder,
    windows: &'a TokenWindows,
    config: &'a TrainConfig,
}

impl RankJob<'_> {
    /// One rank's training (all of it without `comm`): its own model, adapter (initialised alike on
    /// every rank from the seed), optimizer and teacher. Rank 0 also evaluates `eval_set` before and
    /// after, and alone shows progress.
    fn train(&self, comm: Option<&dyn Communicator>, eval_set: Option<&TokenWindows>) -> Result<Lead> {
        let (args, rt) = (self.args, self.rt);
        let lead = comm.is_none_or(|c| c.rank() == 0);
        let quiet = rt.quiet || !lead;
        let mut model = args.model.build(self.folder, rt)?;
        if args.frozen_base == FrozenBase::Int8 {
            let saved = model.quantize_frozen_base()?;
            tracing::info!("frozen base in int8 rows: {:.2} GiB less", saved as f64 / (1u64 << 30) as f64);
        }
        let teacher = args
            .teacher
            .as_deref()
            .map(|name| {
                load_teacher(name, &model, (&args.model.model, &args.model.model), (rt.dtype, &rt.device))
            })
            .transpose()?;
        let (adapter, _) = self.registry.adapter(&args.adapter, &args.adapter_given()?)?;
        let (mut optimizer, _) =
            self.registry.optimizer(&args.optimizer, &Options::parse_pairs(&args.optimizer_opts)?)?;
        let attached = adapter.attach(&mut model, rt.seed)?;
        let eval_set = eval_set.filter(|_| lead);
        let before = eval_set.map(|w| evaluate(&model, w, quiet)).transpose()?;
        attached.set_training(true);
        let params = attached.parameters();
        let inputs = TrainInputs {
            model: &model,
            params: &params,
            windows: self.windows,
            config: self.config,
            quiet,
            distill: args.distill(teacher.as_ref()),
            comm,
        };
        let report = train(&inputs, optimizer.as_mut())?;
        attached.set_training(false);
        let after = eval_set.map(|w| evaluate(&model, w, quiet)).transpose()?;
        Ok(Lead { attached, optimizer, report, before, after })
    }
}
