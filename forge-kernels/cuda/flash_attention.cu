// Causal attention of grouped query heads in one pass (FlashAttention 2's forward): each block takes 64
// query rows of one head, four warps of 16, and walks the keys they may see in tiles, keeping the
// scores, the running softmax and the output in registers on mma.sync (m16n8k16, bf16 in, f32 out), so
// no (seq × seq) score or probability matrix is ever written. The tiles' memory layouts are the ones
// the PTX ISA documents for that instruction, which is what the WMMA attempt in docs/BENCHMARKS.md
// lacked (its fragments went through shared memory on every tile and ran eval at half the speed).
//
// Included by forge_kernels.cu. Inputs q (batch, heads, seq, D), k and v (batch, kv_heads, kv_rows, D)
// with kv_rows ≥ past + seq (a fixed-size cache has more), bf16, contiguous and 16-byte aligned; out
// (batch, seq, heads · D), the layout o_proj reads. Query position i sees keys 0 ..= past + i. The softmax is f32 (exp2 of scaled scores); the
// probabilities enter the second product as bf16, as in FlashAttention and the peer's SDPA kernels.

#define FA_ROWS 64  // query rows a block of one row tile a warp
#ifndef FA_MT
#define FA_MT 2
#endif
// bf16 of padding after each shared row: rows then start 16 bytes apart modulo 128, so the eight rows
// one fragment load or ldmatrix phase touches fall in different banks.
#define FA_PAD 8

__device__ __forceinline__ void fa_mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 as a bf16 pair, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ unsigned fa_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}

// Copies `rows` rows of D bf16 (`ld` apart in global memory) into shared rows D + FA_PAD apart, 16 bytes
// a cp.async; rows from `valid` on are filled with zeros (keys past the end must not bring NaNs into
// the second product, where their probability 0 multiplies them).
template <int D>
__device__ void fa_copy(__nv_bfloat16 *dst, const __nv_bfloat16 *src, int rows, int valid, long long ld = D) {
    constexpr int CHUNKS = D / 8;
    for (int e = threadIdx.x; e < rows * CHUNKS; e += blockDim.x) {
        const int r = e / CHUNKS, c = e % CHUNKS * 8;
        const unsigned to = (unsigned)__cvta_generic_to_shared(dst + r * (D + FA_PAD) + c);
        const bool in = r < valid;
        const __nv_bfloat16 *from = in ? src + r * ld + c : src;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(to), "l"(from), "r"(in ? 16 : 0));
    }
}

__device__ __forceinline__ void fa_commit() { asm volatile("cp.async.commit_group;"); }

// Waits for all but the newest cp.async group, then for the whole block.
__device__ __forceinline__ void fa_wait_older() {
    asm volatile("cp.async.wait_group 1;");
    __syncthreads();
}

// Waits for every cp.async group, then for the whole block.
__device__ __forceinline__ void fa_wait_all() {
    asm volatile("cp.async.wait_group 0;");
    __syncthreads();
}

// Four 8 × 8 bf16 matrices from shared memory, lanes 8i..8i+7 giving matrix i's row addresses; each
// thread gets row lane / 4, columns 2 · (lane % 4) and the next of each: the m16n8k16 fragments'
// layout, one instruction for what takes eight 32-bit loads.
__device__ __forceinline__ void fa_ldsm(unsigned (&r)[4], const __nv_bfloat16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((unsigned)__cvta_generic_to_shared(p)));
}

// The lane's address in a 16-row A tile at `a` (shared rows D + FA_PAD apart) for fa_ldsm: matrices 0
// to 3 are rows 0-7 and 8-15 of columns 0-7, then of columns 8-15 (a0..a3 of the fragment).
template <int D>
__device__ __forceinline__ const __nv_bfloat16 *fa_a_lane(const __nv_bfloat16 *a, int lane) {
    return a + (lane % 8 + (lane / 8 & 1) * 8) * (D + FA_PAD) + lane / 16 * 8;
}

// The lane's address in a B tile of rows at `b` for fa_ldsm: matrices 0 to 3 are columns 0-7 and 8-15
// of rows 0-7, then of rows 8-15 (b0, b1 of two 8-row n tiles).
template <int D>
__device__ __forceinline__ const __nv_bfloat16 *fa_b_lane(const __nv_bfloat16 *b, int lane) {
    return b + (lane % 8 + lane / 16 * 8) * (D + FA_PAD) + (lane / 8 & 1) * 8;
}

// acc (MT tiles of 16 × N) += A · Bᵀ over columns 16·kk .. +16: `af` the MT A fragments, `b` the
// lane's fa_b_lane. Each B fragment loaded feeds MT products: with two row tiles a warp, shared memory
// is read half as often a product.
template <int D, int N, int MT>
__device__ __forceinline__ void fa_times_rows(float (&acc)[MT][N / 8][4], const unsigned (&af)[MT][4],
                                              const __nv_bfloat16 *b, int kk) {
#pragma unroll
    for (int n = 0; n < N / 8; n += 2) {
        unsigned bf[4];
        fa_ldsm(bf, b + n * 8 * (D + FA_PAD) + kk * 16);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            fa_mma(acc[mt][n], af[mt], bf[0], bf[1]);
            fa_mma(acc[mt][n + 1], af[mt], bf[2], bf[3]);
        }
    }
}

// acc (MT tiles of 16 × N) += A · Bᵀ over D: A the warp's 16 · MT shared rows at `a`, B N shared rows
// at `b` (q·kᵀ; the backward's dO·vᵀ, k·qᵀ and v·dOᵀ).
template <int D, int N, int MT>
__device__ __forceinline__ void fa_rows_by_rows(float (&acc)[MT][N / 8][4], const __nv_bfloat16 *a,
                                                const __nv_bfloat16 *b, int lane) {
    const __nv_bfloat16 *al = fa_a_lane<D>(a, lane), *bl = fa_b_lane<D>(b, lane);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        unsigned af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) fa_ldsm(af[mt], al + mt * 16 * (D + FA_PAD) + kk * 16);
        fa_times_rows<D, N, MT>(acc, af, bl, kk);
    }
}

// The same for one row tile, the backward's.
template <int D, int N>
__device__ __forceinline__ void fa_rows_by_rows(float (&acc)[N / 8][4], const __nv_bfloat16 *a, const __nv_bfloat16 *b,
                                                int lane) {
    fa_rows_by_rows<D, N, 1>(reinterpret_cast<float(&)[1][N / 8][4]>(acc), a, b, lane);
}

// out (MT tiles of 16 × D) += S · B: S the warp's MT tiles of 16 × K f32 accumulators (probabilities or
// their gradients), rounded to bf16, B K shared rows of D. An accumulator tile pair of 16 × 8 is one
// 16 × 16 A fragment as it lies in the registers (the FlashAttention 2 register reuse); B's fragments
// come from ldmatrix .trans: lanes 8i..8i+7 address matrix i's rows, matrices 0 and 1 the two row
// halves of columns 16·dn .. +8, 2 and 3 those of the next 8.
template <int D, int K, int MT>
__device__ __forceinline__ void fa_acc_by_rows(float (&out)[MT][D / 8][4], const float (&s)[MT][K / 8][4],
                                               const __nv_bfloat16 *sb, int lane) {
    constexpr int LD = D + FA_PAD;
    const int mi = lane / 8;
#pragma unroll
    for (int kc = 0; kc < K / 16; ++kc) {
        unsigned a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const float(&p)[K / 8][4] = s[mt];
            a[mt][0] = fa_pack(p[2 * kc][0], p[2 * kc][1]), a[mt][1] = fa_pack(p[2 * kc][2], p[2 * kc][3]);
            a[mt][2] = fa_pack(p[2 * kc + 1][0], p[2 * kc + 1][1]), a[mt][3] = fa_pack(p[2 * kc + 1][2], p[2 * kc + 1][3]);
        }
        const __nv_bfloat16 *row = sb + (kc * 16 + lane % 8 + (mi & 1) * 8) * LD + (mi >> 1) * 8;
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
            unsigned b0, b1, b2, b3;
            const unsigned at = (unsigned)__cvta_generic_to_shared(row + dn * 16);
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                         : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3)
                         : "r"(at));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                fa_mma(out[mt][2 * dn], a[mt], b0, b1);
                fa_mma(out[mt][2 * dn + 1], a[mt], b2, b3);
            }
        }
    }
}

// The same for one row tile, the backward's.
template <int D, int K>
__device__ __forceinline__ void fa_acc_by_rows(float (&out)[D / 8][4], const float (&s)[K / 8][4],
                                               const __nv_bfloat16 *sb, int lane) {
    fa_acc_by_rows<D, K, 1>(reinterpret_cast<float(&)[1][D / 8][4]>(out),
                            reinterpret_cast<const float(&)[1][K / 8][4]>(s), sb, lane);
}

// Sets the scores of keys a row may not see to -inf: `key` is the key of the thread's first column
// (tile start + 2t), `last` the last key its first row (g) sees; the second row (g + 8) sees 8 more.
template <int BC>
__device__ __forceinline__ void fa_mask(float (&s)[BC / 8][4], int key, int last) {
#pragma unroll
    for (int n = 0; n < BC / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (key + n * 8 + (e & 1) > last + (e >> 1) * 8) s[n][e] = -INFINITY;
}

// The online softmax over one key tile: each row's max so far m (the four threads of a group share a
// row), its sum l rescaled to it by alpha (which the caller applies to what else it sums), and the
// scores turned into exp2(s · scale_log2 − m). Key 0 is in every row's first tile, so the max is
// finite from the first tile on and no -inf − -inf arises.
template <int BC>
__device__ __forceinline__ void fa_online_softmax(float (&s)[BC / 8][4], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                  float scale_log2) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = m[r];
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]) * scale_log2);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        alpha[r] = exp2f(m[r] - mx);
        m[r] = mx, l[r] *= alpha[r];
#pragma unroll
        for (int n = 0; n < BC / 8; ++n)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const float p = exp2f(s[n][2 * r + c] * scale_log2 - mx);
                s[n][2 * r + c] = p, l[r] += p;
            }
    }
}

// Sums a row's value over the four threads of its group.
__device__ __forceinline__ float fa_group_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The query rows of a block of ROWS: the first, the batch item, the head and its KV head. The blocks
// with the most keys start first, so the short ones fill the tail.
struct FaRows {
    int q0, b, h, kvh;
};
template <int ROWS = FA_ROWS>
__device__ __forceinline__ FaRows fa_rows(int batch, int heads, int kv_heads, int seq) {
    const int per_block_row = batch * heads, q_blocks = (seq + ROWS - 1) / ROWS;
    const int h = blockIdx.x % heads;
    return {(q_blocks - 1 - (int)(blockIdx.x / per_block_row)) * ROWS, (int)(blockIdx.x % per_block_row / heads), h,
            h / (heads / kv_heads)};
}

// One block's work: 64 · MT query rows, MT tiles of 16 a warp. BC keys a tile; QREG keeps the warp's
// query fragments in registers for the whole walk (one row tile, D ≤ 128), otherwise they are read
// from shared memory for each tile. Shared memory: the query rows, one key tile and one value tile.
// The value tile of step j loads while its scores are computed, the key tile of step j + 1 while its
// values are summed.
template <int D, int BC, bool QREG, int MT>
__device__ void flash_attention(const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k,
                                const __nv_bfloat16 *__restrict__ v, __nv_bfloat16 *__restrict__ out, int batch,
                                int heads, int kv_heads, int seq, int past, int kv_rows, float scale_log2) {
    static_assert(!QREG || MT == 1, "query fragments stay in registers for one row tile only");
    extern __shared__ __align__(16) __nv_bfloat16 fa_shared[];
    constexpr int LD = D + FA_PAD, ROWS = FA_ROWS * MT;
    __nv_bfloat16 *sq = fa_shared, *sk = sq + ROWS * LD, *sv = sk + BC * LD;
    const FaRows at = fa_rows<ROWS>(batch, heads, kv_heads, seq);
    const int q0 = at.q0, b = at.b, h = at.h, kvh = at.kvh;
    const int total = past + seq, warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int first = q0 + warp * 16 * MT;  // the warp's first row; the thread's: first + 16 mt + g (+ 8)
    const __nv_bfloat16 *kh = k + (long long)(b * kv_heads + kvh) * kv_rows * D;
    const __nv_bfloat16 *vh = v + (long long)(b * kv_heads + kvh) * kv_rows * D;
    const int tiles = (past + min(q0 + ROWS, seq) + BC - 1) / BC;

    fa_copy<D>(sq, q + ((long long)(b * heads + h) * seq + q0) * D, ROWS, seq - q0);
    fa_copy<D>(sk, kh, BC, total);
    fa_commit();
    float o[MT][D / 8][4] = {}, m[MT][2], l[MT][2] = {};
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY;
    unsigned qf[QREG ? D / 16 : 1][4];
    const __nv_bfloat16 *qlane = fa_a_lane<D>(sq + warp * 16 * MT * LD, lane), *klane = fa_b_lane<D>(sk, lane);
    for (int j = 0; j < tiles; ++j) {
        fa_copy<D>(sv, vh + (long long)j * BC * D, BC, total - j * BC);
        fa_commit();
        fa_wait_older();  // the query and key tiles
        float s[MT][BC / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if (QREG && j > 0) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) a[mt][i] = qf[QREG ? kk : 0][i];
                } else {
                    fa_ldsm(a[mt], qlane + mt * 16 * LD + kk * 16);
                    if (QREG)
#pragma unroll
                        for (int i = 0; i < 4; ++i) qf[QREG ? kk : 0][i] = a[mt][i];
                }
            }
            fa_times_rows<D, BC, MT>(s, a, klane, kk);
        }
        __syncthreads();  // every warp is done with this key tile
        if (j + 1 < tiles) fa_copy<D>(sk, kh + (long long)(j + 1) * BC * D, BC, total - (j + 1) * BC);
        fa_commit();
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if (j * BC + BC - 1 > past + first + 16 * mt)  // the tile reaches past some row of this tile
                fa_mask<BC>(s[mt], j * BC + 2 * t, past + first + 16 * mt + g);
            float alpha[2];
            fa_online_softmax<BC>(s[mt], m[mt], l[mt], alpha, scale_log2);
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) o[mt][n][e] *= alpha[e >> 1];
        }
        fa_wait_older();  // the value tile
        fa_acc_by_rows<D, BC, MT>(o, s, sv, lane);
        __syncthreads();  // every warp is done with this value tile
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float sum = fa_group_sum(l[mt][r]);
            const int row = first + 16 * mt + g + 8 * r;
            if (row >= seq) continue;
            const float inv = 1.f / sum;
            __nv_bfloat16 *dst = out + ((long long)(b * seq + row) * heads + h) * D + 2 * t;
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
                *reinterpret_cast<__nv_bfloat162 *>(dst + n * 8) =
                    __floats2bfloat162_rn(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv);
        }
}

// Each head size twice: with the cached positions given (past + seq keys a head), and reading them
// from device memory (`past_at`, keys `kv_rows` apart: a fixed-size cache), which a captured decoding
// step replays unchanged while the position moves (one row tile a warp there: a decoded token is one
// row).
#define FA_KERNEL(D, BC, QREG, MT)                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) flash_attention_d##D##_bf16(                                     \
        const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k, const __nv_bfloat16 *__restrict__ v, \
        __nv_bfloat16 *__restrict__ out, int batch, int heads, int kv_heads, int seq, int past, float scale_log2) {     \
        flash_attention<D, BC, QREG && MT == 1, MT>(q, k, v, out, batch, heads, kv_heads, seq, past, past + seq,       \
                                                    scale_log2);                                                       \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(128) flash_attention_at_d##D##_bf16(                                  \
        const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k, const __nv_bfloat16 *__restrict__ v, \
        const unsigned *__restrict__ past_at, __nv_bfloat16 *__restrict__ out, int batch, int heads, int kv_heads,     \
        int seq, int kv_rows, float scale_log2) {                                                                      \
        flash_attention<D, BC, QREG, 1>(q, k, v, out, batch, heads, kv_heads, seq, (int)*past_at, kv_rows, scale_log2); \
    }
FA_KERNEL(64, 64, true, FA_MT)
FA_KERNEL(128, 64, true, FA_MT)
FA_KERNEL(256, 32, false, 1)

// The first index of each row's largest value (bf16 logits, `vocab` a row), one block of 1024 threads a
// row: what the host's argmax over the same logits picks, so greedy decoding on the device (inside a
// captured step) and on the host agree token for token, ties included.
extern "C" __global__ void argmax_rows_bf16(const __nv_bfloat16 *__restrict__ x, unsigned *__restrict__ out, int vocab) {
    __shared__ float best[32];
    __shared__ int where[32];
    const __nv_bfloat16 *row = x + (long long)blockIdx.x * vocab;
    float m = -INFINITY;
    int at = vocab;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float v = __bfloat162float(row[j]);
        if (v > m) m = v, at = j;  // a thread's indices rise, so the first of its ties stays
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float om = __shfl_xor_sync(0xffffffffu, m, o);
        const int oa = __shfl_xor_sync(0xffffffffu, at, o);
        if (om > m || (om == m && oa < at)) m = om, at = oa;
    }
    if (threadIdx.x % 32 == 0) best[threadIdx.x / 32] = m, where[threadIdx.x / 32] = at;
    __syncthreads();
    if (threadIdx.x < 32) {
        m = threadIdx.x < blockDim.x / 32 ? best[threadIdx.x] : -INFINITY;
        at = threadIdx.x < blockDim.x / 32 ? where[threadIdx.x] : vocab;
        for (int o = 16; o > 0; o >>= 1) {
            const float om = __shfl_xor_sync(0xffffffffu, m, o);
            const int oa = __shfl_xor_sync(0xffffffffu, at, o);
            if (om > m || (om == m && oa < at)) m = om, at = oa;
        }
        // A row of NaNs alone leaves `vocab`; index 0 then, as the host's fold would give.
        if (threadIdx.x == 0) out[blockIdx.x] = at < vocab ? at : 0;
    }
}
