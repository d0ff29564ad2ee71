/*
 * q-norm: a forge scorer written in C. A query head's rows of q_proj decide what it looks for; this
 * scores each head by the p-norm of those rows (p = option "power", default 2). Data-free.
 *
 * Build: cc -shared -fPIC -O2 -I forge-api/include plugins/c-scorer/q_norm.c -o libq_norm.so -lm
 * Use:   forge --plugin ./libq_norm.so score --model examples/tiny-qwen3 --scorer q-norm --scorer-opt power=1
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forge_plugin.h"

typedef struct QNorm {
    double power;
} QNorm;

static void fail(const ForgeSink *error, const char *message) {
    error->write(error->ctx, message, strlen(message));
}

/* The host hands over every declared option, as compact JSON: {"power":2.0}. */
static ForgeStatus create(ForgeStr options, void **instance, const ForgeSink *error) {
    char json[256];
    size_t n = options.len < sizeof json - 1 ? options.len : sizeof json - 1;
    memcpy(json, options.ptr, n);
    json[n] = '\0';
    const char *at = strstr(json, "\"power\":");
    double power = at ? strtod(at + strlen("\"power\":"), NULL) : 2.0;
    if (!(power >= 1.0)) {
        fail(error, "option power must be at least 1");
        return FORGE_BAD_INPUT;
    }
    QNorm *q = malloc(sizeof *q);
    if (!q) {
        fail(error, "out of memory");
        return FORGE_FAILED;
    }
    q->power = power;
    *instance = q;
    return FORGE_OK;
}

static void destroy(void *instance) { free(instance); }

static ForgeStatus score(void *instance, const ForgeScoringHost *host, float *scores, size_t len,
                         const ForgeSink *error) {
    const QNorm *q = instance;
    const ForgeGeometry *g = &host->geometry;
    size_t at = 0;
    for (uint64_t layer = 0; layer < g->layers; layer++) {
        char name[128];
        int n = snprintf(name, sizeof name, "model.layers.%llu.self_attn.q_proj.weight",
                         (unsigned long long)layer);
        ForgeTensorView w;
        ForgeStatus status = host->tensor(host->ctx, (ForgeStr){name, (size_t)n}, &w, error);
        if (status != FORGE_OK) return status;
        if (w.dtype != FORGE_DTYPE_F32 || w.device != FORGE_DEVICE_CPU || w.ndim != 2) {
            fail(error, "q_proj should come as a 2-d f32 host tensor");
            return FORGE_FAILED;
        }
        const float *data = w.data;
        for (uint64_t head = 0; head < g->heads[layer]; head++) {
            if (at >= len) {
                fail(error, "more heads than score slots");
                return FORGE_FAILED;
            }
            double sum = 0.0;
            for (uint64_t r = head * g->head_dim; r < (head + 1) * g->head_dim; r++)
                for (uint64_t c = 0; c < w.shape[1]; c++)
                    sum += pow(fabs((double)data[r * w.strides[0] + c * w.strides[1]]), q->power);
            scores[at++] = (float)pow(sum, 1.0 / q->power);
        }
    }
    return FORGE_OK;
}

static const ForgeScorerMethods methods = {score};

static const ForgeStrategy q_norm = {
    .kind = FORGE_KIND_SCORER,
    .name = FORGE_STR("q-norm"),
    .description = FORGE_STR("p-norm of each query head's q_proj rows, computed in C (no data needed)"),
    .options_json = FORGE_STR(
        "[{\"name\":\"power\",\"type\":\"float\",\"default\":2.0,\"description\":\"p of the p-norm (at least 1)\"}]"),
    .create = create,
    .destroy = destroy,
    .scorer = &methods,
};

static const ForgeStrategy *const strategies[] = {&q_norm};

static const ForgePlugin plugin = {
    .abi_major = FORGE_ABI_MAJOR,
    .abi_minor = FORGE_ABI_MINOR,
    .name = FORGE_STR("c-scorer"),
    .version = FORGE_STR("0.1.0"),
    .strategies = strategies,
    .count = 1,
};

const ForgePlugin *forge_plugin_entry(void) { return &plugin; }
