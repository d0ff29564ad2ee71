// The backward of flash_attention.cu's forward, FlashAttention 2's way: the probabilities are made
// again tile by tile from q, k and each row's log-sum-exp, on mma.sync, and no (seq × seq) score,
// probability or gradient matrix is written. Three launches:
// - stats: each query row's log-sum-exp (one more walk of q·kᵀ, without p·v) and Δ = Σ dO·O, the
//   softmax backward's row term;
// - dq: a block of 64 query rows of one head walks its key tiles: dS = P ∘ (dO·vᵀ − Δ), dq += dS·k;
// - dkv: a block of 64 keys of one KV head (16 a warp) walks the query tiles that see them, for
//   `per_block` query heads of the group: dv += Pᵀ·dO, dk += dSᵀ·q. Where fewer heads than the group
//   share a block (more blocks for few KV heads), each block writes a partial sum and
//   flash_attention_group_sum_bf16 adds the group's.
// Two walks (dq, then dk and dv) instead of FlashAttention 2's one with atomic f32 adds of dq: one
// more q·kᵀ and dO·vᵀ a tile, no atomics, the same result whatever the order blocks run in.
//
// Included by forge_kernels.cu after flash_attention.cu, whose helpers it uses. q (batch, heads, seq,
// D), k and v (batch, kv_heads, past + seq, D), o and dO (batch, seq, heads · D), as the forward takes
// and gives them; stats (2, batch, heads, seq) f32: the log-sum-exp (of scores scaled by scale_log2,
// base 2) then Δ.

// Each query row's log-sum-exp and Δ.
template <int D, int BC>
__device__ void flash_attention_stats(const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k,
                                      const __nv_bfloat16 *__restrict__ o, const __nv_bfloat16 *__restrict__ dout,
                                      float *__restrict__ stats, int batch, int heads, int kv_heads, int seq, int past,
                                      float scale_log2) {
    extern __shared__ __align__(16) __nv_bfloat16 fa_shared[];
    constexpr int LD = D + FA_PAD;
    __nv_bfloat16 *sq = fa_shared, *sk = sq + FA_ROWS * LD;
    const FaRows at = fa_rows(batch, heads, kv_heads, seq);
    const int total = past + seq, warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int row0 = at.q0 + warp * 16 + g;
    const __nv_bfloat16 *kh = k + (long long)(at.b * kv_heads + at.kvh) * total * D;
    fa_copy<D>(sq, q + ((long long)(at.b * heads + at.h) * seq + at.q0) * D, FA_ROWS, seq - at.q0);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
    const int tiles = (past + min(at.q0 + FA_ROWS, seq) + BC - 1) / BC;
    for (int j = 0; j < tiles; ++j) {
        fa_copy<D>(sk, kh + (long long)j * BC * D, BC, total - j * BC);
        fa_commit();
        fa_wait_all();
        float s[BC / 8][4] = {};
        fa_rows_by_rows<D, BC>(s, sq + warp * 16 * LD, sk, lane);
        fa_mask<BC>(s, j * BC + 2 * t, past + row0);
        fa_online_softmax<BC>(s, m, l, alpha, scale_log2);
        __syncthreads();  // every warp is done with this key tile
    }
    const long long n = (long long)batch * heads * seq;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        const __nv_bfloat16 *po = o + ((long long)(at.b * seq + min(row, seq - 1)) * heads + at.h) * D + 2 * t;
        const __nv_bfloat16 *pd = dout + (po - o);
        float delta = 0.f;
#pragma unroll
        for (int c = 0; c < D / 8; ++c) {
            const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(po + c * 8));
            const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(pd + c * 8));
            delta += x.x * y.x + x.y * y.y;
        }
        delta = fa_group_sum(delta);
        const float sum = fa_group_sum(l[r]);
        if (row < seq && t == 0) {
            const long long i = (long long)(at.b * heads + at.h) * seq + row;
            stats[i] = m[r] + log2f(sum), stats[n + i] = delta;
        }
    }
}

// The probabilities and their scores' gradient of one tile, in place: p = exp2(s · scale_log2 − lse)
// where `visible`, else 0, and dS = p · (dp − Δ) (without the softmax scale, applied at the end).
template <int N>
__device__ __forceinline__ void fa_softmax_grad(float (&s)[N / 8][4], float (&dp)[N / 8][4], int n, int e,
                                                bool visible, float lse, float delta, float scale_log2) {
    const float p = visible ? exp2f(s[n][e] * scale_log2 - lse) : 0.f;
    s[n][e] = p, dp[n][e] = p * (dp[n][e] - delta);
}

// dq of 64 query rows of one head: shared holds the query and dO rows and one key and value tile.
template <int D, int BC>
__device__ void flash_attention_dq(const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k,
                                   const __nv_bfloat16 *__restrict__ v, const __nv_bfloat16 *__restrict__ dout,
                                   const float *__restrict__ stats, __nv_bfloat16 *__restrict__ dq, int batch,
                                   int heads, int kv_heads, int seq, int past, float scale_log2, float scale) {
    extern __shared__ __align__(16) __nv_bfloat16 fa_shared[];
    constexpr int LD = D + FA_PAD;
    __nv_bfloat16 *sq = fa_shared, *sdo = sq + FA_ROWS * LD, *sk = sdo + FA_ROWS * LD, *sv = sk + BC * LD;
    const FaRows at = fa_rows(batch, heads, kv_heads, seq);
    const int total = past + seq, warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int row0 = at.q0 + warp * 16 + g;
    const long long kv_at = (long long)(at.b * kv_heads + at.kvh) * total * D;
    fa_copy<D>(sq, q + ((long long)(at.b * heads + at.h) * seq + at.q0) * D, FA_ROWS, seq - at.q0);
    fa_copy<D>(sdo, dout + ((long long)at.b * seq + at.q0) * heads * D + at.h * D, FA_ROWS, seq - at.q0,
               (long long)heads * D);
    const long long n = (long long)batch * heads * seq, i0 = (long long)(at.b * heads + at.h) * seq;
    float lse[2], delta[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = min(row0 + 8 * r, seq - 1);  // rows past the end are computed, not written
        lse[r] = stats[i0 + row], delta[r] = stats[n + i0 + row];
    }
    float acc[D / 8][4] = {};
    const int tiles = (past + min(at.q0 + FA_ROWS, seq) + BC - 1) / BC;
    for (int j = 0; j < tiles; ++j) {
        fa_copy<D>(sk, k + kv_at + (long long)j * BC * D, BC, total - j * BC);
        fa_copy<D>(sv, v + kv_at + (long long)j * BC * D, BC, total - j * BC);
        fa_commit();
        fa_wait_all();
        float s[BC / 8][4] = {}, dp[BC / 8][4] = {};
        fa_rows_by_rows<D, BC>(s, sq + warp * 16 * LD, sk, lane);
        fa_rows_by_rows<D, BC>(dp, sdo + warp * 16 * LD, sv, lane);
#pragma unroll
        for (int c = 0; c < BC / 8; ++c)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool visible = j * BC + c * 8 + 2 * t + (e & 1) <= past + row0 + (e >> 1) * 8;
                fa_softmax_grad<BC>(s, dp, c, e, visible, lse[e >> 1], delta[e >> 1], scale_log2);
            }
        fa_acc_by_rows<D, BC>(acc, dp, sk, lane);
        __syncthreads();  // every warp is done with these tiles
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        if (row >= seq) continue;
        __nv_bfloat16 *dst = dq + (i0 + row) * D + 2 * t;
#pragma unroll
        for (int c = 0; c < D / 8; ++c)
            *reinterpret_cast<__nv_bfloat162 *>(dst + c * 8) =
                __floats2bfloat162_rn(acc[c][2 * r] * scale, acc[c][2 * r + 1] * scale);
    }
}

// dk and dv of 64 keys of one KV head (16 a warp) from `per_block` of its query heads, BR query rows a
// tile: shared holds the key and value rows, one query and one dO tile, and the tile's log-sum-exps
// and Δs. Output (2, batch, heads / per_block, past + seq, D): dk, then dv.
template <int D, int BR>
__device__ void flash_attention_dkv(const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k,
                                    const __nv_bfloat16 *__restrict__ v, const __nv_bfloat16 *__restrict__ dout,
                                    const float *__restrict__ stats, __nv_bfloat16 *__restrict__ dkv, int batch,
                                    int heads, int kv_heads, int seq, int past, int per_block, float scale_log2,
                                    float scale) {
    extern __shared__ __align__(16) __nv_bfloat16 fa_shared[];
    constexpr int LD = D + FA_PAD;
    __nv_bfloat16 *sk = fa_shared, *sv = sk + FA_ROWS * LD, *sq = sv + FA_ROWS * LD, *sdo = sq + BR * LD;
    float *slse = reinterpret_cast<float *>(sdo + BR * LD), *sdelta = slse + BR;
    const int slots = heads / per_block, total = past + seq;
    const int k0 = blockIdx.x / (batch * slots) * FA_ROWS;  // key tile 0, the one most queries see, first
    const int b = blockIdx.x % (batch * slots) / slots, slot = blockIdx.x % slots;
    const int kvh = slot * per_block / (heads / kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int key = k0 + warp * 16 + g;  // this thread's keys: key and key + 8
    const long long kv_at = (long long)(b * kv_heads + kvh) * total * D;
    fa_copy<D>(sk, k + kv_at + (long long)k0 * D, FA_ROWS, total - k0);
    fa_copy<D>(sv, v + kv_at + (long long)k0 * D, FA_ROWS, total - k0);
    const long long n = (long long)batch * heads * seq;
    float dk[D / 8][4] = {}, dv[D / 8][4] = {};
    const int first = max(k0 - past, 0) / BR * BR;  // the first query tile that sees a key of the block
    for (int h = slot * per_block; h < (slot + 1) * per_block; ++h) {
        const long long i0 = (long long)(b * heads + h) * seq;
        for (int qi = first; qi < seq; qi += BR) {
            fa_copy<D>(sq, q + (i0 + qi) * D, BR, seq - qi);
            fa_copy<D>(sdo, dout + ((long long)b * seq + qi) * heads * D + h * D, BR, seq - qi, (long long)heads * D);
            fa_commit();
            for (int r = threadIdx.x; r < BR; r += blockDim.x) {
                const int row = min(qi + r, seq - 1);  // rows past the end get probability 0
                slse[r] = stats[i0 + row], sdelta[r] = stats[n + i0 + row];
            }
            fa_wait_all();
            float st[BR / 8][4] = {}, dpt[BR / 8][4] = {};
            fa_rows_by_rows<D, BR>(st, sk + warp * 16 * LD, sq, lane);
            fa_rows_by_rows<D, BR>(dpt, sv + warp * 16 * LD, sdo, lane);
#pragma unroll
            for (int c = 0; c < BR / 8; ++c)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = c * 8 + 2 * t + (e & 1), query = qi + col;
                    const bool visible = query < seq && key + (e >> 1) * 8 <= past + query;
                    fa_softmax_grad<BR>(st, dpt, c, e, visible, slse[col], sdelta[col], scale_log2);
                }
            fa_acc_by_rows<D, BR>(dv, st, sdo, lane);
            fa_acc_by_rows<D, BR>(dk, dpt, sq, lane);
            __syncthreads();  // every warp is done with these tiles
        }
    }
    const long long part = (long long)batch * slots * total * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = key + 8 * r;
        if (row >= total) continue;
        __nv_bfloat16 *dst = dkv + ((long long)(b * slots + slot) * total + row) * D + 2 * t;
#pragma unroll
        for (int c = 0; c < D / 8; ++c) {
            *reinterpret_cast<__nv_bfloat162 *>(dst + c * 8) =
                __floats2bfloat162_rn(dk[c][2 * r] * scale, dk[c][2 * r + 1] * scale);
            *reinterpret_cast<__nv_bfloat162 *>(dst + part + c * 8) = __floats2bfloat162_rn(dv[c][2 * r], dv[c][2 * r + 1]);
        }
    }
}

#define FA_BACKWARD_KERNELS(D, BC, BR)                                                                                  \
    extern "C" __global__ void __launch_bounds__(128) flash_attention_stats_d##D##_bf16(                                \
        const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k, const __nv_bfloat16 *__restrict__ o,  \
        const __nv_bfloat16 *__restrict__ dout, float *__restrict__ stats, int batch, int heads, int kv_heads, int seq, \
        int past, float scale_log2) {                                                                                   \
        flash_attention_stats<D, BC>(q, k, o, dout, stats, batch, heads, kv_heads, seq, past, scale_log2);              \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) flash_attention_dq_d##D##_bf16(                                   \
        const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k, const __nv_bfloat16 *__restrict__ v,  \
        const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ stats, __nv_bfloat16 *__restrict__ dq,        \
        int batch, int heads, int kv_heads, int seq, int past, float scale_log2, float scale) {                         \
        flash_attention_dq<D, BC>(q, k, v, dout, stats, dq, batch, heads, kv_heads, seq, past, scale_log2, scale);      \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) flash_attention_dkv_d##D##_bf16(                                  \
        const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k, const __nv_bfloat16 *__restrict__ v,  \
        const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ stats, __nv_bfloat16 *__restrict__ dkv,       \
        int batch, int heads, int kv_heads, int seq, int past, int per_block, float scale_log2, float scale) {           \
        flash_attention_dkv<D, BR>(q, k, v, dout, stats, dkv, batch, heads, kv_heads, seq, past, per_block, scale_log2, \
                                   scale);                                                                              \
    }
// Query tiles of 32 in dk/dv at heads of 128: its two accumulators take 128 registers a thread there.
FA_BACKWARD_KERNELS(64, 64, 64)
FA_BACKWARD_KERNELS(128, 64, 32)

// Adds the partial dk and dv of a KV head's query-head slots: x (2 · batch · kv_heads, parts, n) into
// out (2 · batch · kv_heads, n), in f32.
extern "C" __global__ void flash_attention_group_sum_bf16(const __nv_bfloat16 *__restrict__ x,
                                                          __nv_bfloat16 *__restrict__ out, long long len, int parts,
                                                          long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len; i += (long long)gridDim.x * blockDim.x) {
        const __nv_bfloat16 *from = x + i / n * parts * n + i % n;
        float sum = 0.f;
        for (int p = 0; p < parts; ++p) sum += __bfloat162float(from[p * n]);
        out[i] = __float2bfloat16(sum);
    }
}
