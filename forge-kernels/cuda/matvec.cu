// Decoding's products of one row, y = W·x for W (n, k) row-major: a warp a row of W, eight values a
// lane a load (k a multiple of 8), four loads of each lane in flight, sums in f32. A one-row product
// is a read of W at the card's bandwidth; cuBLAS's gemm kernels at m = 1 read it more slowly, and
// decoding is little else (a token of qwen3-4b read its 8 GB of weights at 32% of the copy ceiling as
// one CUDA graph, docs/BENCHMARKS.md, fifteenth session). x, at most tens of KiB, stays in L1 for the
// block's eight warps.
#define MV_WARPS 8
extern "C" __global__ void matvec_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                                       __nv_bfloat16 *__restrict__ y, int n, int k) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (row >= n) return;
    const __nv_bfloat16 *wr = w + row * k;
    float acc = 0.f;
#pragma unroll 4
    for (int c = lane * 8; c < k; c += 256) {
        float a[8], b[8];
        load8(wr + c, a);
        load8(x + c, b);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc = fmaf(a[i], b[i], acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = __float2bfloat16(acc);
}
