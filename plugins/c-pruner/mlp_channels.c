/*
 * mlp-channels: a forge pruner written in C that removes MLP channels, the units that hold most of a
 * model's parameters (two thirds of Qwen3's), through ABI 1.1's prune_units. In every layer it removes
 * the lowest-scored share of the channels (the target ratio, `--ratio`), keeping at least `floor`;
 * query heads, linear-attention heads and layers stay. Any scorer that scores MLP channels feeds it
 * (l2, activation, taylor).
 *
 * Build: cc -shared -fPIC -O2 -I forge-api/include plugins/c-pruner/mlp_channels.c -o libmlp_channels.so
 * Use:   forge --plugin ./libmlp_channels.so prune --model examples/tiny-qwen3 --scorer l2 \
 *            --pruner mlp-channels --ratio 0.25 --out pruned
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "forge_plugin.h"

typedef struct MlpChannels {
    unsigned long long floor;
} MlpChannels;

static void fail(const ForgeSink *error, const char *message) {
    error->write(error->ctx, message, strlen(message));
}

/* The host hands over every declared option, as compact JSON: {"floor":1}. */
static ForgeStatus create(ForgeStr options, void **instance, const ForgeSink *error) {
    char json[256];
    size_t n = options.len < sizeof json - 1 ? options.len : sizeof json - 1;
    memcpy(json, options.ptr, n);
    json[n] = '\0';
    const char *at = strstr(json, "\"floor\":");
    long long floor = at ? strtoll(at + strlen("\"floor\":"), NULL, 10) : 1;
    if (floor < 1) {
        fail(error, "option floor must be at least 1: a layer keeps at least one MLP channel");
        return FORGE_BAD_INPUT;
    }
    MlpChannels *p = malloc(sizeof *p);
    if (!p) {
        fail(error, "out of memory");
        return FORGE_FAILED;
    }
    p->floor = (unsigned long long)floor;
    *instance = p;
    return FORGE_OK;
}

static void destroy(void *instance) { free(instance); }

/* qsort's comparison can carry no context: the scores being sorted by index. */
static const float *sort_scores;

static int by_score(const void *a, const void *b) {
    float x = sort_scores[*(const size_t *)a], y = sort_scores[*(const size_t *)b];
    return (x > y) - (x < y);
}

/* Flags the `remove` lowest-scored of the `count` channels at scores[0..count]. */
static ForgeStatus prune_layer(const float *scores, size_t count, size_t remove, uint8_t *pruned) {
    size_t *order = malloc(count * sizeof *order);
    if (!order) return FORGE_FAILED;
    for (size_t i = 0; i < count; i++) order[i] = i;
    sort_scores = scores;
    qsort(order, count, sizeof *order, by_score);
    for (size_t i = 0; i < remove; i++) pruned[order[i]] = 1;
    free(order);
    return FORGE_OK;
}

static ForgeStatus prune_units(void *instance, const ForgeGeometry *geometry, const ForgeUnits *extra_units,
                               size_t extra_unit_count, const float *scores, size_t len, uint32_t target_kind,
                               double target, uint8_t *pruned, const ForgeSink *error) {
    const MlpChannels *p = instance;
    if (target_kind != FORGE_TARGET_RATIO || !(target > 0.0 && target < 1.0)) {
        fail(error, "give --ratio: the share of each layer's MLP channels to remove, in (0, 1)");
        return FORGE_BAD_INPUT;
    }
    /* Scores and flags hold the query heads, then each extra kind in order, layer-major. */
    size_t at = 0;
    for (uint64_t layer = 0; layer < geometry->layers; layer++) at += geometry->heads[layer];
    for (size_t k = 0; k < extra_unit_count; k++) {
        const ForgeUnits *units = &extra_units[k];
        if (units->kind != FORGE_UNIT_MLP_CHANNEL) {
            for (uint64_t layer = 0; layer < geometry->layers; layer++) at += units->counts[layer];
            continue;
        }
        for (uint64_t layer = 0; layer < geometry->layers; layer++) {
            size_t count = units->counts[layer];
            if (at + count > len) {
                fail(error, "more MLP channels than score slots");
                return FORGE_FAILED;
            }
            for (size_t i = 0; i < count; i++) {
                if (isnan(scores[at + i])) {
                    fail(error, "the scorer gave MLP channels no scores: choose one that scores them "
                                "(l2, activation, taylor)");
                    return FORGE_BAD_INPUT;
                }
            }
            size_t remove = (size_t)floor(target * (double)count);
            if (count - remove < p->floor) remove = count > p->floor ? count - p->floor : 0;
            if (prune_layer(scores + at, count, remove, pruned + at) != FORGE_OK) {
                fail(error, "out of memory");
                return FORGE_FAILED;
            }
            at += count;
        }
        return FORGE_OK;
    }
    fail(error, "this model offers no MLP channels to prune");
    return FORGE_BAD_INPUT;
}

/* Hosts of ABI 1.0 know query heads only, and this pruner removes none. */
static ForgeStatus prune_heads(void *instance, const ForgeGeometry *geometry, const float *scores, size_t len,
                               uint32_t target_kind, double target, uint8_t *pruned, const ForgeSink *error) {
    (void)instance, (void)geometry, (void)scores, (void)len, (void)target_kind, (void)target, (void)pruned;
    fail(error, "mlp-channels prunes MLP channels, which need a forge of plugin ABI 1.1 or later");
    return FORGE_BAD_INPUT;
}

static const ForgePrunerMethods methods = {prune_heads, prune_units};

static const ForgeStrategy mlp_channels = {
    .kind = FORGE_KIND_PRUNER,
    .name = FORGE_STR("mlp-channels"),
    .description = FORGE_STR("removes the lowest-scored share (--ratio) of each layer's MLP channels, "
                             "nothing else (written in C)"),
    .options_json = FORGE_STR("[{\"name\":\"floor\",\"type\":\"int\",\"default\":1,\"description\":"
                              "\"the fewest MLP channels a layer keeps\"}]"),
    .create = create,
    .destroy = destroy,
    .pruner = &methods,
};

static const ForgeStrategy *const strategies[] = {&mlp_channels};

static const ForgePlugin plugin = {
    .abi_major = FORGE_ABI_MAJOR,
    .abi_minor = FORGE_ABI_MINOR,
    .name = FORGE_STR("c-pruner"),
    .version = FORGE_STR("0.1.0"),
    .strategies = strategies,
    .count = 1,
};

const ForgePlugin *forge_plugin_entry(void) { return &plugin; }
