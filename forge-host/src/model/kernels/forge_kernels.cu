// forge's CUDA kernels, compiled by build.rs to sm_90 machine code (a cubin embedded in the binary), so
// nothing is compiled on the GPU machine at start-up. Each has a CPU reference in the Rust op that
// launches it, and `forge kernels --device cuda` checks the two against each other.
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

// Next-token NLL of each row of bf16 logits: logsumexp(row) - row[target], in f32, reading the row once
// (a running max and sum, as flash attention keeps its softmax statistics). Replaces upcasting the
// logits to f32 and five more passes over them.
extern "C" __global__ void row_nll_bf16(const __nv_bfloat16 *__restrict__ logits, const unsigned int *__restrict__ targets,
                                        float *__restrict__ nll, int vocab) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const __nv_bfloat16 *x = logits + row * vocab;
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
    const float sum = block_reduce<false>(m == -INFINITY ? 0.f : s * __expf(m - top), shared);
    if (threadIdx.x == 0) nll[row] = top + __logf(sum) - __bfloat162float(x[targets[row]]);
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
        const int i = idx % half;
        long long rest = idx / half;
        const int h = rest % heads;
        rest /= heads;
        const int s = rest % seq;
        const int b = rest / seq;
        const __nv_bfloat16 *xr = x + (((long long)b * seq + s) * heads + h) * d;
        __nv_bfloat16 *yr = y + (((long long)b * heads + h) * seq + s) * d;
        const float x1 = __bfloat162float(xr[i]), x2 = __bfloat162float(xr[i + half]);
        const float c1 = __bfloat162float(cos[s * d + i]), c2 = __bfloat162float(cos[s * d + i + half]);
        const float s1 = __bfloat162float(sin[s * d + i]), s2 = __bfloat162float(sin[s * d + i + half]);
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
