//! The C ABI itself: every type that crosses the library boundary, `#[repr(C)]` and mirrored
//! field for field in `forge-api/include/forge_plugin.h`. Only C types appear here — integers,
//! floats, raw pointers and `extern "C"` function pointers — so neither side depends on how a Rust
//! compiler lays out its own types.
//!
//! Ownership: whoever allocates frees. Strings and arrays passed into a call are borrowed for that
//! call only. Variable-length results travel through a [`ForgeSink`] owned by the receiver, which
//! copies what it is given. Strategy instances are created and destroyed by the plugin. Libraries are
//! never unloaded, so the plugin table and its strings live for the whole process.
use std::ffi::c_void;

/// The ABI's major version. A host refuses a plugin of another major.
pub const ABI_MAJOR: u32 = 1;
/// The ABI's minor version. Minors only append fields and functions; a host accepts a plugin whose
/// minor is at most its own, and reads what a minor appended only from plugins of that minor or later.
/// 1.1 appended unit kinds beyond query heads (`ForgeUnits`; `ForgeScoringHost::extra_units` and
/// `probe_units`; `ForgePrunerMethods::prune_units`).
pub const ABI_MINOR: u32 = 1;
/// The one symbol a plugin exports: `const ForgePlugin *forge_plugin_entry(void)`.
pub const ENTRY_SYMBOL: &str = "forge_plugin_entry";

/// Result of every call across the boundary.
pub type ForgeStatus = i32;
/// The call succeeded.
pub const FORGE_OK: ForgeStatus = 0;
/// The input or options cannot work; the user can fix them.
pub const FORGE_BAD_INPUT: ForgeStatus = 1;
/// Anything else went wrong (including a caught panic).
pub const FORGE_FAILED: ForgeStatus = 2;

/// `ForgeStrategy::kind` of an importance scorer.
pub const FORGE_KIND_SCORER: u32 = 0;
/// `ForgeStrategy::kind` of a pruner.
pub const FORGE_KIND_PRUNER: u32 = 1;
/// `ForgeStrategy::kind` of an adapter (a kernel over flat buffers).
pub const FORGE_KIND_ADAPTER: u32 = 2;
/// `ForgeStrategy::kind` of an optimizer.
pub const FORGE_KIND_OPTIMIZER: u32 = 3;
/// `ForgeStrategy::kind` of an evaluator.
pub const FORGE_KIND_EVALUATOR: u32 = 4;

/// Element types of tensor views and optimizer state.
pub const FORGE_DTYPE_F32: u32 = 0;
/// bfloat16.
pub const FORGE_DTYPE_BF16: u32 = 1;
/// IEEE half.
pub const FORGE_DTYPE_F16: u32 = 2;
/// Unsigned byte.
pub const FORGE_DTYPE_U8: u32 = 3;
/// Unsigned 32-bit integer.
pub const FORGE_DTYPE_U32: u32 = 4;
/// Unsigned 64-bit integer.
pub const FORGE_DTYPE_U64: u32 = 5;

/// Tensor memory in host RAM.
pub const FORGE_DEVICE_CPU: u32 = 0;
/// Tensor memory on a CUDA device (`stream` then names the stream to order work on).
pub const FORGE_DEVICE_CUDA: u32 = 1;

/// Calibration probes a scorer may ask for, each one value per (layer, query head).
pub const FORGE_PROBE_HEAD_OUTPUT_NORMS: u32 = 0;
/// Mean |∂ loss / ∂ head mask|.
pub const FORGE_PROBE_HEAD_MASK_GRADIENTS: u32 = 1;
/// Mean entropy of each head's attention distribution, in nats.
pub const FORGE_PROBE_ATTENTION_ENTROPY: u32 = 2;
/// (1.1, over `FORGE_UNIT_LAYER`) Mean cosine between each layer's input and output hidden states.
pub const FORGE_PROBE_LAYER_COSINE: u32 = 3;

/// Unit kind (1.1): a full-attention query head.
pub const FORGE_UNIT_QUERY_HEAD: u32 = 0;
/// Unit kind (1.1): a linear-attention (Gated DeltaNet) value head; its group is its key head.
pub const FORGE_UNIT_LINEAR_HEAD: u32 = 1;
/// Unit kind (1.1): an MLP channel (`gate_proj`/`up_proj` row, `down_proj` column); its own group.
pub const FORGE_UNIT_MLP_CHANNEL: u32 = 2;
/// Unit kind (1.1): a whole decoder layer (one per layer).
pub const FORGE_UNIT_LAYER: u32 = 3;

/// Prune target: a share of all query heads, in (0, 1).
pub const FORGE_TARGET_RATIO: u32 = 0;
/// Prune target: a number of heads.
pub const FORGE_TARGET_COUNT: u32 = 1;

/// Borrowed UTF-8 text (not NUL-terminated).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeStr {
    /// First byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

/// Where the callee writes a variable-length result: it calls `write` any number of times with
/// `count` elements of the type the call documents; the receiver copies them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeSink {
    /// The receiver's state.
    pub ctx: *mut c_void,
    /// Appends `count` elements at `data`.
    pub write: unsafe extern "C" fn(ctx: *mut c_void, data: *const c_void, count: usize),
}

/// A borrowed tensor: valid until the call that produced it returns.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeTensorView {
    /// `FORGE_DTYPE_*`.
    pub dtype: u32,
    /// `FORGE_DEVICE_*`.
    pub device: u32,
    /// Device ordinal (0 on the CPU).
    pub device_index: i32,
    /// Number of dimensions.
    pub ndim: u32,
    /// `ndim` sizes.
    pub shape: *const u64,
    /// `ndim` strides, in elements.
    pub strides: *const i64,
    /// First element.
    pub data: *mut c_void,
    /// The CUDA stream (`cudaStream_t`) the data is ordered on; null on the CPU.
    pub stream: *mut c_void,
}

/// The model's attention geometry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeGeometry {
    /// Decoder layers.
    pub layers: u64,
    /// Width of one head.
    pub head_dim: u64,
    /// Width of the residual stream.
    pub hidden: u64,
    /// `layers` query-head counts.
    pub heads: *const u64,
    /// `layers` key/value-head counts.
    pub kv_heads: *const u64,
}

/// (1.1) One kind of prunable unit beyond query heads, per layer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeUnits {
    /// `FORGE_UNIT_*`.
    pub kind: u32,
    /// `layers` unit counts (0 in a layer without units of this kind).
    pub counts: *const u64,
    /// `layers` group counts: units share a group in consecutive runs (as query heads share KV heads).
    pub groups: *const u64,
}

/// What a scorer may ask the host for, during one `score` call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeScoringHost {
    /// The host's state; pass it back to every callback.
    pub ctx: *mut c_void,
    /// The model's geometry.
    pub geometry: ForgeGeometry,
    /// The run's seed.
    pub seed: u64,
    /// A weight by its checkpoint name, as an f32 host view valid until `score` returns.
    pub tensor: unsafe extern "C" fn(
        ctx: *mut c_void,
        name: ForgeStr,
        out: *mut ForgeTensorView,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// Fills `out` (`len` = total query heads, layer-major) with probe `FORGE_PROBE_*`.
    pub probe: unsafe extern "C" fn(
        ctx: *mut c_void,
        probe: u32,
        out: *mut f32,
        len: usize,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// (1.1) The model's kinds of units beyond query heads, `extra_unit_count` of them (none for a
    /// plugin of minor 0). A 1.1 scorer's `score` buffer holds the query heads and then each of these
    /// kinds in order, layer-major, filled with NaN: a kind left all NaN is unscored.
    pub extra_units: *const ForgeUnits,
    /// (1.1) Number of `extra_units`.
    pub extra_unit_count: usize,
    /// (1.1) Fills `out` (`len` values, layer-major) with probe `FORGE_PROBE_*` over units of kind
    /// `unit` (`FORGE_UNIT_*`); entropy exists for query heads only.
    pub probe_units: unsafe extern "C" fn(
        ctx: *mut c_void,
        probe: u32,
        unit: u32,
        out: *mut f32,
        len: usize,
        error: *const ForgeSink,
    ) -> ForgeStatus,
}

/// What an evaluator may ask the host for, during one `evaluate` call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeEvalHost {
    /// The host's state; pass it back to every callback.
    pub ctx: *mut c_void,
    /// Token ids (u32, into `ids`) of `text`, without special tokens.
    pub encode: unsafe extern "C" fn(
        ctx: *mut c_void,
        text: ForgeStr,
        ids: *const ForgeSink,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// UTF-8 text (bytes, into `text`) of `len` token ids.
    pub decode: unsafe extern "C" fn(
        ctx: *mut c_void,
        ids: *const u32,
        len: usize,
        text: *const ForgeSink,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// The evaluation windows of `--data`, back to back (u32, into `ids`); `*window_len` tokens each.
    pub windows: unsafe extern "C" fn(
        ctx: *mut c_void,
        ids: *const ForgeSink,
        window_len: *mut usize,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// Next-token log-probabilities of `count` sequences stored back to back in `ids`, sequence `i`
    /// spanning `ids[offsets[i]..offsets[i + 1]]` (at least 2 tokens). Its `len - 1` values go to
    /// `out[offsets[i] - i ..]`: `out` holds `offsets[count] - count` floats.
    pub next_token_logprobs: unsafe extern "C" fn(
        ctx: *mut c_void,
        ids: *const u32,
        offsets: *const usize,
        count: usize,
        out: *mut f32,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// Greedy continuation of `len` prompt ids by up to `max_new_tokens` (new u32 ids into `ids`).
    pub generate: unsafe extern "C" fn(
        ctx: *mut c_void,
        prompt: *const u32,
        len: usize,
        max_new_tokens: usize,
        ids: *const ForgeSink,
        error: *const ForgeSink,
    ) -> ForgeStatus,
}

/// Receives one named piece of optimizer state per call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeStateSink {
    /// The receiver's state.
    pub ctx: *mut c_void,
    /// Copies `count` elements of `dtype` (`FORGE_DTYPE_F32`, `_U8` or `_U64`) at `data`.
    pub add:
        unsafe extern "C" fn(ctx: *mut c_void, name: ForgeStr, dtype: u32, data: *const c_void, count: usize),
}

/// One named piece of optimizer state handed back to the plugin, borrowed for the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeStateEntry {
    /// Its name, as the plugin gave it.
    pub name: ForgeStr,
    /// `FORGE_DTYPE_F32`, `_U8` or `_U64`.
    pub dtype: u32,
    /// First element.
    pub data: *const c_void,
    /// Number of elements.
    pub count: usize,
}

/// Methods of a scorer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeScorerMethods {
    /// Writes one score per query head (`len` = total heads, layer-major) into `scores`; from 1.1,
    /// then one per unit of each of `host.extra_units` (see there).
    pub score: unsafe extern "C" fn(
        instance: *mut c_void,
        host: *const ForgeScoringHost,
        scores: *mut f32,
        len: usize,
        error: *const ForgeSink,
    ) -> ForgeStatus,
}

/// Methods of a pruner.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgePrunerMethods {
    /// Sets `pruned[i]` to 1 for every head to remove (`len` = total heads, layer-major, as `scores`).
    pub prune: unsafe extern "C" fn(
        instance: *mut c_void,
        geometry: *const ForgeGeometry,
        scores: *const f32,
        len: usize,
        target_kind: u32,
        target: f64,
        pruned: *mut u8,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// (1.1, may be null) `prune` over query heads and then `extra_unit_count` more kinds:
    /// `scores` and `pruned` hold them all, kind after kind, each layer-major (a kind whose scores
    /// are all NaN is unscored). A host calls it, when present, in place of `prune`.
    pub prune_units: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            geometry: *const ForgeGeometry,
            extra_units: *const ForgeUnits,
            extra_unit_count: usize,
            scores: *const f32,
            len: usize,
            target_kind: u32,
            target: f64,
            pruned: *mut u8,
            error: *const ForgeSink,
        ) -> ForgeStatus,
    >,
}

/// Methods of an evaluator.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeEvaluatorMethods {
    /// Writes a JSON object of named metrics (UTF-8 bytes) into `metrics`.
    pub evaluate: unsafe extern "C" fn(
        instance: *mut c_void,
        host: *const ForgeEvalHost,
        metrics: *const ForgeSink,
        error: *const ForgeSink,
    ) -> ForgeStatus,
}

/// Methods of an optimizer: a kernel over flat f32 buffers in host memory.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeOptimizerMethods {
    /// Updates parameter `id` (stable across steps) in place from its gradient.
    pub update: unsafe extern "C" fn(
        instance: *mut c_void,
        id: usize,
        params: *mut f32,
        grads: *const f32,
        len: usize,
        lr: f64,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// Bytes of state held now.
    pub state_bytes: unsafe extern "C" fn(instance: *mut c_void) -> usize,
    /// Hands every piece of state to `sink`.
    pub state: unsafe extern "C" fn(
        instance: *mut c_void,
        sink: *const ForgeStateSink,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// Restores state previously produced by `state`.
    pub load_state: unsafe extern "C" fn(
        instance: *mut c_void,
        entries: *const ForgeStateEntry,
        count: usize,
        error: *const ForgeSink,
    ) -> ForgeStatus,
}

/// Methods of an adapter: a kernel over flat f32 buffers in host memory. Each adapted linear layer
/// (weight `out_dim × in_dim`) owns one flat parameter buffer of `count` values; `x` is
/// `rows × in_dim`, `y` and `dy` are `rows × out_dim`, row-major.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeAdapterMethods {
    /// Trainable values put on linear `module` (`q_proj`, …); 0 leaves it alone.
    pub param_count:
        unsafe extern "C" fn(instance: *mut c_void, module: ForgeStr, in_dim: usize, out_dim: usize) -> usize,
    /// Initial values of one module's parameters.
    pub init: unsafe extern "C" fn(
        instance: *mut c_void,
        module: ForgeStr,
        in_dim: usize,
        out_dim: usize,
        seed: u64,
        params: *mut f32,
        count: usize,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// Writes what the adapter adds to the layer's output into `y`.
    pub forward: unsafe extern "C" fn(
        instance: *mut c_void,
        in_dim: usize,
        out_dim: usize,
        rows: usize,
        x: *const f32,
        params: *const f32,
        count: usize,
        y: *mut f32,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// Writes the gradients with respect to `x` (into `dx`) and the parameters (into `dparams`).
    pub backward: unsafe extern "C" fn(
        instance: *mut c_void,
        in_dim: usize,
        out_dim: usize,
        rows: usize,
        x: *const f32,
        params: *const f32,
        count: usize,
        dy: *const f32,
        dx: *mut f32,
        dparams: *mut f32,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// The addition as a weight delta `dw` (`out_dim × in_dim`); `FORGE_BAD_INPUT` if it has none.
    pub delta_weight: unsafe extern "C" fn(
        instance: *mut c_void,
        in_dim: usize,
        out_dim: usize,
        params: *const f32,
        count: usize,
        dw: *mut f32,
        error: *const ForgeSink,
    ) -> ForgeStatus,
}

/// One strategy a plugin provides. Exactly the methods of its `kind` are non-null.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgeStrategy {
    /// `FORGE_KIND_*`.
    pub kind: u32,
    /// Unique within its kind: lower case, digits and `-`.
    pub name: ForgeStr,
    /// One line.
    pub description: ForgeStr,
    /// Its options as a JSON array of `{"name", "type": int|float|bool|string, "default", "description"}`.
    pub options_json: ForgeStr,
    /// Builds an instance from resolved options (a JSON object holding every declared option).
    pub create: unsafe extern "C" fn(
        options_json: ForgeStr,
        instance: *mut *mut c_void,
        error: *const ForgeSink,
    ) -> ForgeStatus,
    /// Frees an instance made by `create`.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
    /// Non-null for scorers.
    pub scorer: *const ForgeScorerMethods,
    /// Non-null for pruners.
    pub pruner: *const ForgePrunerMethods,
    /// Non-null for evaluators.
    pub evaluator: *const ForgeEvaluatorMethods,
    /// Non-null for optimizers.
    pub optimizer: *const ForgeOptimizerMethods,
    /// Non-null for adapters.
    pub adapter: *const ForgeAdapterMethods,
}

/// What `forge_plugin_entry` returns; `abi_major` and `abi_minor` stay its first fields in every
/// version, so any host can read them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForgePlugin {
    /// [`ABI_MAJOR`] the plugin was built against.
    pub abi_major: u32,
    /// [`ABI_MINOR`] the plugin was built against.
    pub abi_minor: u32,
    /// The plugin's name.
    pub name: ForgeStr,
    /// The plugin's version.
    pub version: ForgeStr,
    /// `count` pointers to its strategies.
    pub strategies: *const *const ForgeStrategy,
    /// Number of strategies.
    pub count: usize,
}

/// The entry function's type.
pub type ForgeEntry = unsafe extern "C" fn() -> *const ForgePlugin;
