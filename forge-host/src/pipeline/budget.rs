//! Memory estimates per phase, checked against `--memory-budget` before anything is allocated.
//!
//! Each estimate is a sum of named parts computed from the geometry and the recipe: weights, the
//! activations a phase keeps alive (per layer for training without checkpointing, one layer with it),
//! the largest transient (attention scores, a vocabulary chunk of logits), adapter and optimizer state,
//! and a fixed process overhead. The numbers are deliberately conservative (an over-estimate refuses
//! a run that would have fitted; an under-estimate is an OOM, which is what this exists to prevent).
//!
//! Hybrid models (Qwen3.5) mix two kinds of layer, and a phase's transient is the larger kind's: the
//! full-attention layers' scores grow with the square of the sequence, the linear-attention layers'
//! recurrent state `(batch, value_heads, key_dim, value_dim)` in f32 is constant in it, beside their
//! wider projections (the convolution's channels, the f32 outputs of the delta rule).
use candle_core::{DType, Device};

use super::recipe::{OptionTable, Recipe, TrainState};
use crate::autograd::rows_per_chunk;
use crate::loader::{LayerKind, ModelConfig};

/// A phase's estimated peak, with its parts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Estimate {
    /// load, score, train or eval.
    pub phase: &'static str,
    /// (part, bytes).
    pub parts: Vec<(&'static str, u64)>,
    /// What to change to need less.
    pub knob: &'static str,
}

impl Estimate {
    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|p| p.1).sum()
    }
}

/// Process overhead: binary, tokenizer and its encodings, token buffers, allocator slack. (A full
/// tiny-qwen3 run on the CPU peaked at 1.42 GiB where 300 MiB here gave a 1.29 GiB train estimate;
/// 512 MiB keeps the estimate above what was measured.)
const OVERHEAD: u64 = 512 << 20;

/// Bytes live at once inside one decoder layer for `batch` windows of `seq` tokens: the larger of an
/// attention layer's (f32 attention scores and their softmax, the MLP's three intermediate tensors, a
/// few residual-width tensors) and, in a hybrid, a linear-attention layer's.
fn layer_transient(c: &ModelConfig, batch: usize, seq: usize, bytes: u64) -> u64 {
    let tokens = (batch * seq) as u64;
    let scores = batch as u64 * widest_heads(c) * (seq as u64).pow(2) * 4 * 4;
    let mlp_and_residual = tokens * (c.intermediate as u64 * 3 + c.hidden as u64 * 8) * bytes;
    scores.max(linear_attention_transient(c, batch, seq, bytes)) + mlp_and_residual
}

/// The largest Gated DeltaNet layer's own tensors (0 in a dense model): the projections, the
/// convolution's input and output, the delta rule's f32 outputs and the recurrent state before and
/// after (f32, constant in the sequence length). Layers differ after uneven pruning.
fn linear_attention_transient(c: &ModelConfig, batch: usize, seq: usize, bytes: u64) -> u64 {
    let Some(h) = &c.hybrid else { return 0 };
    let tokens = (batch * seq) as u64;
    let layer = |l: usize| {
        let values = h.value_width(l) as u64;
        let projections = tokens * (2 * h.conv_channels(l) as u64 + 3 * values) * bytes + tokens * values * 4;
        projections + recurrent_state(h, l, batch) * 2
    };
    (0..c.layers).filter(|&l| c.layer_kind(l) == LayerKind::Linear).map(layer).max().unwrap_or(0)
}

/// Bytes of the recurrent state of linear-attention layer `layer` for `batch` sequences (f32), what
/// a generation cache keeps per layer whatever the length.
fn recurrent_state(h: &crate::loader::Hybrid, layer: usize, batch: usize) -> u64 {
    (batch * h.value_heads[layer] * h.key_dim * h.value_dim * 4) as u64
}

/// Bytes one layer keeps for its backward pass (everything its graph holds).
fn layer_saved(c: &ModelConfig, batch: usize, seq: usize, bytes: u64) -> u64 {
    2 * layer_transient(c, batch, seq, bytes)
}

fn logits_chunk(c: &ModelConfig, rows: usize) -> u64 {
    (rows_per_chunk(c.vocab).min(rows) * c.vocab * 4 * 3) as u64
}

/// Estimates for every phase of `recipe` on a model of `config` run in `dtype` on `device`.
pub fn estimate(
    recipe: &Recipe,
    config: &ModelConfig,
    parameters: u64,
    (dtype, device): (DType, &Device),
    state: TrainState,
) -> Vec<Estimate> {
    let bytes = dtype.size_in_bytes() as u64;
    let weights = parameters * bytes;
    let s = &recipe.score;
    let adapter = state.bytes();
    // Scoring differentiates through every layer (taylor) or only observes them: budget the former.
    let score = config.layers as u64 * layer_saved(config, s.calib_batch_size, s.calib_seq_len, bytes)
        + logits_chunk(config, s.calib_batch_size * s.calib_seq_len) * 2;
    vec![
        Estimate {
            phase: "load",
            parts: vec![("weights", weights), ("overhead", OVERHEAD)],
            knob: "a smaller model or --dtype bf16",
        },
        eval_estimate(config, parameters, (dtype, device), (4, recipe.data.eval_seq_len)),
        Estimate {
            phase: "score",
            parts: vec![("weights", weights), ("activations and gradients", score), ("overhead", OVERHEAD)],
            knob: "a smaller score.calib_batch_size or score.calib_seq_len",
        },
        train_estimate(recipe, config, (weights, bytes), !device.is_cpu() && dtype == DType::BF16, adapter),
    ]
}

/// The train phase's estimate. `fused`: forge's CUDA path (bf16 on a GPU), where the graph keeps only
/// what the hand-written backward passes need, counted tensor by tensor; elsewhere the conservative
/// per-layer bound serves (the CPU's peak is the process's resident set, which the tests hold the
/// estimate above).
fn train_estimate(
    recipe: &Recipe,
    config: &ModelConfig,
    (weights, bytes): (u64, u64),
    fused: bool,
    adapter: u64,
) -> Estimate {
    let t = &recipe.train;
    let tokens = t.batch_size * t.seq_len;
    let (saved, transient) = if fused {
        let mlp_adapted = adapts_mlp(&t.adapter_options);
        (
            fused_train_saved(config, t.batch_size, t.seq_len, mlp_adapted),
            fused_train_transient(config, t.batch_size, t.seq_len),
        )
    } else {
        // The per-layer bound counts a layer's working set in what it keeps; checkpointing budgets
        // the recomputed layer's twice, as this bound always has.
        let saved = layer_saved(config, t.batch_size, t.seq_len, bytes);
        (saved, if t.grad_checkpoint { saved } else { 0 })
    };
    let (activations, knob) = if t.grad_checkpoint {
        (
            config.layers as u64 * tokens as u64 * config.hidden as u64 * bytes + saved + transient,
            "a smaller train.batch_size or train.seq_len",
        )
    } else {
        (
            config.layers as u64 * saved + transient,
            "train.grad_checkpoint = true, or a smaller train.batch_size or train.seq_len",
        )
    };
    // Slack on the GPU: qwen3-1.7b's measured peak came within 1% of the tensor count.
    let activations = if fused { activations + activations / 10 } else { activations };
    let train = activations + logits_chunk(config, tokens) * 2;
    Estimate { phase: "train", parts: train_parts(recipe, config, (weights, bytes), train, adapter), knob }
}

/// The train phase's parts. A teacher (distillation) adds its forward, run without a graph (one
/// layer's tensors and its share of the KL's logit chunks), and its weights: a cycle after the first
/// trains a model other than the unpruned one, so `base` is loaded beside it.
fn train_parts(
    recipe: &Recipe,
    config: &ModelConfig,
    (weights, bytes): (u64, u64),
    activations: u64,
    adapter: u64,
) -> Vec<(&'static str, u64)> {
    let t = &recipe.train;
    let mut parts =
        vec![("weights", weights), ("activations", activations), ("adapter and optimizer", adapter)];
    if t.teacher.is_some() {
        let forward = layer_transient(config, t.batch_size, t.seq_len, bytes)
            + logits_chunk(config, t.batch_size * t.seq_len) * 2;
        parts.extend([("teacher weights", weights), ("teacher forward", forward)]);
    }
    parts.push(("overhead", OVERHEAD));
    parts
}

/// Whether the adapter's `targets` reach the MLP (unknown targets, such as a plugin's, count as yes).
fn adapts_mlp(options: &OptionTable) -> bool {
    options.get("targets").and_then(|v| v.as_str()).is_none_or(|t| {
        ["all-linear", "mlp", "gate_proj", "up_proj", "down_proj"].iter().any(|m| t.contains(m))
    })
}

/// Bytes one decoder layer keeps for its backward on forge's CUDA path (bf16): the two norms'
/// inputs and the normed input the q/k/v adapters read; q and k before and after their norm and
/// rotation, and v; the attention output o_proj's adapter reads; the fused SwiGLU's gate and up
/// (frozen products keep no input, and attention only q, k and v: its backward recomputes the
/// probabilities); with the MLP adapted, its normed input and the down projection's input too. A
/// Gated DeltaNet layer keeps its own tensors in place of attention's. (qwen2.5-0.5b at 8 × 1024,
/// measured: 4.84 GiB in all on an H100, 6.28 GiB in a `forge run` on an H200.)
fn fused_train_saved(c: &ModelConfig, batch: usize, seq: usize, mlp_adapted: bool) -> u64 {
    let tokens = (batch * seq) as u64;
    let (hidden, inter) = (c.hidden as u64, c.intermediate as u64);
    let (heads, qkv) = (widest_heads(c), qkv_width(c));
    let mlp = 2 * inter + if mlp_adapted { hidden + inter } else { 0 };
    let attention = tokens * (3 * hidden + 2 * qkv + heads * c.head_dim as u64 + mlp) * 2;
    let linear = linear_attention_transient(c, batch, seq, 2)
        + tokens * widest_values(c) * 4 * DELTA_RULE_SAVED
        + tokens * (3 * hidden + mlp) * 2;
    attention.max(linear)
}

/// f32 tensors of a linear-attention layer's value width that its backward keeps per token beyond
/// its projections (the delta rule's inputs in f32, its chunk-local products, the gate and the
/// convolution's input). Measured, not counted: qwen3.5-0.8b at 8 × 1024 peaked at 27.78 GiB on an
/// H200, which 12 such tensors a token cover.
const DELTA_RULE_SAVED: u64 = 12;

/// The widest linear-attention layer's value width (0 in a dense model).
fn widest_values(c: &ModelConfig) -> u64 {
    let Some(h) = &c.hybrid else { return 0 };
    let linear = (0..c.layers).filter(|&l| c.layer_kind(l) == LayerKind::Linear);
    linear.map(|l| h.value_width(l) as u64).max().unwrap_or(0)
}

/// The largest working set of one layer's backward on forge's CUDA path: attention's recomputed
/// scores, probabilities and their gradient (bf16), or a linear-attention layer's tensors, beside
/// the MLP's gradients.
fn fused_train_transient(c: &ModelConfig, batch: usize, seq: usize) -> u64 {
    let scores = 3 * batch as u64 * widest_heads(c) * (seq as u64).pow(2) * 2;
    let tokens = (batch * seq) as u64;
    scores.max(linear_attention_transient(c, batch, seq, 2)) + 3 * tokens * c.intermediate as u64 * 2
}

/// The most query heads any layer keeps (layers differ after uneven pruning).
fn widest_heads(c: &ModelConfig) -> u64 {
    *c.heads.iter().max().unwrap_or(&1) as u64
}

/// The widest q, k and v projections' outputs together (a gated query's rows counted twice).
fn qkv_width(c: &ModelConfig) -> u64 {
    let kv_heads = *c.kv_heads.iter().max().unwrap_or(&1) as u64;
    widest_heads(c) * c.query_rows_per_head() as u64 + 2 * kv_heads * c.head_dim as u64
}

/// The eval phase's estimate, for `batch` windows of `seq` tokens a forward pass (what `forge eval
/// --memory-budget` checks, and `forge run` with its eval batch of 4). On forge's CUDA path (bf16 on a
/// GPU: the fused softmax, norm and NLL kernels) the peak is counted tensor by tensor:
/// the residual stream plus the largest of one layer's parts and the lm_head chunk, since a layer's
/// tensors are freed before the next. Elsewhere the conservative per-layer transient serves, and the
/// process overhead (the CPU's peak is the whole process's resident set; a GPU pool's holds tensors
/// only).
pub fn eval_estimate(
    config: &ModelConfig,
    parameters: u64,
    (dtype, device): (DType, &Device),
    (batch, seq): (usize, usize),
) -> Estimate {
    let bytes = dtype.size_in_bytes() as u64;
    let fused = !device.is_cpu() && dtype == DType::BF16;
    let (activations, overhead) = if fused {
        (fused_eval_activations(config, batch, seq, bytes), GPU_OVERHEAD)
    } else {
        (layer_transient(config, batch, seq, bytes) + logits_chunk(config, batch * seq), OVERHEAD)
    };
    Estimate {
        phase: "eval",
        parts: vec![("weights", parameters * bytes), ("activations", activations), ("overhead", overhead)],
        knob: "a smaller --batch-size or --seq-len (data.eval_seq_len in a recipe)",
    }
}

/// Allocator slack in a GPU's memory pool (its high-water mark counts tensors, not the process).
const GPU_OVERHEAD: u64 = 64 << 20;

/// The peak of a forward pass on forge's CUDA path: four residual-width tensors (the stream, its norm,
/// a block's output, their sum), plus the largest of the MLP's three intermediates, an attention
/// layer's projections and bf16 scores and probabilities, a linear-attention layer's tensors, and one
/// chunk of bf16 logits.
fn fused_eval_activations(c: &ModelConfig, batch: usize, seq: usize, bytes: u64) -> u64 {
    let tokens = (batch * seq) as u64;
    let residual = 4 * tokens * c.hidden as u64 * bytes;
    let mlp = 3 * tokens * c.intermediate as u64 * bytes;
    let projections = 2 * tokens * qkv_width(c) * bytes;
    let attention = projections + 2 * batch as u64 * widest_heads(c) * (seq as u64).pow(2) * bytes;
    let linear = linear_attention_transient(c, batch, seq, bytes);
    let logits = (rows_per_chunk(c.vocab).min(batch * seq) * c.vocab) as u64 * bytes;
    residual + mlp.max(attention).max(linear).max(logits)
}

/// Parses `12GiB`, `512MiB`, `2GB`, `1000000` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.trim().parse().ok().filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024f64.powi(2),
        "g" | "gb" => 1e9,
        "gib" => 1024f64.powi(3),
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        _ => return None,
    };
    Some((n * scale) as u64)
}

/// Human size.
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(model: &str) -> ModelConfig {
        let path = format!("{}/../examples/{model}/config.json", env!("CARGO_MANIFEST_DIR"));
        ModelConfig::from_json(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn a_hybrid_budgets_its_recurrent_state_constant_in_the_sequence_length() {
        let c = config("tiny-qwen35");
        let h = c.hybrid.clone().unwrap();
        // 8 value heads × 32 × 32 f32 values per sequence.
        assert_eq!(recurrent_state(&h, 0, 3), 3 * 8 * 32 * 32 * 4);
        let at = |seq| linear_attention_transient(&c, 2, seq, 2);
        assert!(at(1) > 2 * recurrent_state(&h, 0, 2));
        // The state's part does not grow with the sequence; the projections' grows linearly.
        assert_eq!(at(3) - at(2), at(2) - at(1));
        assert_eq!(at(1) - (at(2) - at(1)), 2 * recurrent_state(&h, 0, 2));
        assert_eq!(linear_attention_transient(&config("tiny-qwen3"), 2, 8, 2), 0);
    }

    /// A config of a published geometry (the fields forge reads).
    fn geometry(
        arch: &str,
        hidden: usize,
        inter: usize,
        layers: usize,
        (q, kv, dim): (usize, usize, usize),
        extra: Option<serde_json::Value>,
    ) -> ModelConfig {
        let mut json = serde_json::json!({"architectures": [arch], "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": q, "num_key_value_heads": kv, "head_dim": dim,
            "vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
            "tie_word_embeddings": true});
        if let Some(serde_json::Value::Object(extra)) = extra {
            json.as_object_mut().unwrap().extend(extra);
        }
        ModelConfig::from_json(json.to_string().as_bytes()).unwrap()
    }

    /// The CUDA train estimate against the peaks measured on an H200 (`bench/gpu_train_estimate.sh`,
    /// docs/BENCHMARKS.md: LoRA r 16 on q/k/v/o, 8 × 1024, bf16): never below what was measured, and
    /// within 2× of it, so that a GPU's free memory admits what fits. (The per-layer bound it replaces
    /// asked 119.7 GiB where qwen2.5-0.5b peaked at 6.3.)
    #[test]
    fn the_cuda_train_estimate_holds_the_measured_peaks_closely() {
        let qwen35 = serde_json::json!({"layer_types": (0..24).map(|l| if l % 4 == 3 { "full_attention" } else { "linear_attention" }).collect::<Vec<_>>(),
            "linear_num_key_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
            "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "partial_rotary_factor": 0.25, "vocab_size": 248320});
        let measured = [
            (
                "qwen2.5-0.5b",
                geometry("Qwen2ForCausalLM", 896, 4864, 24, (14, 2, 64), None),
                494_032_768u64,
                6.07,
                2.33,
            ),
            (
                "qwen3-1.7b",
                geometry("Qwen3ForCausalLM", 2048, 6144, 28, (16, 8, 128), None),
                1_720_574_976,
                18.45,
                5.89,
            ),
            (
                "qwen3.5-0.8b",
                geometry("Qwen3_5ForCausalLM", 1024, 3584, 24, (8, 2, 256), Some(qwen35)),
                752_393_024,
                27.78,
                4.48,
            ),
        ];
        for (name, config, parameters, plain, checkpointed) in measured {
            for (checkpoint, peak) in [(false, plain), (true, checkpointed)] {
                let text = format!(
                    "model = \"m\"\n[data]\ntrain = \"t\"\n[score]\nscorer = \"l2\"\n[prune]\npruner = \"global\"\n\
                     ratio_per_cycle = 0.1\ncycles = 1\n[train]\nbatch_size = 8\nseq_len = 1024\ngrad_checkpoint = {checkpoint}\n\
                     adapter_options = {{ rank = 16, targets = \"q_proj,k_proj,v_proj,o_proj\" }}\n"
                );
                let recipe: Recipe = toml::from_str(&text).unwrap();
                let got = train_estimate(&recipe, &config, (parameters * 2, 2), true, 0).total() as f64
                    / (1u64 << 30) as f64;
                assert!(
                    got >= peak && got <= 2.0 * peak,
                    "{name} (checkpointing {checkpoint}): estimate {got:.2} GiB against the measured {peak} GiB"
                );
            }
        }
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("12GiB"), Some(12 << 30));
        assert_eq!(parse_size("512 MiB"), Some(512 << 20));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1GiB"), None);
    }
}
