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

// logsumexp of a row of bf16 logits in f32, reading it once (a running max and sum, as flash
// attention keeps its softmax statistics); every thread of the block gets it.
__device__ float row_logsumexp(const __nv_bfloat16 *__restrict__ x, int vocab, float *shared) {
    float m = -INFINITY, s = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float v = __bfloat162float(x[j]);
        if (v > m) {
            s = s * __expf(m - v) + 1.f;
            m = v;
        } else {
            s += __expf(v - m);
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
    const unsigned int t = targets[row];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        d[j] = __float2bfloat16(g * (__expf(__bfloat162float(x[j]) - lse) - (j == (int)t ? 1.f : 0.f)));
}

// RMS norm of each row of `n` bf16 values: y = bf16(x / sqrt(mean(x²) + eps)) · w, statistics in f32,
// as transformers rounds before the weight. One read, one write; replaces nine elementary ops.
extern "C" __global__ void rms_norm_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                                         __nv_bfloat16 *__restrict__ y, int n, float eps) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const __nv_bfloat16 *xr = x + row * n;
    __nv_bfloat16 *yr = y + row * n;
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float v = __bfloat162float(xr[j]);
        s += v * v;
    }
    const float r = rsqrtf(block_reduce<false>(s, shared) / n + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        yr[j] = __float2bfloat16(__bfloat162float(__float2bfloat16(__bfloat162float(xr[j]) * r)) * __bfloat162float(w[j]));
}

// The gradient of x for y = x / rms(x) · w given dy, per row of n values, in f32 (ignoring the forward's
// rounding to bf16, as the elementary ops' backward does): with r = 1 / rms(x) and gw = dy · w,
// dx = gw · r - x · r³ · mean(x · gw). One block per row, three reads and one write.
extern "C" __global__ void rms_norm_backward_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                                                  const __nv_bfloat16 *__restrict__ dy, __nv_bfloat16 *__restrict__ dx,
                                                  int n, float eps) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const __nv_bfloat16 *xr = x + row * n, *gr = dy + row * n;
    __nv_bfloat16 *dr = dx + row * n;
    float sq = 0.f, dot = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float v = __bfloat162float(xr[j]);
        sq += v * v;
        dot += v * __bfloat162float(gr[j]) * __bfloat162float(w[j]);
    }
    const float r = rsqrtf(block_reduce<false>(sq, shared) / n + eps);
    const float c = r * r * r * block_reduce<false>(dot, shared) / n;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        dr[j] = __float2bfloat16(__bfloat162float(gr[j]) * __bfloat162float(w[j]) * r - __bfloat162float(xr[j]) * c);
}

// Where rotary pair `idx` of a (batch, seq, heads, d) tensor lives: its offsets in that layout and in
// (batch, heads, seq, d), the index i < d / 2 of its first element, and the cos and sin table entries
// of its two elements at its position.
struct RopePair {
    long long tokens_first, heads_first;
    int i;
    float c1, c2, s1, s2;
};

__device__ RopePair rope_pair(long long idx, int seq, int heads, int d, const __nv_bfloat16 *__restrict__ cos,
                              const __nv_bfloat16 *__restrict__ sin) {
    const int half = d / 2;
    const int i = idx % half;
    long long rest = idx / half;
    const int h = rest % heads;
    rest /= heads;
    const int s = rest % seq;
    const long long b = rest / seq;
    const int t = s * d + i;
    return {((b * seq + s) * heads + h) * d,
            ((b * heads + h) * seq + s) * d,
            i,
            __bfloat162float(cos[t]),
            __bfloat162float(cos[t + half]),
            __bfloat162float(sin[t]),
            __bfloat162float(sin[t + half])};
}

// Rotary embedding of x laid out (batch, seq, heads, d), written as (batch, heads, seq, d): the
// transpose the attention needs and `x·cos + rotate_half(x)·sin` in one pass. cos and sin are the
// (seq, d) tables in bf16; products rounded to bf16 as the elementary ops do, the sum in f32.
extern "C" __global__ void rope_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ cos,
                                     const __nv_bfloat16 *__restrict__ sin, __nv_bfloat16 *__restrict__ y,
                                     int batch, int seq, int heads, int d) {
    const int half = d / 2;
    const long long total = (long long)batch * seq * heads * half;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const RopePair p = rope_pair(idx, seq, heads, d, cos, sin);
        const int i = p.i;
        const __nv_bfloat16 *xr = x + p.tokens_first;
        __nv_bfloat16 *yr = y + p.heads_first;
        const float x1 = __bfloat162float(xr[i]), x2 = __bfloat162float(xr[i + half]);
        const float c1 = p.c1, c2 = p.c2, s1 = p.s1, s2 = p.s2;
        const auto r = [](float v) { return __bfloat162float(__float2bfloat16(v)); };
        yr[i] = __float2bfloat16(r(x1 * c1) + r(-x2 * s1));
        yr[i + half] = __float2bfloat16(r(x2 * c2) + r(x1 * s2));
    }
}

// SwiGLU's gate: y = bf16(silu(gate)) · up, elementwise over bf16, rounding as the two elementary ops do.
extern "C" __global__ void swiglu_bf16(const __nv_bfloat16 *__restrict__ gate, const __nv_bfloat16 *__restrict__ up,
                                       __nv_bfloat16 *__restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = __bfloat162float(gate[i]);
        const float silu = __bfloat162float(__float2bfloat16(g / (1.f + __expf(-g))));
        y[i] = __float2bfloat16(silu * __bfloat162float(up[i]));
    }
}

// The gradient of rope_bf16's input given dy laid out (batch, heads, seq, d), written (batch, seq,
// heads, d): y = x·cos + rotate_half(x)·sin, so dx = dy·cos + [z₂, -z₁] with z = dy·sin, in f32.
extern "C" __global__ void rope_backward_bf16(const __nv_bfloat16 *__restrict__ dy, const __nv_bfloat16 *__restrict__ cos,
                                              const __nv_bfloat16 *__restrict__ sin, __nv_bfloat16 *__restrict__ dx,
                                              int batch, int seq, int heads, int d) {
    const int half = d / 2;
    const long long total = (long long)batch * seq * heads * half;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const RopePair p = rope_pair(idx, seq, heads, d, cos, sin);
        const int i = p.i;
        const __nv_bfloat16 *gr = dy + p.heads_first;
        __nv_bfloat16 *dr = dx + p.tokens_first;
        const float g1 = __bfloat162float(gr[i]), g2 = __bfloat162float(gr[i + half]);
        const float c1 = p.c1, c2 = p.c2, s1 = p.s1, s2 = p.s2;
        dr[i] = __float2bfloat16(g1 * c1 + g2 * s2);
        dr[i + half] = __float2bfloat16(g2 * c2 - g1 * s1);
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
