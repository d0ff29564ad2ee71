// Decoding's products of one row, y = W·x for W (n, k) row-major: a warp a row of W, eight values a
// lane a load (k a multiple of 8), four loads of each lane in flight, sums in f32. A one-row product
// is a read of W at the card's bandwidth; cuBLAS's gemm kernels at m = 1 read it more slowly, and
// decoding is little else (a token of qwen3-4b read its 8 GB of weights at 32% of the copy ceiling as
// one CUDA graph, docs/BENCHMARKS.md, fifteenth session). x, at most tens of KiB, stays in L1 for the
// block's eight warps.
#define MV_WARPS 8

// A warp's dot of the weight row `wr` with x, reduced across the warp (every lane holds it).
__device__ __forceinline__ float row_dot(const __nv_bfloat16 *__restrict__ wr, const __nv_bfloat16 *__restrict__ x,
                                         int k, int lane) {
    float acc = 0.f;
#pragma unroll 4
    for (int c = lane * 8; c < k; c += 256) {
        float a[8], b[8];
        load8(wr + c, a);
        load8(x + c, b);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc = fmaf(a[i], b[i], acc);
    }
    return warp_sum(acc);
}

// y = w·x, one row of w a warp.
extern "C" __global__ void matvec_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                                       __nv_bfloat16 *__restrict__ y, int n, int k) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (row >= n) return;
    const float acc = row_dot(w + row * k, x, k, lane);
    if (lane == 0) y[row] = __float2bfloat16(acc);
}

// y = [w0; w1; w2]·x: three weights of one input (attention's q, k and v projections) as one launch,
// their outputs side by side. Three launches at qwen3-4b's q, k and v took 8.1, 5.8 and 5.4 µs, the
// two small ones a third of the card's bandwidth (call W). Kept apart from matvec_bf16: the same loop
// behind a choice of three weights and a walk over rows ran o_proj and down_proj 14 and 19% slower
// (10.0 and 19.0 µs, call X).
extern "C" __global__ void matvec3_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w0,
                                        const __nv_bfloat16 *__restrict__ w1, const __nv_bfloat16 *__restrict__ w2,
                                        __nv_bfloat16 *__restrict__ y, int n0, int n1, int n2, int k) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (row >= (long long)n0 + n1 + n2) return;
    const __nv_bfloat16 *wr = row < n0        ? w0 + row * k
                              : row < n0 + n1 ? w1 + (row - n0) * k
                                              : w2 + (row - n0 - n1) * k;
    const float acc = row_dot(wr, x, k, lane);
    if (lane == 0) y[row] = __float2bfloat16(acc);
}

// The MLP's first half at one row, y = silu(gate·x) · (up·x), as the unfused ops round it: each
// product to bf16, then swiglu_one. One launch where there were three (two products and swiglu_bf16):
// 28.0 µs where they took 33.9 at qwen3-4b's 9728 × 2560 (call X), 3.6 TB/s. The launcher sizes the
// grid to what the card holds at once (`Grid::OneWave`) and each warp walks rows a grid apart, so
// every warp takes the same count of rows, give or take one: a block for each eight rows (1216 blocks
// where 1056 fit) would leave a second wave of 160 at a seventh of the card.
extern "C" __global__ void matvec_swiglu_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ gate,
                                              const __nv_bfloat16 *__restrict__ up, __nv_bfloat16 *__restrict__ y, int n,
                                              int k) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * MV_WARPS;
    for (long long row = (long long)blockIdx.x * MV_WARPS + (threadIdx.x >> 5); row < n; row += warps) {
        const float g = row_dot(gate + row * k, x, k, lane), u = row_dot(up + row * k, x, k, lane);
        if (lane == 0) y[row] = __float2bfloat16(swiglu_one(round_bf16(g), round_bf16(u)));
    }
}
