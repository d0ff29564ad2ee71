/*
 * forge plugin ABI 1.0 — the C view of forge_api::plugin::abi (forge-api/src/plugin/abi.rs), field
 * for field; tests/plugins.rs checks every struct's size and field offsets against the Rust side.
 *
 * A plugin is a shared library exporting one function, forge_plugin_entry, that returns a table of
 * the strategies it provides. Rules (see docs/plugins.md):
 *   - every call returns a ForgeStatus; on failure the callee writes a UTF-8 message into `error`;
 *   - strings and arrays passed into a call are borrowed for that call only; variable-length results
 *     go through a ForgeSink owned by the receiver, which copies them; whoever allocates frees;
 *   - instances are created and destroyed by the plugin; the table and its strings must live as long
 *     as the process (forge never unloads a plugin);
 *   - functions may be called from any thread, never concurrently on one instance;
 *   - nothing may unwind across the boundary (C++ plugins: catch everything).
 */
#ifndef FORGE_PLUGIN_H
#define FORGE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FORGE_ABI_MAJOR 1
#define FORGE_ABI_MINOR 1 /* 1.1: units beyond query heads (ForgeUnits) */

typedef int32_t ForgeStatus;
#define FORGE_OK 0
#define FORGE_BAD_INPUT 1 /* the input or options cannot work; the user can fix them */
#define FORGE_FAILED 2

#define FORGE_KIND_SCORER 0
#define FORGE_KIND_PRUNER 1
#define FORGE_KIND_ADAPTER 2 /* a kernel over flat buffers */
#define FORGE_KIND_OPTIMIZER 3
#define FORGE_KIND_EVALUATOR 4

#define FORGE_DTYPE_F32 0
#define FORGE_DTYPE_BF16 1
#define FORGE_DTYPE_F16 2
#define FORGE_DTYPE_U8 3
#define FORGE_DTYPE_U32 4
#define FORGE_DTYPE_U64 5

#define FORGE_DEVICE_CPU 0
#define FORGE_DEVICE_CUDA 1

#define FORGE_PROBE_HEAD_OUTPUT_NORMS 0   /* mean L2 norm of each head's output through o_proj */
#define FORGE_PROBE_HEAD_MASK_GRADIENTS 1 /* mean |d loss / d head mask| */
#define FORGE_PROBE_ATTENTION_ENTROPY 2   /* mean entropy of each head's attention, nats */
#define FORGE_PROBE_LAYER_COSINE 3        /* 1.1, over FORGE_UNIT_LAYER: mean cos(layer input, output) */

#define FORGE_UNIT_QUERY_HEAD 0  /* 1.1: a full-attention query head */
#define FORGE_UNIT_LINEAR_HEAD 1 /* 1.1: a Gated DeltaNet value head; its group is its key head */
#define FORGE_UNIT_MLP_CHANNEL 2 /* 1.1: an MLP channel (gate/up row, down column); its own group */
#define FORGE_UNIT_LAYER 3       /* 1.1: a whole decoder layer, one unit per layer */

#define FORGE_TARGET_RATIO 0 /* share of all query heads, in (0, 1) */
#define FORGE_TARGET_COUNT 1 /* number of heads */

/* Borrowed UTF-8 text, not NUL-terminated. */
typedef struct ForgeStr {
    const char *ptr;
    size_t len;
} ForgeStr;

/* The callee calls write any number of times with `count` elements of the type the call documents. */
typedef struct ForgeSink {
    void *ctx;
    void (*write)(void *ctx, const void *data, size_t count);
} ForgeSink;

/* A borrowed tensor, valid until the call that produced it returns. Strides are in elements. */
typedef struct ForgeTensorView {
    uint32_t dtype;
    uint32_t device;
    int32_t device_index;
    uint32_t ndim;
    const uint64_t *shape;
    const int64_t *strides;
    void *data;
    void *stream; /* cudaStream_t on CUDA, NULL on the CPU */
} ForgeTensorView;

typedef struct ForgeGeometry {
    uint64_t layers;
    uint64_t head_dim;
    uint64_t hidden;
    const uint64_t *heads;    /* query heads per layer */
    const uint64_t *kv_heads; /* key/value heads per layer */
} ForgeGeometry;

/* Per-head arrays (scores, probes, prune flags) are layer-major: layer 0's heads, then layer 1's. */

/* 1.1: one kind of unit beyond query heads, `layers` counts and group counts each. */
typedef struct ForgeUnits {
    uint32_t kind;           /* FORGE_UNIT_* */
    const uint64_t *counts;  /* units per layer (0 where a layer has none) */
    const uint64_t *groups;  /* groups per layer; units share groups in consecutive runs */
} ForgeUnits;

typedef struct ForgeScoringHost {
    void *ctx; /* pass back to every callback */
    ForgeGeometry geometry;
    uint64_t seed;
    /* A weight by checkpoint name (model.layers.0.self_attn.q_proj.weight): an f32 host view. */
    ForgeStatus (*tensor)(void *ctx, ForgeStr name, ForgeTensorView *out, const ForgeSink *error);
    /* Fills `len` (= total query heads) floats with FORGE_PROBE_*. */
    ForgeStatus (*probe)(void *ctx, uint32_t probe, float *out, size_t len, const ForgeSink *error);
    /* 1.1: the model's kinds of units beyond query heads (none for a plugin of minor 0). A 1.1
     * scorer's buffer holds the query heads, then each of these kinds in order, layer-major, filled
     * with NaN: a kind left all NaN is unscored. */
    const ForgeUnits *extra_units;
    size_t extra_unit_count;
    /* 1.1: probe FORGE_PROBE_* over units of kind `unit` (FORGE_UNIT_*), `len` floats. */
    ForgeStatus (*probe_units)(void *ctx, uint32_t probe, uint32_t unit, float *out, size_t len,
                               const ForgeSink *error);
} ForgeScoringHost;

typedef struct ForgeEvalHost {
    void *ctx;
    /* Token ids (uint32_t into `ids`) of text, without special tokens. */
    ForgeStatus (*encode)(void *ctx, ForgeStr text, const ForgeSink *ids, const ForgeSink *error);
    /* UTF-8 bytes (into `text`) of `len` ids. */
    ForgeStatus (*decode)(void *ctx, const uint32_t *ids, size_t len, const ForgeSink *text,
                          const ForgeSink *error);
    /* Evaluation windows of --data back to back (uint32_t into `ids`), *window_len tokens each. */
    ForgeStatus (*windows)(void *ctx, const ForgeSink *ids, size_t *window_len, const ForgeSink *error);
    /* Sequence i is ids[offsets[i] .. offsets[i+1]] (>= 2 tokens); its len-1 log-probabilities go
     * to out[offsets[i] - i ..]; out holds offsets[count] - count floats. */
    ForgeStatus (*next_token_logprobs)(void *ctx, const uint32_t *ids, const size_t *offsets, size_t count,
                                       float *out, const ForgeSink *error);
    /* Greedy continuation: up to max_new_tokens new ids (uint32_t into `ids`). */
    ForgeStatus (*generate)(void *ctx, const uint32_t *prompt, size_t len, size_t max_new_tokens,
                            const ForgeSink *ids, const ForgeSink *error);
} ForgeEvalHost;

typedef struct ForgeStateSink {
    void *ctx;
    /* dtype: FORGE_DTYPE_F32, _U8 or _U64 */
    void (*add)(void *ctx, ForgeStr name, uint32_t dtype, const void *data, size_t count);
} ForgeStateSink;

typedef struct ForgeStateEntry {
    ForgeStr name;
    uint32_t dtype;
    const void *data;
    size_t count;
} ForgeStateEntry;

typedef struct ForgeScorerMethods {
    /* Writes one score per query head (higher = more important) into scores[len]; from 1.1, then
     * one per unit of each of host->extra_units. */
    ForgeStatus (*score)(void *instance, const ForgeScoringHost *host, float *scores, size_t len,
                         const ForgeSink *error);
} ForgeScorerMethods;

typedef struct ForgePrunerMethods {
    /* Sets pruned[i] = 1 for each head to remove. */
    ForgeStatus (*prune)(void *instance, const ForgeGeometry *geometry, const float *scores, size_t len,
                         uint32_t target_kind, double target, uint8_t *pruned, const ForgeSink *error);
    /* 1.1, may be NULL: prune over query heads then extra_unit_count more kinds; scores and pruned
     * hold them all, kind after kind (a kind scored all NaN is unscored). Called in place of prune
     * when present. */
    ForgeStatus (*prune_units)(void *instance, const ForgeGeometry *geometry, const ForgeUnits *extra_units,
                               size_t extra_unit_count, const float *scores, size_t len, uint32_t target_kind,
                               double target, uint8_t *pruned, const ForgeSink *error);
} ForgePrunerMethods;

typedef struct ForgeEvaluatorMethods {
    /* Writes a JSON object of named metrics (UTF-8 bytes) into `metrics`. */
    ForgeStatus (*evaluate)(void *instance, const ForgeEvalHost *host, const ForgeSink *metrics,
                            const ForgeSink *error);
} ForgeEvaluatorMethods;

typedef struct ForgeOptimizerMethods {
    ForgeStatus (*update)(void *instance, size_t id, float *params, const float *grads, size_t len, double lr,
                          const ForgeSink *error);
    size_t (*state_bytes)(void *instance);
    ForgeStatus (*state)(void *instance, const ForgeStateSink *sink, const ForgeSink *error);
    ForgeStatus (*load_state)(void *instance, const ForgeStateEntry *entries, size_t count,
                              const ForgeSink *error);
} ForgeOptimizerMethods;

/* Each adapted linear layer (weight out_dim x in_dim) owns one flat buffer of `count` parameters;
 * x is rows x in_dim, y and dy are rows x out_dim, row-major, f32, host memory. */
typedef struct ForgeAdapterMethods {
    /* Parameters put on linear `module` ("q_proj", "down_proj", ...; Qwen3.5's linear-attention layers
       also "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"); 0 leaves it alone. */
    size_t (*param_count)(void *instance, ForgeStr module, size_t in_dim, size_t out_dim);
    ForgeStatus (*init)(void *instance, ForgeStr module, size_t in_dim, size_t out_dim, uint64_t seed,
                        float *params, size_t count, const ForgeSink *error);
    /* Writes what the adapter adds to the layer's output into y. */
    ForgeStatus (*forward)(void *instance, size_t in_dim, size_t out_dim, size_t rows, const float *x,
                           const float *params, size_t count, float *y, const ForgeSink *error);
    /* Writes d loss / d x into dx and d loss / d params into dparams, given dy = d loss / d y. */
    ForgeStatus (*backward)(void *instance, size_t in_dim, size_t out_dim, size_t rows, const float *x,
                            const float *params, size_t count, const float *dy, float *dx, float *dparams,
                            const ForgeSink *error);
    /* The addition as a weight delta dw (out_dim x in_dim), for merging; FORGE_BAD_INPUT if none. */
    ForgeStatus (*delta_weight)(void *instance, size_t in_dim, size_t out_dim, const float *params,
                                size_t count, float *dw, const ForgeSink *error);
} ForgeAdapterMethods;

typedef struct ForgeStrategy {
    uint32_t kind; /* FORGE_KIND_* */
    ForgeStr name; /* lower case, digits and '-' */
    ForgeStr description;
    /* JSON array of {"name", "type": "int"|"float"|"bool"|"string", "default", "description"} */
    ForgeStr options_json;
    /* options_json: a JSON object holding every declared option, checked by the host. */
    ForgeStatus (*create)(ForgeStr options_json, void **instance, const ForgeSink *error);
    void (*destroy)(void *instance);
    /* Exactly the one matching `kind` is non-NULL. */
    const ForgeScorerMethods *scorer;
    const ForgePrunerMethods *pruner;
    const ForgeEvaluatorMethods *evaluator;
    const ForgeOptimizerMethods *optimizer;
    const ForgeAdapterMethods *adapter;
} ForgeStrategy;

/* abi_major and abi_minor stay the first fields in every version. */
typedef struct ForgePlugin {
    uint32_t abi_major; /* FORGE_ABI_MAJOR */
    uint32_t abi_minor; /* FORGE_ABI_MINOR */
    ForgeStr name;
    ForgeStr version;
    const ForgeStrategy *const *strategies;
    size_t count;
} ForgePlugin;

/* The one symbol a plugin exports. */
const ForgePlugin *forge_plugin_entry(void);

/* A ForgeStr from a string literal. */
#define FORGE_STR(literal) ((ForgeStr){(literal), sizeof(literal) - 1})

#ifdef __cplusplus
}
#endif

#endif /* FORGE_PLUGIN_H */
