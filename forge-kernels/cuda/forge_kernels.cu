// forge's CUDA kernels, compiled by build.rs to machine code for the architectures it is given (sm_90 by
// default) plus PTX for the others, embedded in the binary, so nothing is compiled at start-up on the
// machines built for. Each has a CPU reference in the Rust op that launches it (src/*.rs), and
// src/checks.rs (`forge kernels --device cuda`) checks the two against each other.
#include <cuda_bf16.h>

// Reduces `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <bool MAX>
__device__ float block_reduce(float v, float *shared) {
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, other) : v + other;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    __syncthreads();  // `shared` may still be read by the previous reduction
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : (MAX ? -INFINITY : 0.f);
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, other) : v + other;
    }
    return v;
}

// softmax(scale * x) over each row of `total` scores, where row r is query position r % seq and sees
// keys 0 ..= past + r % seq; the rest are written as 0. bf16 in and out, f32 arithmetic, one pass of
// reads per statistic and one write: this replaces upcast, scale, mask add, softmax and downcast
// (about ten passes over the f32 scores).
extern "C" __global__ void causal_softmax_bf16(const __nv_bfloat16 *__restrict__ x, __nv_bfloat16 *__restrict__ y,
                                               int seq, int total, int past, float scale) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const int visible = min(past + (int)(row % seq) + 1, total);
    const __nv_bfloat16 *xr = x + row * total;
    __nv_bfloat16 *yr = y + row * total;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, __bfloat162float(xr[j]));
    m = block_reduce<true>(m, shared);
    float s = 0.f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) s += __expf((__bfloat162float(xr[j]) - m) * scale);
    const float inv = 1.f / block_reduce<false>(s, shared);
    for (int j = threadIdx.x; j < total; j += blockDim.x)
        yr[j] = __float2bfloat16(j < visible ? __expf((__bfloat162float(xr[j]) - m) * scale) * inv : 0.f);
}

// The scores' gradient of that softmax from its output p and the output's gradient g, row by row:
// scale * p * (g - sum(p * g)), bf16 in and out, the sum in f32. Only the visible keys are read; the
// masked ones get 0. Replaces upcasting both to f32, four elementwise passes and a reduction.
extern "C" __global__ void causal_softmax_backward_bf16(const __nv_bfloat16 *__restrict__ p, const __nv_bfloat16 *__restrict__ g,
                                                        __nv_bfloat16 *__restrict__ dx, int seq, int total, int past,
                                                        float scale) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const int visible = min(past + (int)(row % seq) + 1, total);
    const __nv_bfloat16 *pr = p + row * total, *gr = g + row * total;
    __nv_bfloat16 *dr = dx + row * total;
    float dot = 0.f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) dot += __bfloat162float(pr[j]) * __bfloat162float(gr[j]);
    dot = block_reduce<false>(dot, shared);
    for (int j = threadIdx.x; j < total; j += blockDim.x)
        dr[j] = __float2bfloat16(j < visible ? scale * __bfloat162float(pr[j]) * (__bfloat162float(gr[j]) - dot) : 0.f);
}

// v rounded to bf16 and back: where a fused kernel rounds as the unfused ops' bf16 outputs did.
__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16(v)); }
// Eight bf16 at a 16-byte aligned address, as floats, in one load; and back, in one store. Loads of
// a single bf16 each kept too few bytes in flight: the NLL's and the convolution's kernels ran at
// 0.4-0.6 TB/s on an H200 (docs/BENCHMARKS.md, ninth session).
__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float (&v)[8]) {
    const uint4 raw = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(h[i]);
        v[2 * i] = f.x, v[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void store8(__nv_bfloat16 *p, const float (&v)[8]) {
    uint4 raw;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = raw;
}
// Whether a row of n bf16 at p goes eight at a time.
__device__ __forceinline__ bool by8(const __nv_bfloat16 *p, long long n) {
    return n % 8 == 0 && reinterpret_cast<unsigned long long>(p) % 16 == 0;
}

// A running max m and sum s of e^(v − m) (as flash attention keeps its softmax statistics), given
// eight more values: one rescale for the eight.
__device__ __forceinline__ void lse_add8(float &m, float &s, const float (&v)[8]) {
    float top = v[0];
#pragma unroll
    for (int i = 1; i < 8; ++i) top = fmaxf(top, v[i]);
    if (top > m) s *= __expf(m - top), m = top;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += __expf(v[i] - m);
}

// logsumexp of a row of bf16 logits in f32, reading it once; every thread of the block gets it.
// Eight values a load and two loads in flight a thread where the row allows.
__device__ float row_logsumexp(const __nv_bfloat16 *__restrict__ x, int vocab, float *shared) {
    float m = -INFINITY, s = 0.f;
    if (by8(x, vocab)) {
        const int vectors = vocab / 8, step = blockDim.x;
        int j = threadIdx.x;
        for (; j + step < vectors; j += 2 * step) {
            float a[8], b[8];
            load8(x + 8 * j, a);
            load8(x + 8 * (j + step), b);
            lse_add8(m, s, a);
            lse_add8(m, s, b);
        }
        if (j < vectors) {
            float a[8];
            load8(x + 8 * j, a);
            lse_add8(m, s, a);
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float v = __bfloat162float(x[j]);
            if (v > m) s = s * __expf(m - v) + 1.f, m = v;
            else s += __expf(v - m);
        }
    }
    const float top = block_reduce<true>(m, shared);
    return top + __logf(block_reduce<false>(m == -INFINITY ? 0.f : s * __expf(m - top), shared));
}

// Next-token NLL of each row of bf16 logits: logsumexp(row) - row[target], in f32. Replaces upcasting
// the logits to f32 and five more passes over them.
extern "C" __global__ void row_nll_bf16(const __nv_bfloat16 *__restrict__ logits, const unsigned int *__restrict__ targets,
                                        float *__restrict__ nll, int vocab) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const __nv_bfloat16 *x = logits + row * vocab;
    const float lse = row_logsumexp(x, vocab, shared);
    if (threadIdx.x == 0) nll[row] = lse - __bfloat162float(x[targets[row]]);
}

// The logits' gradient of that NLL given the rows' gradients g (f32): g * (softmax(row) - onehot(target)),
// written in bf16. Two reads of the row and one write, where the elementary ops made the f32 softmax
// and four more passes over it.
extern "C" __global__ void row_nll_backward_bf16(const __nv_bfloat16 *__restrict__ logits,
                                                 const unsigned int *__restrict__ targets, const float *__restrict__ grad,
                                                 __nv_bfloat16 *__restrict__ d_logits, int vocab) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const __nv_bfloat16 *x = logits + row * vocab;
    __nv_bfloat16 *d = d_logits + row * vocab;
    const float lse = row_logsumexp(x, vocab, shared);
    const float g = grad[row];
    const int t = (int)targets[row];
    if (by8(x, vocab) && by8(d, vocab)) {
        for (int j = threadIdx.x; j < vocab / 8; j += blockDim.x) {
            float v[8];
            load8(x + 8 * j, v);
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = g * (__expf(v[i] - lse) - (8 * j + i == t ? 1.f : 0.f));
            store8(d + 8 * j, v);
        }
        return;
    }
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        d[j] = __float2bfloat16(g * (__expf(__bfloat162float(x[j]) - lse) - (j == t ? 1.f : 0.f)));
}

// RMS norm of each row of `n` bf16 values, statistics in f32, in the two conventions transformers has:
// with a bf16 weight, y = bf16(bf16(x / sqrt(mean(x²) + eps)) · w), rounded before the weight (Llama,
// Qwen2/3); with an f32 weight (Qwen3.5's `1 + w`, formed in f32 at load), y = bf16(x / rms · w), rounded
// once at the end. One read, one write; replaces nine elementary ops (the f32 convention's elementary
// ops also load three of candle's PTX modules).
__device__ __forceinline__ float normed(float v, float r, __nv_bfloat16 w) {
    return round_bf16(v * r) * __bfloat162float(w);
}
__device__ __forceinline__ float normed(float v, float r, float w) { return v * r * w; }

// The row a block normalizes and the threads that share it; with WARP, a warp's (rows of at most a few
// hundred values, such as Qwen3's q/k norms over heads of 128: a block of 256 threads on a row of 128
// left 240 of them idle and took 62 of qwen3-4b's 142 ms of eval with the q/k/v section, H200).
struct NormRow {
    long long row;
    int first, step;
};
template <bool WARP>
__device__ __forceinline__ NormRow norm_row() {
    if (WARP) return {blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32, (int)(threadIdx.x % 32), 32};
    return {blockIdx.x, (int)threadIdx.x, (int)blockDim.x};
}
template <bool WARP>
__device__ __forceinline__ float row_sum(float v, float *shared) {
    if (!WARP) return block_reduce<false>(v, shared);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// With ADD, the norm of x + b, a residual add fused into the norm that follows it (inference): the sum,
// rounded to bf16 as add_bias_bf16 rounds it, goes to `sum` and is normed as a stored row is, so both
// outputs equal the two kernels' bit for bit, in one launch and one read fewer (the second pass reads
// back the sum this thread wrote).
template <typename W, bool WARP, bool ADD>
__device__ void rms_norm(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ b,
                         const W *__restrict__ w, __nv_bfloat16 *__restrict__ sum, __nv_bfloat16 *__restrict__ y,
                         int n, float eps, long long rows) {
    __shared__ float shared[32];
    const NormRow at = norm_row<WARP>();
    if (WARP && at.row >= rows) return;  // a whole warp: no block-wide barrier follows
    const __nv_bfloat16 *xr = x + at.row * n, *br = ADD ? b + at.row * n : nullptr;
    __nv_bfloat16 *sr = ADD ? sum + at.row * n : nullptr, *yr = y + at.row * n;
    float s = 0.f;
    // Eight values a load where the rows allow (a uniform branch: every row is aligned alike): 1.5 TB/s
    // a value at a time on an H200 (qwen3.5-9b, ncu).
    const bool vectors = by8(xr, n) && by8(yr, n) && (!ADD || (by8(br, n) && by8(sr, n)));
    if (vectors) {
        for (int j = at.first; j < n / 8; j += at.step) {
            float v[8];
            load8(xr + 8 * j, v);
            if (ADD) {
                float c[8];
                load8(br + 8 * j, c);
#pragma unroll
                for (int k = 0; k < 8; ++k) v[k] = round_bf16(v[k] + c[k]);
                store8(sr + 8 * j, v);
            }
#pragma unroll
            for (int k = 0; k < 8; ++k) s += v[k] * v[k];
        }
    } else {
        for (int j = at.first; j < n; j += at.step) {
            float v = __bfloat162float(xr[j]);
            if (ADD) {
                v = round_bf16(v + __bfloat162float(br[j]));
                sr[j] = __float2bfloat16(v);
            }
            s += v * v;
        }
    }
    const float r = rsqrtf(row_sum<WARP>(s, shared) / n + eps);
    const __nv_bfloat16 *src = ADD ? sr : xr;
    if (vectors) {
        for (int j = at.first; j < n / 8; j += at.step) {
            float v[8];
            load8(src + 8 * j, v);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = normed(v[k], r, w[8 * j + k]);
            store8(yr + 8 * j, v);
        }
        return;
    }
    for (int j = at.first; j < n; j += at.step) yr[j] = __float2bfloat16(normed(__bfloat162float(src[j]), r, w[j]));
}

__device__ __forceinline__ float weight_value(__nv_bfloat16 w) { return __bfloat162float(w); }
__device__ __forceinline__ float weight_value(float w) { return w; }

// The gradient of x for y = x / rms(x) · w given dy, per row of n values, in f32 (ignoring the forward's
// rounding to bf16, as the elementary ops' backward does; the same for both weight conventions): with
// r = 1 / rms(x) and gw = dy · w, dx = gw · r - x · r³ · mean(x · gw). Three reads and one write.
template <typename W, bool WARP>
__device__ void rms_norm_backward(const __nv_bfloat16 *__restrict__ x, const W *__restrict__ w,
                                  const __nv_bfloat16 *__restrict__ dy, __nv_bfloat16 *__restrict__ dx, int n, float eps,
                                  long long rows) {
    __shared__ float shared[32];
    const NormRow at = norm_row<WARP>();
    if (WARP && at.row >= rows) return;
    const __nv_bfloat16 *xr = x + at.row * n, *gr = dy + at.row * n;
    __nv_bfloat16 *dr = dx + at.row * n;
    float sq = 0.f, dot = 0.f;
    for (int j = at.first; j < n; j += at.step) {
        const float v = __bfloat162float(xr[j]);
        sq += v * v;
        dot += v * __bfloat162float(gr[j]) * weight_value(w[j]);
    }
    const float r = rsqrtf(row_sum<WARP>(sq, shared) / n + eps);
    const float c = r * r * r * row_sum<WARP>(dot, shared) / n;
    for (int j = at.first; j < n; j += at.step)
        dr[j] = __float2bfloat16(__bfloat162float(gr[j]) * weight_value(w[j]) * r - __bfloat162float(xr[j]) * c);
}

// Each norm kernel for a block a row (`_bf16`) and a warp a row (`_warp_bf16`, `rows` rows), with a
// bf16 and an f32 weight; `add_rms_norm` writes x + b and its norm into `out` (2, rows, n).
#define RMS_NORM_KERNELS(NAME, WARP)                                                                                 \
    extern "C" __global__ void rms_norm##NAME(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w, \
                                             __nv_bfloat16 *__restrict__ y, int n, float eps, long long rows) {       \
        rms_norm<__nv_bfloat16, WARP, false>(x, nullptr, w, nullptr, y, n, eps, rows);                               \
    }                                                                                                                \
    extern "C" __global__ void rms_norm_f32w##NAME(const __nv_bfloat16 *__restrict__ x, const float *__restrict__ w,    \
                                                  __nv_bfloat16 *__restrict__ y, int n, float eps, long long rows) {  \
        rms_norm<float, WARP, false>(x, nullptr, w, nullptr, y, n, eps, rows);                                       \
    }                                                                                                                \
    extern "C" __global__ void rms_norm_backward##NAME(                                                              \
        const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w, const __nv_bfloat16 *__restrict__ dy, \
        __nv_bfloat16 *__restrict__ dx, int n, float eps, long long rows) {                                          \
        rms_norm_backward<__nv_bfloat16, WARP>(x, w, dy, dx, n, eps, rows);                                         \
    }                                                                                                                \
    extern "C" __global__ void rms_norm_f32w_backward##NAME(                                                         \
        const __nv_bfloat16 *__restrict__ x, const float *__restrict__ w, const __nv_bfloat16 *__restrict__ dy,       \
        __nv_bfloat16 *__restrict__ dx, int n, float eps, long long rows) {                                          \
        rms_norm_backward<float, WARP>(x, w, dy, dx, n, eps, rows);                                                 \
    }                                                                                                                \
    extern "C" __global__ void add_rms_norm##NAME(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ b, \
                                                 const __nv_bfloat16 *__restrict__ w, __nv_bfloat16 *__restrict__ out,   \
                                                 int n, float eps, long long rows) {                                  \
        rms_norm<__nv_bfloat16, WARP, true>(x, b, w, out, out + rows * n, n, eps, rows);                             \
    }                                                                                                                \
    extern "C" __global__ void add_rms_norm_f32w##NAME(const __nv_bfloat16 *__restrict__ x,                          \
                                                      const __nv_bfloat16 *__restrict__ b, const float *__restrict__ w, \
                                                      __nv_bfloat16 *__restrict__ out, int n, float eps, long long rows) { \
        rms_norm<float, WARP, true>(x, b, w, out, out + rows * n, n, eps, rows);                                     \
    }
RMS_NORM_KERNELS(_bf16, false)
RMS_NORM_KERNELS(_warp_bf16, true)

// Where slot `idx` of a (batch, seq, heads, d) tensor lives, with the first `rot` dimensions of each
// head rotated (all of them but in Qwen3.5's partial RoPE) and the rest passed through: its offsets
// in that layout and in (batch, heads, seq, d); its two elements (i, i + rot/2 when rotated, else two
// neighbours past rot); and, when rotated, the cos and sin entries of both at its position (tables of
// (seq, rot)).
struct RopePair {
    long long tokens_first, heads_first;
    int e1, e2;
    bool rotated;
    float c1, c2, s1, s2;
};

__device__ RopePair rope_pair(long long idx, int seq, int heads, int d, int rot, const __nv_bfloat16 *__restrict__ cos,
                              const __nv_bfloat16 *__restrict__ sin) {
    const int half = d / 2, rh = rot / 2;
    const int i = idx % half;
    long long rest = idx / half;
    const int h = rest % heads;
    rest /= heads;
    const int s = rest % seq;
    const long long b = rest / seq;
    RopePair p{((b * seq + s) * heads + h) * d, ((b * heads + h) * seq + s) * d, i, i + rh, i < rh, 0.f, 0.f, 0.f, 0.f};
    if (p.rotated) {
        const int t = s * rot + i;
        p.c1 = __bfloat162float(cos[t]), p.c2 = __bfloat162float(cos[t + rh]);
        p.s1 = __bfloat162float(sin[t]), p.s2 = __bfloat162float(sin[t + rh]);
    } else {
        p.e1 = rot + 2 * (i - rh), p.e2 = p.e1 + 1;
    }
    return p;
}

// Rotary embedding of x laid out (batch, seq, heads, d), written as (batch, heads, seq, d): the
// transpose the attention needs and `x·cos + rotate_half(x)·sin` on the first `rot` dimensions in one
// pass (the rest copied). cos and sin are the (seq, rot) tables in bf16; products rounded to bf16 as
// the elementary ops do, the sum in f32.
extern "C" __global__ void rope_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ cos,
                                     const __nv_bfloat16 *__restrict__ sin, __nv_bfloat16 *__restrict__ y,
                                     int batch, int seq, int heads, int d, int rot) {
    const long long total = (long long)batch * seq * heads * (d / 2);
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const RopePair p = rope_pair(idx, seq, heads, d, rot, cos, sin);
        const __nv_bfloat16 *xr = x + p.tokens_first;
        __nv_bfloat16 *yr = y + p.heads_first;
        if (!p.rotated) {
            yr[p.e1] = xr[p.e1], yr[p.e2] = xr[p.e2];
            continue;
        }
        const float x1 = __bfloat162float(xr[p.e1]), x2 = __bfloat162float(xr[p.e2]);
        yr[p.e1] = __float2bfloat16(round_bf16(x1 * p.c1) + round_bf16(-x2 * p.s1));
        yr[p.e2] = __float2bfloat16(round_bf16(x2 * p.c2) + round_bf16(x1 * p.s2));
    }
}

// Qwen3's and Qwen3.5's q/k norm over each head and the RoPE after it in one pass, where nothing takes a
// gradient (decoding, eval): a warp a (token, head) row of d <= 256 values, eight a lane as
// rms_norm_warp_bf16's vector path holds them, so the norm's sum runs in the same order; each normed
// value, rounded to bf16 as the norm writes it, then goes through rope_bf16's arithmetic, and the
// output equals the two kernels' bit for bit, heads-first. A rotated pair (i, i + rot/2) lies in two
// lanes (rot/2 a multiple of 8), which trade their eight values by shuffle. Needs d % 8 == 0, x from a
// 16-byte boundary.
template <typename W>
__device__ void rms_norm_rope(const __nv_bfloat16 *__restrict__ x, const W *__restrict__ w,
                              const __nv_bfloat16 *__restrict__ cos, const __nv_bfloat16 *__restrict__ sin,
                              __nv_bfloat16 *__restrict__ y, int seq, int heads, int d, int rot, float eps,
                              long long rows) {
    const long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;  // a whole warp
    const int lane = threadIdx.x % 32, e0 = 8 * lane, rh = rot / 2;
    const bool mine = e0 < d;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (mine) load8(x + row * d + e0, v);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) s += v[k] * v[k];
    const float r = rsqrtf(row_sum<true>(s, nullptr) / d + eps);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = mine ? round_bf16(normed(v[k], r, w[e0 + k])) : 0.f;
    const int partner = e0 < rh ? lane + rh / 8 : e0 < rot ? lane - rh / 8 : lane;
    const long long token = row / heads;
    const int h = row % heads, at = token % seq;
    float out[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const float p = __shfl_sync(0xffffffffu, v[k], partner);
        const int e = e0 + k, t = at * rot + e;
        if (e >= rot || !mine) {
            out[k] = v[k];
            continue;
        }
        const float c = __bfloat162float(cos[t]), sn = __bfloat162float(sin[t]);
        out[k] = round_bf16(v[k] * c) + round_bf16((e < rh ? -p : p) * sn);
    }
    if (mine) store8(y + (((token / seq) * heads + h) * seq + at) * d + e0, out);
}
extern "C" __global__ void rms_norm_rope_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                                              const __nv_bfloat16 *__restrict__ cos, const __nv_bfloat16 *__restrict__ sin,
                                              __nv_bfloat16 *__restrict__ y, int seq, int heads, int d, int rot, float eps,
                                              long long rows) {
    rms_norm_rope<__nv_bfloat16>(x, w, cos, sin, y, seq, heads, d, rot, eps, rows);
}
extern "C" __global__ void rms_norm_f32w_rope_bf16(const __nv_bfloat16 *__restrict__ x, const float *__restrict__ w,
                                                   const __nv_bfloat16 *__restrict__ cos, const __nv_bfloat16 *__restrict__ sin,
                                                   __nv_bfloat16 *__restrict__ y, int seq, int heads, int d, int rot,
                                                   float eps, long long rows) {
    rms_norm_rope<float>(x, w, cos, sin, y, seq, heads, d, rot, eps, rows);
}

// SwiGLU's gate: y = bf16(silu(gate)) · up, elementwise over bf16, rounding as the two elementary ops do.
__device__ __forceinline__ float swiglu_one(float g, float up) {
    return round_bf16(g / (1.f + __expf(-g))) * up;
}
// Eight values a thread and step where the buffers allow: 1.3 TB/s a value at a time on an H200
// (qwen3.5-9b's 8 × 1024 × 12288, ncu).
extern "C" __global__ void swiglu_bf16(const __nv_bfloat16 *__restrict__ gate, const __nv_bfloat16 *__restrict__ up,
                                       __nv_bfloat16 *__restrict__ y, long long n) {
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x, step = (long long)gridDim.x * blockDim.x;
    if (by8(gate, n) && by8(up, n) && by8(y, n)) {
        for (long long i = start; i < n / 8; i += step) {
            float g[8], u[8];
            load8(gate + 8 * i, g);
            load8(up + 8 * i, u);
#pragma unroll
            for (int k = 0; k < 8; ++k) g[k] = swiglu_one(g[k], u[k]);
            store8(y + 8 * i, g);
        }
        return;
    }
    for (long long i = start; i < n; i += step) y[i] = __float2bfloat16(swiglu_one(__bfloat162float(gate[i]), __bfloat162float(up[i])));
}

// The gradient of rope_bf16's input given dy laid out (batch, heads, seq, d), written (batch, seq,
// heads, d): y = x·cos + rotate_half(x)·sin on the first rot dimensions, so there dx = dy·cos + [z₂, -z₁]
// with z = dy·sin, in f32; the passed-through dimensions get dy.
extern "C" __global__ void rope_backward_bf16(const __nv_bfloat16 *__restrict__ dy, const __nv_bfloat16 *__restrict__ cos,
                                              const __nv_bfloat16 *__restrict__ sin, __nv_bfloat16 *__restrict__ dx,
                                              int batch, int seq, int heads, int d, int rot) {
    const long long total = (long long)batch * seq * heads * (d / 2);
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const RopePair p = rope_pair(idx, seq, heads, d, rot, cos, sin);
        const __nv_bfloat16 *gr = dy + p.heads_first;
        __nv_bfloat16 *dr = dx + p.tokens_first;
        if (!p.rotated) {
            dr[p.e1] = gr[p.e1], dr[p.e2] = gr[p.e2];
            continue;
        }
        const float g1 = __bfloat162float(gr[p.e1]), g2 = __bfloat162float(gr[p.e2]);
        dr[p.e1] = __float2bfloat16(g1 * p.c1 + g2 * p.s2);
        dr[p.e2] = __float2bfloat16(g2 * p.c2 - g1 * p.s1);
    }
}

// SwiGLU's backward: with y = silu(g) · u, d_gate = dy · u · silu'(g) and d_up = dy · silu(g), in f32,
// where silu'(g) = σ(g) (1 + g (1 - σ(g))). Both are written into `d` (d_gate first, then d_up).
extern "C" __global__ void swiglu_backward_bf16(const __nv_bfloat16 *__restrict__ gate, const __nv_bfloat16 *__restrict__ up,
                                                const __nv_bfloat16 *__restrict__ dy, __nv_bfloat16 *__restrict__ d,
                                                long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = __bfloat162float(gate[i]), u = __bfloat162float(up[i]), y = __bfloat162float(dy[i]);
        const float sig = 1.f / (1.f + __expf(-g));
        d[i] = __float2bfloat16(y * u * sig * (1.f + g * (1.f - sig)));
        d[n + i] = __float2bfloat16(y * g * sig);
    }
}

// ---- Qwen3.5's hybrid layers ----

// Gated DeltaNet's causal depthwise convolution then SiLU, over x (batch, seq, channels) preceded by
// `state` (batch, taps − 1, channels): the previous inputs, zeros at the start of a sequence. Writes
// the outputs (batch, seq, channels), then the last taps − 1 inputs (the next state), into `y`. One
// pass, f32 sums rounded once; replaces a concatenation, taps products and sums, and the SiLU. One
// block per row of `y`, threads over groups of eight channels (channels % 8 == 0, taps == 4 as in
// Qwen3.5), rows from 16-byte boundaries (src/causal_conv.rs sees to both).
#define CONV_TAPS 4

// The weights (channels, CONV_TAPS) of channels c .. c + 8 in four 16-byte loads: w[i][k] is channel
// c + i's tap k. Read one value a load, consecutive threads' addresses 64 bytes apart, they cost more
// than the rest of the convolution (414 µs a forward at qwen3.5-0.8b's 8 × 1024 × 6144, H200).
__device__ __forceinline__ void conv_weights(const __nv_bfloat16 *w, int c, float (&wt)[8][CONV_TAPS]) {
#pragma unroll
    for (int q = 0; q < CONV_TAPS; ++q) {
        float v[8];
        load8(w + c * CONV_TAPS + 8 * q, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) wt[(8 * q + e) / CONV_TAPS][(8 * q + e) % CONV_TAPS] = v[e];
    }
}
extern "C" __global__ void causal_conv_silu_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                                                 const __nv_bfloat16 *__restrict__ state, __nv_bfloat16 *__restrict__ y,
                                                 int batch, int seq, int channels, int taps) {
    const int before = taps - 1;
    const long long row = blockIdx.x, outputs = (long long)batch * seq;
    // Input src of sequence b, counted from the first new token (negative: from the state), channel c.
    const auto at = [&](int b, int src, int c) {
        return src >= 0 ? x + ((long long)b * seq + src) * channels + c : state + ((long long)b * before + before + src) * channels + c;
    };
    for (int c = 8 * threadIdx.x; c < channels; c += 8 * blockDim.x) {
        float out[8];
        if (row < outputs) {
            const int b = (int)(row / seq), t = (int)(row % seq);
            float wt[8][CONV_TAPS];
            conv_weights(w, c, wt);
#pragma unroll
            for (int i = 0; i < 8; ++i) out[i] = 0.f;
#pragma unroll
            for (int k = 0; k < CONV_TAPS; ++k) {
                float v[8];
                load8(at(b, t + k - before, c), v);
#pragma unroll
                for (int i = 0; i < 8; ++i) out[i] += v[i] * wt[i][k];
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) out[i] = out[i] / (1.f + __expf(-out[i]));
        } else {
            const int j = (int)(row - outputs), b = j / before, p = j % before;
            load8(at(b, seq + p - before, c), out);
        }
        store8(y + row * channels + c, out);
    }
}

// The backward of causal_conv_silu_bf16 from a zero state (training's case) for the inputs only (the
// convolution's weights are frozen): dx[s] = Σ_k dy[t]·silu'(a[t])·w[k] over the outputs t = s + taps − 1 − k
// that read x[s] through tap k, each pre-activation a[t] recomputed (taps products) rather than kept.
// One block per input row, threads over groups of eight channels, as the forward.
extern "C" __global__ void causal_conv_silu_backward_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                                                          const __nv_bfloat16 *__restrict__ dy, __nv_bfloat16 *__restrict__ dx,
                                                          int batch, int seq, int channels, int taps) {
    const int before = taps - 1, s = (int)(blockIdx.x % seq);
    const long long base = (long long)(blockIdx.x / seq) * seq * channels;
    for (int c = 8 * threadIdx.x; c < channels; c += 8 * blockDim.x) {
        float wt[8][CONV_TAPS], acc[8] = {};
        conv_weights(w, c, wt);
#pragma unroll
        for (int k = 0; k < CONV_TAPS; ++k) {
            const int t = s + before - k;
            if (t >= seq) continue;
            float a[8] = {}, g[8];
#pragma unroll
            for (int kk = 0; kk < CONV_TAPS; ++kk) {
                const int src = t + kk - before;
                if (src < 0) continue;
                float v[8];
                load8(x + base + (long long)src * channels + c, v);
#pragma unroll
                for (int i = 0; i < 8; ++i) a[i] += v[i] * wt[i][kk];
            }
            load8(dy + base + (long long)t * channels + c, g);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float sig = 1.f / (1.f + __expf(-a[i]));
                acc[i] += g[i] * sig * (1.f + a[i] * (1.f - sig)) * wt[i][k];
            }
        }
        store8(dx + base + (long long)s * channels + c, acc);
    }
}

__device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The gated delta rule's inputs, prepared in parallel over tokens (the work that would otherwise sit on
// the recurrence's sequential path): for each token and key head, q and k L2-normalised (q also scaled by
// 1/√dk) from `conv` (rows, 2·key_heads·dk + value_heads·dv), the convolution's output (q, k, v side by
// side); and for each value head the key head serves, the decay g = neg_a · softplus(a + dt_bias) and
// β = sigmoid(b). Writes, in f32: q (rows, key_heads, dk), k (the same), g (rows, value_heads), β (the
// same). One block per (row, key head).
extern "C" __global__ void gated_delta_prepare_bf16(const __nv_bfloat16 *__restrict__ conv, const __nv_bfloat16 *__restrict__ a,
                                                    const __nv_bfloat16 *__restrict__ b, const float *__restrict__ neg_a,
                                                    const float *__restrict__ dt_bias, float *__restrict__ out, int rows,
                                                    int key_heads, int value_heads, int dk, int dv) {
    __shared__ float shared[32];
    const long long row = blockIdx.x / key_heads;
    const int kh = blockIdx.x % key_heads;
    const long long kd = (long long)key_heads * dk, width = 2 * kd + (long long)value_heads * dv;
    const __nv_bfloat16 *r = conv + row * width;
    float qq = 0.f, kk = 0.f;
    for (int i = threadIdx.x; i < dk; i += blockDim.x) {
        const float q = __bfloat162float(r[kh * dk + i]), k = __bfloat162float(r[kd + kh * dk + i]);
        qq += q * q, kk += k * k;
    }
    const float qinv = rsqrtf((float)dk) / sqrtf(block_reduce<false>(qq, shared) + 1e-6f);
    const float kinv = 1.f / sqrtf(block_reduce<false>(kk, shared) + 1e-6f);
    float *q_out = out + (row * key_heads + kh) * dk, *k_out = q_out + rows * kd;
    for (int i = threadIdx.x; i < dk; i += blockDim.x) {
        q_out[i] = __bfloat162float(r[kh * dk + i]) * qinv;
        k_out[i] = __bfloat162float(r[kd + kh * dk + i]) * kinv;
    }
    float *g_out = out + 2 * rows * kd, *beta_out = g_out + (long long)rows * value_heads;
    const int ratio = value_heads / key_heads;
    for (int v = threadIdx.x; v < ratio; v += blockDim.x) {
        const int h = kh * ratio + v;
        const float x = __bfloat162float(a[row * value_heads + h]) + dt_bias[h];
        g_out[row * value_heads + h] = neg_a[h] * (x > 20.f ? x : log1pf(__expf(x)));
        beta_out[row * value_heads + h] = 1.f / (1.f + __expf(-__bfloat162float(b[row * value_heads + h])));
    }
}

// The backward of gated_delta_prepare_bf16 (with the values' pass-through): from the gradients of the
// prepared inputs, as gdn_chunk_grads writes them (`grads`: dq and dk per value head, dv,
// dg, dβ), writes those of the raw inputs in bf16: d_conv (rows, 2·key_heads·dk + value_heads·dv),
// then d_a and d_b (rows, value_heads). A key head's dq and dk sum over the value heads it serves; the
// L2 norm's backward is (dy − y (y·dy)) / ‖x‖; softplus' is the sigmoid; β' = β(1 − β). One block per
// (row, key head), as the forward.
extern "C" __global__ void gated_delta_prepare_backward_bf16(const __nv_bfloat16 *__restrict__ conv, const __nv_bfloat16 *__restrict__ a,
                                                             const __nv_bfloat16 *__restrict__ b, const float *__restrict__ neg_a,
                                                             const float *__restrict__ dt_bias, const float *__restrict__ grads,
                                                             __nv_bfloat16 *__restrict__ out, int rows, int key_heads, int value_heads,
                                                             int dk, int dv) {
    __shared__ float shared[32];
    const long long row = blockIdx.x / key_heads;
    const int kh = blockIdx.x % key_heads, ratio = value_heads / key_heads;
    const long long kd = (long long)key_heads * dk, width = 2 * kd + (long long)value_heads * dv;
    const long long vrows = (long long)rows * value_heads;
    const float *dq = grads, *dkk = dq + vrows * dk, *d_v = dkk + vrows * dk, *dg = d_v + vrows * dv, *db = dg + vrows;
    const __nv_bfloat16 *r = conv + row * width;
    __nv_bfloat16 *d_conv = out + row * width, *d_a = out + (long long)rows * width, *d_b = d_a + vrows;
    const float scale = rsqrtf((float)dk);
    // The gradient of a key head's normalised q (scaled) or k: the sum over the value heads it serves.
    const auto served = [&](const float *g, int i) {
        float sum = 0.f;
        for (int v = 0; v < ratio; ++v) sum += g[(row * value_heads + kh * ratio + v) * dk + i];
        return sum;
    };
    float qq = 0.f, kk = 0.f, qd = 0.f, kdot = 0.f;
    for (int i = threadIdx.x; i < dk; i += blockDim.x) {
        const float q = __bfloat162float(r[kh * dk + i]), k = __bfloat162float(r[kd + kh * dk + i]);
        qq += q * q, kk += k * k, qd += q * served(dq, i) * scale, kdot += k * served(dkk, i);
    }
    const float qn = sqrtf(block_reduce<false>(qq, shared) + 1e-6f), kn = sqrtf(block_reduce<false>(kk, shared) + 1e-6f);
    // y·dy with y = x / ‖x‖.
    const float qy = block_reduce<false>(qd, shared) / qn, ky = block_reduce<false>(kdot, shared) / kn;
    for (int i = threadIdx.x; i < dk; i += blockDim.x) {
        const float q = __bfloat162float(r[kh * dk + i]), k = __bfloat162float(r[kd + kh * dk + i]);
        d_conv[kh * dk + i] = __float2bfloat16((served(dq, i) * scale - q / qn * qy) / qn);
        d_conv[kd + kh * dk + i] = __float2bfloat16((served(dkk, i) - k / kn * ky) / kn);
    }
    for (int e = threadIdx.x; e < ratio * dv; e += blockDim.x) {
        const long long h = kh * ratio + e / dv;
        d_conv[2 * kd + h * dv + e % dv] = __float2bfloat16(d_v[(row * value_heads + h) * dv + e % dv]);
    }
    for (int v = threadIdx.x; v < ratio; v += blockDim.x) {
        const long long at = row * value_heads + kh * ratio + v;
        const int h = kh * ratio + v;
        const float x = __bfloat162float(a[at]) + dt_bias[h];
        d_a[at] = __float2bfloat16(dg[at] * neg_a[h] * (x > 20.f ? 1.f : 1.f / (1.f + __expf(-x))));
        const float beta = 1.f / (1.f + __expf(-__bfloat162float(b[at])));
        d_b[at] = __float2bfloat16(db[at] * beta * (1.f - beta));
    }
}

// The gated delta rule over prepared inputs (`prepared`, as gated_delta_prepare_bf16 writes it) and the
// values (the last value_heads·dv channels of `conv`'s rows), from `state` (batch, value_heads, DK, dv).
// `out` receives the outputs (batch, seq, value_heads, dv), then the final states, in f32.
//
// The recurrence per token — S ← S·e^g; δ = β(v − Sᵀk); S ← S + kδᵀ; o = Sᵀq — touches state column
// j only through column j. So DK / 32 lanes own one column of S, 32 rows each in registers, and a warp
// takes 1024 / DK columns of one head: no shared state, no block-wide barrier, and the two dot
// products over a column are summed across its lanes by shuffles. Tokens come in tiles of T: their
// q, k, v, g and β are staged in shared memory by the whole warp at once (one round trip to memory
// per tile, as float4), so the sequential path per token is the arithmetic alone.
template <int DK, int T>
__device__ void gated_delta_rule(const float *__restrict__ prepared, const __nv_bfloat16 *__restrict__ conv,
                                 const float *__restrict__ state, float *__restrict__ out, int batch, int seq,
                                 int key_heads, int value_heads, int dv) {
    constexpr int ROWS = 32, COLUMNS = 32 * 32 / DK;
    __shared__ __align__(16) float qs[T][DK];
    __shared__ __align__(16) float ks[T][DK];
    __shared__ float vs[T][COLUMNS], gs[T], bs[T];
    const int slices = (dv + COLUMNS - 1) / COLUMNS;
    const int slice = blockIdx.x % slices, h = (blockIdx.x / slices) % value_heads;
    const int b = blockIdx.x / slices / value_heads;
    const int lane = threadIdx.x, column = lane % COLUMNS, j = slice * COLUMNS + column;
    const int first = (lane / COLUMNS) * ROWS;
    const bool active = j < dv;
    const int kh = h / (value_heads / key_heads);
    const long long rows = (long long)batch * seq, kd = (long long)key_heads * DK;
    const long long width = 2 * kd + (long long)value_heads * dv;
    const long long state_at = ((long long)b * value_heads + h) * DK * dv;
    const float *qp = prepared, *kp = prepared + rows * kd, *gp = prepared + 2 * rows * kd, *bp = gp + rows * value_heads;
    float s[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; ++i) s[i] = active ? state[state_at + (long long)(first + i) * dv + j] : 0.f;
    const auto column_sum = [](float v) {
        for (int o = COLUMNS; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    };
    for (int t0 = 0; t0 < seq; t0 += T) {
        const int n = min(T, seq - t0);
        __syncwarp();  // every lane is done with the previous tile
        for (int e = lane; e < T * DK / 4; e += 32) {
            const int tt = e / (DK / 4), i4 = e % (DK / 4);
            if (tt < n) {
                const long long at = (((long long)b * seq + t0 + tt) * key_heads + kh) * DK;
                reinterpret_cast<float4 *>(qs[tt])[i4] = reinterpret_cast<const float4 *>(qp + at)[i4];
                reinterpret_cast<float4 *>(ks[tt])[i4] = reinterpret_cast<const float4 *>(kp + at)[i4];
            }
        }
        for (int e = lane; e < T * COLUMNS; e += 32) {
            const int tt = e / COLUMNS, c = e % COLUMNS, col = slice * COLUMNS + c;
            const long long row = (long long)b * seq + t0 + tt;
            vs[tt][c] = tt < n && col < dv ? __bfloat162float(conv[row * width + 2 * kd + (long long)h * dv + col]) : 0.f;
        }
        if (lane < n) {
            const long long row = (long long)b * seq + t0 + lane;
            gs[lane] = gp[row * value_heads + h];
            bs[lane] = bp[row * value_heads + h];
        }
        __syncwarp();
        for (int tt = 0; tt < n; ++tt) {
            const float decay = __expf(gs[tt]);
            const float4 *kr = reinterpret_cast<const float4 *>(ks[tt] + first);
            const float4 *qr = reinterpret_cast<const float4 *>(qs[tt] + first);
            float m0 = 0.f, m1 = 0.f, m2 = 0.f, m3 = 0.f;
#pragma unroll
            for (int i = 0; i < ROWS / 4; ++i) {
                const float4 k = kr[i];
                s[4 * i] *= decay, s[4 * i + 1] *= decay, s[4 * i + 2] *= decay, s[4 * i + 3] *= decay;
                m0 += s[4 * i] * k.x, m1 += s[4 * i + 1] * k.y, m2 += s[4 * i + 2] * k.z, m3 += s[4 * i + 3] * k.w;
            }
            const float delta = bs[tt] * (vs[tt][column] - column_sum((m0 + m1) + (m2 + m3)));
            float o0 = 0.f, o1 = 0.f, o2 = 0.f, o3 = 0.f;
#pragma unroll
            for (int i = 0; i < ROWS / 4; ++i) {
                const float4 k = kr[i], q = qr[i];
                s[4 * i] += k.x * delta, s[4 * i + 1] += k.y * delta, s[4 * i + 2] += k.z * delta, s[4 * i + 3] += k.w * delta;
                o0 += s[4 * i] * q.x, o1 += s[4 * i + 1] * q.y, o2 += s[4 * i + 2] * q.z, o3 += s[4 * i + 3] * q.w;
            }
            const float total = column_sum((o0 + o1) + (o2 + o3));
            if (active && first == 0) out[(((long long)b * seq + t0 + tt) * value_heads + h) * dv + j] = total;
        }
    }
    float *final_state = out + rows * value_heads * dv + state_at;
    if (active) {
#pragma unroll
        for (int i = 0; i < ROWS; ++i) final_state[(long long)(first + i) * dv + j] = s[i];
    }
}

#define GATED_DELTA_RULE(DK)                                                                                           \
    extern "C" __global__ void gated_delta_rule_dk##DK(const float *__restrict__ prepared,                            \
                                                       const __nv_bfloat16 *__restrict__ conv,                         \
                                                       const float *__restrict__ state, float *__restrict__ out,       \
                                                       int batch, int seq, int key_heads, int value_heads, int dv) {   \
        gated_delta_rule<DK, 8>(prepared, conv, state, out, batch, seq, key_heads, value_heads, dv);                   \
    }
GATED_DELTA_RULE(32)
GATED_DELTA_RULE(64)
GATED_DELTA_RULE(128)

// 1 / rms of a row of the delta rule's f32 output as the gated norm takes it (rounded to bf16 first),
// over the warp that holds the row.
__device__ float gated_norm_inverse_rms(const float *o, int n, float eps) {
    float s = 0.f;
    for (int j = threadIdx.x % 32; j < n; j += 32) {
        const float v = round_bf16(o[j]);
        s += v * v;
    }
    return 1.f / sqrtf(warp_sum(s) / n + eps);
}

// The row of the gated norm's kernels a thread works on: one warp a row (rows are one value head, 128
// values in Qwen3.5, so a block a row spent its time in two block-wide reductions).
__device__ long long gated_norm_row() { return (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; }

// Gated DeltaNet's output norm per value head of n values: y = bf16(bf16(bf16(o)/rms) · w) · silu(z),
// with o the delta rule's f32 output, rounded as transformers' `Qwen3_5RMSNormGated` rounds in bf16
// (the weight scales by w, not 1 + w). One warp per row; replaces about twelve elementary ops.
extern "C" __global__ void gated_rms_norm_bf16(const float *__restrict__ o, const __nv_bfloat16 *__restrict__ z,
                                               const __nv_bfloat16 *__restrict__ w, __nv_bfloat16 *__restrict__ y, int n,
                                               float eps, long long rows) {
    const long long row = gated_norm_row();
    if (row >= rows) return;  // the whole warp: the reduction below is the warp's own
    const float inv = gated_norm_inverse_rms(o + row * n, n, eps);
    for (int j = threadIdx.x % 32; j < n; j += 32) {
        const float normed = round_bf16(round_bf16(round_bf16(o[row * n + j]) * inv) * __bfloat162float(w[j]));
        const float g = __bfloat162float(z[row * n + j]);
        y[row * n + j] = __float2bfloat16(normed * (g / (1.f + __expf(-g))));
    }
}

// The backward of gated_rms_norm_bf16 for o and z (the weight is frozen), in f32 from the f32 statistics:
// with x̂ = o/rms and n = x̂·w, y = n·silu(z): dz = dy·n·silu'(z), and dx̂ = dy·silu(z)·w gives
// do = (dx̂ − x̂·mean(dx̂·x̂)) / rms. Writes do (rows, n), then dz (rows, n). One warp per row.
extern "C" __global__ void gated_rms_norm_backward_bf16(const float *__restrict__ o, const __nv_bfloat16 *__restrict__ z,
                                                        const __nv_bfloat16 *__restrict__ w, const __nv_bfloat16 *__restrict__ dy,
                                                        float *__restrict__ out, int n, float eps, long long rows) {
    const long long row = gated_norm_row();
    if (row >= rows) return;
    const float inv = gated_norm_inverse_rms(o + row * n, n, eps);
    float dot = 0.f;
    for (int j = threadIdx.x % 32; j < n; j += 32) {
        const float g = __bfloat162float(z[row * n + j]), sig = 1.f / (1.f + __expf(-g));
        const float xhat = round_bf16(o[row * n + j]) * inv, d = __bfloat162float(dy[row * n + j]);
        const float dxhat = d * g * sig * __bfloat162float(w[j]);
        dot += dxhat * xhat;
        out[rows * n + row * n + j] = d * xhat * __bfloat162float(w[j]) * sig * (1.f + g * (1.f - sig));
    }
    const float mean = warp_sum(dot) / n;
    for (int j = threadIdx.x % 32; j < n; j += 32) {
        const float g = __bfloat162float(z[row * n + j]), sig = 1.f / (1.f + __expf(-g));
        const float xhat = round_bf16(o[row * n + j]) * inv, d = __bfloat162float(dy[row * n + j]);
        out[row * n + j] = (d * g * sig * __bfloat162float(w[j]) - xhat * mean) * inv;
    }
}

// Gated attention's output gate: y = out · bf16(sigmoid(gate)) over (rows, heads·d), where each head's
// gate is the second half of its 2d outputs of q_proj, read in place from `projected` (rows, heads·2d)
// (the elementary ops copy it out, take the sigmoid and multiply: three passes).
extern "C" __global__ void sigmoid_gate_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ projected,
                                             __nv_bfloat16 *__restrict__ y, long long n, int d) {
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n; idx += (long long)gridDim.x * blockDim.x) {
        const int i = idx % d;
        const float g = __bfloat162float(projected[2 * (idx - i) + d + i]);
        const float sig = round_bf16(1.f / (1.f + __expf(-g)));
        y[idx] = __float2bfloat16(__bfloat162float(x[idx]) * sig);
    }
}

// The output gate's backward, y = out · σ(gate) given dy, in f32 from the bf16 inputs (ignoring the
// forward's rounding of σ, as the elementary ops' backward does): d_out = dy · σ and
// d_gate = dy · out · σ(1 − σ). `d` receives d_out (rows, heads·d), then the gradient of `projected`
// (rows, heads·2d): each head's gate half gets d_gate and its query half 0, since the queries' own
// gradient reaches `projected` through the attention. One pass replaces the elementary ops' copy of the
// gate, the sigmoid's backward and two products, and keeps nothing but the two inputs.
extern "C" __global__ void sigmoid_gate_backward_bf16(const __nv_bfloat16 *__restrict__ x,
                                                      const __nv_bfloat16 *__restrict__ projected,
                                                      const __nv_bfloat16 *__restrict__ dy,
                                                      __nv_bfloat16 *__restrict__ d, long long n, int dim) {
    __nv_bfloat16 *d_projected = d + n;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n; idx += (long long)gridDim.x * blockDim.x) {
        const int i = idx % dim;
        const long long gate_at = 2 * (idx - i) + dim + i;
        const float sig = 1.f / (1.f + __expf(-__bfloat162float(projected[gate_at])));
        const float g = __bfloat162float(dy[idx]);
        d[idx] = __float2bfloat16(g * sig);
        d_projected[gate_at] = __float2bfloat16(g * __bfloat162float(x[idx]) * sig * (1.f - sig));
        d_projected[gate_at - dim] = __float2bfloat16(0.f);
    }
}

// ---- The optimizer step on the device ----

// AdamW's step for one value, in the host's order of operations exactly (forge-host's
// `AdamConfig::step`): the moments in f32, the update in f64, each operation rounded on its own (the
// _rn intrinsics forbid the compiler's fused multiply-adds, which the host does not do), so the
// device's parameters and moments equal the host's bit for bit. `a` holds the step's constants:
// beta1, 1 − beta1, beta2, 1 − beta2 (f32, as the host rounds them) and, in f64, the bias corrections
// 1 − beta1ᵗ and 1 − beta2ᵗ, the decay factor 1 − lr·weight_decay, lr and eps.
struct AdamStep {
    float b1, c1, b2, c2;
    double bc1, bc2, decay, lr, eps;
    __device__ float apply(float p, float g, float &m, float &v) const {
        m = __fadd_rn(__fmul_rn(b1, m), __fmul_rn(c1, g));
        v = __fadd_rn(__fmul_rn(b2, v), __fmul_rn(__fmul_rn(c2, g), g));
        const double m_hat = __ddiv_rn((double)m, bc1), v_hat = __ddiv_rn((double)v, bc2);
        const double decayed = __dmul_rn((double)p, decay);
        return __double2float_rn(__dsub_rn(decayed, __ddiv_rn(__dmul_rn(lr, m_hat), __dadd_rn(__dsqrt_rn(v_hat), eps))));
    }
};

// AdamW with f32 moments over n values: from the parameter, its gradient and the state (m then v),
// writes the new parameter, then the new state, into `out` (3n).
extern "C" __global__ void adamw_f32(const float *__restrict__ param, const float *__restrict__ grad,
                                     const float *__restrict__ state, float *__restrict__ out, long long n, float b1,
                                     float c1, float b2, float c2, double bc1, double bc2, double decay, double lr,
                                     double eps) {
    const AdamStep step{b1, c1, b2, c2, bc1, bc2, decay, lr, eps};
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float m = state[i], v = state[n + i];
        out[i] = step.apply(param[i], grad[i], m, v);
        out[n + i] = m;
        out[2 * n + i] = v;
    }
}

// The code of the 256-entry sorted map nearest to x, ties to the lower, as the host's
// `DynamicMap::quantize`: a binary search for the first value not below x.
__device__ unsigned char nearest_code(const float *map, float x) {
    int lo = 0, hi = 256;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (map[mid] < x) lo = mid + 1; else hi = mid;
    }
    const int upper = min(lo, 255), lower = max(upper - 1, 0);
    return fabsf(__fsub_rn(x, map[lower])) <= fabsf(__fsub_rn(map[upper], x)) ? lower : upper;
}

// AdamW with block-wise 8-bit moments (forge-host's `adamw8bit`): one block of 256 threads per block
// of 256 values decodes both moments (code value × the block's absmax), steps as adamw_f32 does,
// finds the new absmaxes and codes the moments again. The state is one f32 buffer laid out as
// [absmax_m (blocks), absmax_v (blocks), codes_m (n bytes, padded to 4), codes_v (the same)]: a
// candle tensor has one dtype, and the codes ride in it as bytes. `maps` is the signed map then the
// unsigned one. Writes the new parameter (n), then the new state, into `out`.
extern "C" __global__ void adamw8bit_f32(const float *__restrict__ param, const float *__restrict__ grad,
                                         const float *__restrict__ state, const float *__restrict__ maps,
                                         float *__restrict__ out, long long n, float b1, float c1, float b2,
                                         float c2, double bc1, double bc2, double decay, double lr, double eps) {
    __shared__ float signed_map[256], unsigned_map[256], reduce[2][8];
    const AdamStep step{b1, c1, b2, c2, bc1, bc2, decay, lr, eps};
    const long long blocks = (n + 255) / 256, code_words = (n + 3) / 4;
    const float *absmax = state;
    const unsigned char *codes = reinterpret_cast<const unsigned char *>(state + 2 * blocks);
    float *new_absmax = out + n;
    unsigned char *new_codes = reinterpret_cast<unsigned char *>(out + n + 2 * blocks);
    signed_map[threadIdx.x] = maps[threadIdx.x];
    unsigned_map[threadIdx.x] = maps[256 + threadIdx.x];
    __syncthreads();
    for (long long blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
        const long long i = blk * 256 + threadIdx.x;
        const bool live = i < n;
        float m = 0.f, v = 0.f;
        if (live) {
            m = signed_map[codes[i]] * absmax[blk];
            v = unsigned_map[codes[4 * code_words + i]] * absmax[blocks + blk];
            out[i] = step.apply(param[i], grad[i], m, v);
        }
        float am = fabsf(m), av = fabsf(v);
        for (int o = 16; o > 0; o >>= 1) {
            am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
            av = fmaxf(av, __shfl_xor_sync(0xffffffffu, av, o));
        }
        if (threadIdx.x % 32 == 0) reduce[0][threadIdx.x / 32] = am, reduce[1][threadIdx.x / 32] = av;
        __syncthreads();
        am = 0.f, av = 0.f;
        for (int w = 0; w < 8; ++w) am = fmaxf(am, reduce[0][w]), av = fmaxf(av, reduce[1][w]);
        __syncthreads();  // the next block's maxima reuse `reduce`
        if (threadIdx.x == 0) new_absmax[blk] = am, new_absmax[blocks + blk] = av;
        const float inv_m = am > 0.f ? __fdiv_rn(1.f, am) : 0.f, inv_v = av > 0.f ? __fdiv_rn(1.f, av) : 0.f;
        if (live) {
            new_codes[i] = nearest_code(signed_map, __fmul_rn(m, inv_m));
            new_codes[4 * code_words + i] = nearest_code(unsigned_map, __fmul_rn(v, inv_v));
        }
    }
    // The padding bytes after each code array, so the whole output is written.
    if (blockIdx.x == 0 && threadIdx.x < 4 * code_words - n) {
        new_codes[n + threadIdx.x] = 0;
        new_codes[4 * code_words + n + threadIdx.x] = 0;
    }
}

// ---- Ops that would otherwise load a whole candle PTX module ----
// candle's kernels are PTX, compiled by the driver per module on first use: 7.2 s for its binary ops,
// 1.9 s for its indexing ops on an H200 (`forge kernels --candle-jit`). The residual adds and the
// embedding lookup are all that eval and generation need of those two modules, so forge runs its own.

// Rows `ids` of a (vocab, dim) bf16 table, gathered into (rows, dim).
extern "C" __global__ void embedding_bf16(const __nv_bfloat16 *__restrict__ table, const unsigned int *__restrict__ ids,
                                          __nv_bfloat16 *__restrict__ y, long long n, int dim) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / dim;
        y[i] = table[(long long)ids[row] * dim + (i - row * dim)];
    }
}

// x (a, b, c, d) written with its middle dimensions swapped, (a, c, b, d): the values made heads-first
// for attention and attention's output tokens-first for o_proj, without candle's strided copy (its unary
// PTX module, 2.2 s to compile on a fresh H200). Named for the first: seq = b, heads = c.
extern "C" __global__ void transpose12_bf16(const __nv_bfloat16 *__restrict__ x, __nv_bfloat16 *__restrict__ y,
                                            long long n, int seq, int heads, int d) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const int e = i % d;
        const long long r = i / d;  // (b, s, h) row of x
        const int h = r % heads, s = (r / heads) % seq;
        const long long b = r / heads / seq;
        y[((b * heads + h) * seq + s) * d + e] = x[i];
    }
}

// x (rows, n) + bias (n), bf16, in f32 rounded once (as candle's add): a linear layer's bias, and with n
// the whole length a residual add.
extern "C" __global__ void add_bias_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ bias,
                                         __nv_bfloat16 *__restrict__ y, long long total, long long n) {
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x, step = (long long)gridDim.x * blockDim.x;
    // Eight values a load, one index division for the eight (none for a residual, n = total): 1.2 TB/s
    // a value at a time with a division each on an H200 (ncu).
    if (by8(x, total) && by8(bias, n) && by8(y, total)) {
        for (long long i = start; i < total / 8; i += step) {
            const long long e = 8 * i;
            float a[8], b[8];
            load8(x + e, a);
            load8(bias + (n == total ? e : e % n), b);
#pragma unroll
            for (int k = 0; k < 8; ++k) a[k] += b[k];
            store8(y + e, a);
        }
        return;
    }
    for (long long i = start; i < total; i += step)
        y[i] = __float2bfloat16(__bfloat162float(x[i]) + __bfloat162float(bias[i % n]));
}

// A frozen weight's int8 rows back to bf16 (forge-kernels' int8_rows.rs): eight codes (one 8-byte load)
// to eight bf16 (one 16-byte store) a thread and step, `(code - 128) * scale[row]`, rounded once. Rows are
// a multiple of 8 wide, so a group never straddles two rows.
extern "C" __global__ void dequant_rows_u8_bf16(const unsigned char *__restrict__ codes, const float *__restrict__ scales,
                                                __nv_bfloat16 *__restrict__ w, long long groups, int cols) {
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < groups; g += (long long)gridDim.x * blockDim.x) {
        const long long i = g * 8;
        const float s = scales[i / cols];
        const uint2 c = *reinterpret_cast<const uint2 *>(codes + i);
        __align__(16) __nv_bfloat16 v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const unsigned int byte = ((k < 4 ? c.x : c.y) >> (8 * (k & 3))) & 0xffu;
            v[k] = __float2bfloat16(((float)byte - 128.f) * s);
        }
        *reinterpret_cast<uint4 *>(w + i) = *reinterpret_cast<const uint4 *>(v);
    }
}

// x viewed as (outer, size, inner), bf16, contiguous: positions start .. start + len of its middle
// dimension, written contiguous (outer, len, inner). A narrowed tensor that must be made contiguous
// would otherwise take candle's strided copy (its unary module).
extern "C" __global__ void narrow_bf16(const __nv_bfloat16 *__restrict__ x, __nv_bfloat16 *__restrict__ y, long long n,
                                       int size, int inner, int start, int len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long o = i / ((long long)len * inner);
        const long long rest = i - o * len * inner;
        y[i] = x[(o * size + start) * inner + rest];
    }
}

#include "gated_delta_chunked.cu"
#include "flash_attention.cu"
#include "flash_attention_backward.cu"
#include "matvec.cu"
