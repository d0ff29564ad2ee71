// The gated delta rule in its chunked form, forward and backward, as kernels between cuBLAS products
// (src/gated_delta_rule/chunked_device.rs runs them; it has the formulas). Included by
// forge_kernels.cu. Everything is f32. A "chunk row" bn = item · chunks + n is chunk n of item
// (sequence b, value head h) = b · heads + h; chunks are GDN_C tokens, the last one padded with
// q = k = v = g = β = 0, which read and write nothing.
//
// The products (each O(C·d²) or O(C²·d) per chunk) are cuBLAS's, batched over every chunk at once;
// these kernels do what lies between: gathering a chunk's inputs with their decays, the UT solve,
// the masks, the per-token sums of the backward, and the one sequential part, the state carried from
// chunk to chunk (and its adjoint, carried back).
#define GDN_C 64

// Where token t of chunk row bn sits in the layer's token rows, and whether it is a real token.
struct GdnToken {
    long long row;
    int h, kh;
    bool real;
};
__device__ GdnToken gdn_token(long long bn, int t, int chunks, int seq, int heads, int key_heads) {
    const long long item = bn / chunks;
    const int n = bn % chunks, s = n * GDN_C + t, h = item % heads;
    return {(item / heads) * seq + s, h, h / (heads / key_heads), s < seq};
}

// The prepared inputs' parts, as gated_delta_prepare_bf16 writes them over `rows` tokens: q and k
// (rows, key_heads · dk), then g and β (rows, heads).
struct GdnPrepared {
    const float *q, *k, *g, *beta;
};
__device__ GdnPrepared gdn_prepared(const float *p, long long rows, long long kd, int heads) {
    return {p, p + rows * kd, p + 2 * rows * kd, p + 2 * rows * kd + rows * heads};
}

// A chunk's cumulative decays G (GDN_C) and its β into shared memory; returns nothing until both are
// there for the whole block.
__device__ void gdn_load_decays(const float *gp, const float *bp, long long bn, int chunks, int seq, int heads,
                                int key_heads, float *g_cum, float *beta) {
    if (threadIdx.x < GDN_C) {
        const GdnToken tok = gdn_token(bn, threadIdx.x, chunks, seq, heads, key_heads);
        g_cum[threadIdx.x] = tok.real ? gp[tok.row * heads + tok.h] : 0.f;
        beta[threadIdx.x] = tok.real ? bp[tok.row * heads + tok.h] : 0.f;
    }
    __syncthreads();
    if (threadIdx.x == 0)
        for (int t = 1; t < GDN_C; ++t) g_cum[t] += g_cum[t - 1];
    __syncthreads();
}

// `v · s`, each of the four.
__device__ float4 gdn_scale4(float4 v, float s) { return make_float4(v.x * s, v.y * s, v.z * s, v.w * s); }

// Gathers each chunk's inputs from the prepared ones (as gated_delta_prepare_bf16 writes them) and the
// values (in `conv`), in the forms the products take. `out`, each part over all B chunk rows:
// KQ (B, 2C, dk) = [β⊙K; Q], K (B, C, dk), X (B, C, dv + dk) = [β⊙V | βγ⊙K], LK (B, C, dk) = λ⊙K,
// QG (B, C, dk) = γ⊙Q, G (B, C), with G the cumulative decay, γ = e^G and λ = e^(G_last − G).
// One block per chunk row.
extern "C" __global__ void gdn_chunk_load(const float *__restrict__ prepared, const __nv_bfloat16 *__restrict__ conv,
                                          float *__restrict__ out, int batch, int seq, int key_heads, int heads, int dk,
                                          int dv) {
    __shared__ float g_cum[GDN_C], beta[GDN_C];
    const int chunks = (seq + GDN_C - 1) / GDN_C;
    const long long bn = blockIdx.x, B = (long long)batch * heads * chunks, rows = (long long)batch * seq;
    const long long kd = (long long)key_heads * dk, width = 2 * kd + (long long)heads * dv;
    const GdnPrepared in = gdn_prepared(prepared, rows, kd, heads);
    const float *qp = in.q, *kp = in.k;
    gdn_load_decays(in.g, in.beta, bn, chunks, seq, heads, key_heads, g_cum, beta);
    float *kq = out + bn * 2 * GDN_C * dk, *k_out = out + B * 2 * GDN_C * dk + bn * GDN_C * dk;
    float *x = out + B * 3 * GDN_C * dk + bn * GDN_C * (dv + dk);
    float *lk = out + B * GDN_C * (4 * dk + dv) + bn * GDN_C * dk;
    float *qg = out + B * GDN_C * (5 * dk + dv) + bn * GDN_C * dk;
    float *g_out = out + B * GDN_C * (6 * dk + dv) + bn * GDN_C;
    const float last = g_cum[GDN_C - 1];
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    // Four values a thread (dk and dv are multiples of four, every part 16-byte aligned): one token
    // lookup and one decay each per four values, and 16-byte stores.
    for (int e = 4 * threadIdx.x; e < GDN_C * dk; e += 4 * blockDim.x) {
        const int t = e / dk, i = e % dk;
        const GdnToken tok = gdn_token(bn, t, chunks, seq, heads, key_heads);
        const long long at = (tok.row * key_heads + tok.kh) * dk + i;
        const float4 q = tok.real ? *(const float4 *)(qp + at) : zero, k = tok.real ? *(const float4 *)(kp + at) : zero;
        const float gamma = __expf(g_cum[t]);
        *(float4 *)(kq + e) = gdn_scale4(k, beta[t]), *(float4 *)(kq + GDN_C * dk + e) = q, *(float4 *)(k_out + e) = k;
        *(float4 *)(x + t * (dv + dk) + dv + i) = gdn_scale4(k, beta[t] * gamma);
        *(float4 *)(lk + e) = gdn_scale4(k, __expf(last - g_cum[t])), *(float4 *)(qg + e) = gdn_scale4(q, gamma);
    }
    for (int e = 4 * threadIdx.x; e < GDN_C * dv; e += 4 * blockDim.x) {
        const int t = e / dv, c = e % dv;
        const GdnToken tok = gdn_token(bn, t, chunks, seq, heads, key_heads);
        float4 v = zero;
        if (tok.real) {
            const auto *pair = (const __nv_bfloat162 *)(conv + tok.row * width + 2 * kd + (long long)tok.h * dv + c);
            const float2 lo = __bfloat1622float2(pair[0]), hi = __bfloat1622float2(pair[1]);
            v = make_float4(lo.x, lo.y, hi.x, hi.y);
        }
        *(float4 *)(x + t * (dv + dk) + c) = gdn_scale4(v, beta[t]);
    }
    if (threadIdx.x < GDN_C) g_out[threadIdx.x] = g_cum[threadIdx.x];
}

// Chunk row bn's cumulative decays G (as gdn_chunk_load wrote them) into shared memory.
__device__ void gdn_stage_decays(const float *g, long long bn, float *g_cum) {
    if (threadIdx.x < GDN_C) g_cum[threadIdx.x] = g[bn * GDN_C + threadIdx.x];
    __syncthreads();
}

// D_ij = e^(G_i − G_j) on the lower triangle with the diagonal (≤ 1: the decays are ≤ 0), 0 above.
__device__ float gdn_decay(const float *g_cum, int i, int j) { return j <= i ? __expf(g_cum[i] - g_cum[j]) : 0.f; }

// From NP (B, 2C, C) = [β⊙K·Kᵀ; Q·Kᵀ] and G (B, C): T = (I + N)⁻¹ with N = β⊙K·Kᵀ ⊙ D on the
// strictly lower triangle (D_ij = e^(G_i − G_j)), by forward substitution, then P̃ = Q·Kᵀ ⊙ D on the
// lower triangle with the diagonal. `out`: T (B, C, C), then P̃ (B, C, C). One block per chunk row.
extern "C" __global__ void gdn_chunk_solve(const float *__restrict__ np, const float *__restrict__ g,
                                           float *__restrict__ out, int B) {
    __shared__ float n_s[GDN_C][GDN_C + 1], t_s[GDN_C][GDN_C + 1], g_cum[GDN_C];
    const long long bn = blockIdx.x, cc = GDN_C * GDN_C;
    gdn_stage_decays(g, bn, g_cum);
    for (int e = threadIdx.x; e < GDN_C * GDN_C; e += blockDim.x) {
        const int i = e / GDN_C, j = e % GDN_C;
        const float d = gdn_decay(g_cum, i, j);
        n_s[i][j] = j < i ? np[bn * 2 * cc + e] * d : 0.f;
        out[(long long)B * cc + bn * cc + e] = np[bn * 2 * cc + cc + e] * d;
    }
    __syncthreads();
    // Row i of T: e_i − Σ_{j<i} N_ij T_j; a thread per column, the rows in order.
    if (threadIdx.x < GDN_C) {
        const int c = threadIdx.x;
        for (int i = 0; i < GDN_C; ++i) {
            float s = i == c ? 1.f : 0.f;
            for (int j = c; j < i; ++j) s -= n_s[i][j] * t_s[j][c];
            t_s[i][c] = s;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < GDN_C * GDN_C; e += blockDim.x) out[bn * cc + e] = t_s[e / GDN_C][e % GDN_C];
}

// The two walks (the state forward, its adjoint back) have one shape. A block of 256 threads (8 warps)
// holds GDN_COLS columns of an item's state s (dk × dv, dk ≤ 128), two blocks a multiprocessor; a
// chunk does
//   o[t] = base[t] + sign1 · Σ_i m1[t][i]·s[i]   (t < C; written to `out`)
//   s[i] = decay · s[i] + extra[i] + sign2 · Σ_t m2[t][i]·o[t]   (i < dk; `extra` may be null)
// with m1 and m2 (C rows of dk) in global memory. Both sums are products of a chunk's matrix with the
// state's columns (C × dk × GDN_COLS multiply-adds each), done on tensor cores in TF32 (mma.sync
// m16n8k8, f32 accumulators; the state is kept in f32 between chunks). Only s is sequential: each
// chunk's m1 is copied into shared memory (cp.async) while the chunk before does its second product,
// its m2 while the chunk's first product runs, and its base and extra are loaded into registers a
// chunk ahead.
// Measured at qwen3.5-0.8b (16 chunks a walk, H200), on CUDA cores in f32: m1 and m2 read from global
// memory term by term, 3 ms a walk; through a small tile, 0.9 ms; prefetched into registers, 607 µs;
// read four values a load, 304 µs, about a third of the FMA rate with one block a multiprocessor. On
// tensor cores, 64 columns a block (one block a multiprocessor) and base and extra read when used:
// 210 µs forward, 321 backward; 32 columns a block and both loaded a chunk ahead: 139 and 197 µs.
// Shared memory, floats, each stride chosen so that a warp's fragment loads hit 32 banks:
//   s (128 × GDN_LDS), o (C × GDN_LDS), m1 (C × GDN_LD1), m2 (C × GDN_LD2): 97 KiB.
#define GDN_COLS 32
#define GDN_LDS (GDN_COLS + 8)  // B fragments read (k = tig, n = g): 8·tig + g distinct mod 32
#define GDN_LD1 (128 + 4)       // A fragments read (m = g, k = tig): 4·g + tig
#define GDN_LD2 (128 + 8)       // Aᵀ fragments read m2[k = tig][m = g]: 8·tig + g

struct GdnWalk {
    const float *base, *extra, *m1, *m2;
    int ldb, ld1, ld2;
    float sign1, sign2, decay;
    float *out;
};

__device__ __forceinline__ unsigned gdn_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// d += a·b for one 16 × 8 tile over 8 of the sum (fragments as the PTX ISA lays them out for m16n8k8).
__device__ __forceinline__ void gdn_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Copies a chunk's matrix (C rows of dk from `src`, rows `ld` apart) into shared memory rows `lds`
// apart, 16 bytes a copy, as one cp.async group (committed even when empty: the walk counts groups).
__device__ void gdn_copy_async(float *dst, int lds, const float *src, int ld, int dk, bool any) {
    if (any)
        for (int e = threadIdx.x; e < GDN_C * dk / 4; e += blockDim.x) {
            const int t = 4 * e / dk, i = 4 * e % dk;
            const unsigned to = (unsigned)__cvta_generic_to_shared(dst + t * lds + i);
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to), "l"(src + (long long)t * ld + i));
        }
    asm volatile("cp.async.commit_group;");
}

// Waits for all but the newest cp.async group, then for the whole block.
__device__ __forceinline__ void gdn_wait_older() {
    asm volatile("cp.async.wait_group 1;");
    __syncthreads();
}

// A walk's thread: its block's item and first state column, its warp's place in the fragments.
struct GdnLane {
    int item, col0, warp, g, tig;
};
__device__ GdnLane gdn_lane(int dv) {
    const int tiles = (dv + GDN_COLS - 1) / GDN_COLS, lane = threadIdx.x % 32;
    return {(int)(blockIdx.x / tiles), (int)(blockIdx.x % tiles) * GDN_COLS, (int)threadIdx.x / 32, lane / 4, lane % 4};
}

// What a chunk's two sums add to, at this thread's places in the fragments: base (rows t of o, as
// gdn_walk_first holds them) and extra (rows of s, as gdn_state_fragment visits them), in pairs of
// columns. Loaded a chunk ahead.
struct GdnOperands {
    float2 base[GDN_COLS / 16][2], extra[GDN_COLS / 8][2];
};

// The state's rows this warp keeps (16 · warp + g and + 8), its accumulator tiles' columns 8 · j + 2 · tig.
// `visit(j, e, row, c)` for each of its 32 values, e indexing the fragment.
template <typename Visit>
__device__ __forceinline__ void gdn_state_fragment(const GdnLane &l, Visit visit) {
#pragma unroll
    for (int j = 0; j < GDN_COLS / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) visit(j, e, 16 * l.warp + l.g + 8 * (e / 2), 8 * j + 2 * l.tig + e % 2);
}

// The first sum's tile of this warp: rows r0 .. r0 + 16 of o, columns c0 .. c0 + GDN_COLS / 2.
__device__ __forceinline__ int gdn_first_row(const GdnLane &l) { return 16 * (l.warp % 4); }
__device__ __forceinline__ int gdn_first_col(const GdnLane &l) { return GDN_COLS / 2 * (l.warp / 4); }

// The chunk's base and extra (null: zeros) at this thread's places; columns past dv read as zeros
// (dv is a multiple of 4, so a pair is real or not as a whole).
__device__ void gdn_operands(GdnOperands &p, const GdnWalk &w, const GdnLane &l, int dk, int dv) {
    const int r0 = gdn_first_row(l), c0 = gdn_first_col(l);
#pragma unroll
    for (int j = 0; j < GDN_COLS / 16; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int t = r0 + l.g + 8 * h, col = l.col0 + c0 + 8 * j + 2 * l.tig;
            p.base[j][h] = col < dv ? *reinterpret_cast<const float2 *>(w.base + (long long)t * w.ldb + col) : float2{0.f, 0.f};
        }
#pragma unroll
    for (int j = 0; j < GDN_COLS / 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = 16 * l.warp + l.g + 8 * h, col = l.col0 + 8 * j + 2 * l.tig;
            p.extra[j][h] = w.extra && row < dk && col < dv ? *reinterpret_cast<const float2 *>(w.extra + (long long)row * dv + col)
                                                             : float2{0.f, 0.f};
        }
}

// o = base + sign1 · m1·s for the chunk, each warp a 16 × GDN_COLS / 2 tile of o; written to w.out
// (real columns) and, times sign2 and rounded to TF32, to `os` for the second product.
__device__ void gdn_walk_first(const float *ss, float *os, const float *m1s, const GdnWalk &w, const GdnOperands &p,
                               const GdnLane &l, int dk, int dv) {
    constexpr int N = GDN_COLS / 16;
    const int r0 = gdn_first_row(l), c0 = gdn_first_col(l);
    float acc[N][4] = {};
    for (int k = 0; k < dk; k += 8) {
        const float *a = m1s + (r0 + l.g) * GDN_LD1 + k + l.tig;
        const unsigned af[4] = {gdn_tf32(a[0]), gdn_tf32(a[8 * GDN_LD1]), gdn_tf32(a[4]), gdn_tf32(a[8 * GDN_LD1 + 4])};
#pragma unroll
        for (int j = 0; j < N; ++j) {
            const float *b = ss + (k + l.tig) * GDN_LDS + c0 + 8 * j + l.g;
            const unsigned bf[2] = {gdn_tf32(b[0]), gdn_tf32(b[4 * GDN_LDS])};
            gdn_mma(acc[j], af, bf);
        }
    }
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int t = r0 + l.g + 8 * h, c = c0 + 8 * j + 2 * l.tig, col = l.col0 + c;
            float2 o = {0.f, 0.f};
            if (col < dv) {
                o = {p.base[j][h].x + w.sign1 * acc[j][2 * h], p.base[j][h].y + w.sign1 * acc[j][2 * h + 1]};
                *reinterpret_cast<float2 *>(w.out + (long long)t * dv + col) = o;
            }
            os[t * GDN_LDS + c] = __uint_as_float(gdn_tf32(w.sign2 * o.x));
            os[t * GDN_LDS + c + 1] = __uint_as_float(gdn_tf32(w.sign2 * o.y));
        }
}

// s = decay · s + extra + m2ᵀ·os in the warp's accumulators (its 16 rows of s, all the block's columns).
__device__ void gdn_walk_second(float (&s)[GDN_COLS / 8][4], const float *os, const float *m2s, const GdnWalk &w,
                                const GdnOperands &p, const GdnLane &l, int dk) {
    gdn_state_fragment(l, [&](int j, int e, int, int) {
        const float2 extra = p.extra[j][e / 2];
        s[j][e] = w.decay * s[j][e] + (e % 2 ? extra.y : extra.x);
    });
    if (16 * l.warp >= dk) return;
    for (int t = 0; t < GDN_C; t += 8) {
        const float *a = m2s + (t + l.tig) * GDN_LD2 + 16 * l.warp + l.g;
        const unsigned af[4] = {gdn_tf32(a[0]), gdn_tf32(a[8]), gdn_tf32(a[4 * GDN_LD2]), gdn_tf32(a[4 * GDN_LD2 + 8])};
#pragma unroll
        for (int j = 0; j < GDN_COLS / 8; ++j) {
            const float *b = os + (t + l.tig) * GDN_LDS + 8 * j + l.g;
            const unsigned bf[2] = {__float_as_uint(b[0]), __float_as_uint(b[4 * GDN_LDS])};
            gdn_mma(s[j], af, bf);
        }
    }
}

// Runs a walk over `chunks` chunks from the state `s` (this thread's fragment): chunk(k) gives the k-th
// chunk's operands; at each chunk's start the state is in shared memory `ss` (128 × GDN_LDS) and
// handed to `at_start` (k, ss). After it, `s` holds the final state.
template <typename Chunk, typename Start>
__device__ void gdn_walk(float (&s)[GDN_COLS / 8][4], const GdnLane &l, int chunks, int dk, int dv, Chunk chunk,
                         Start at_start) {
    extern __shared__ float4 gdn_dynamic[];
    float *ss = reinterpret_cast<float *>(gdn_dynamic), *os = ss + 128 * GDN_LDS, *m1s = os + GDN_C * GDN_LDS;
    float *m2s = m1s + GDN_C * GDN_LD1;
    GdnWalk w = chunk(0);
    GdnOperands p;
    gdn_operands(p, w, l, dk, dv);
    gdn_copy_async(m1s, GDN_LD1, w.m1, w.ld1, dk, true);
    gdn_copy_async(m2s, GDN_LD2, w.m2, w.ld2, dk, true);
    for (int k = 0; k < chunks; ++k) {
        const GdnWalk now = w;
        const GdnOperands ops = p;
        if (k + 1 < chunks) {
            w = chunk(k + 1);
            gdn_operands(p, w, l, dk, dv);
        }
        gdn_state_fragment(l, [&](int j, int e, int row, int c) { ss[row * GDN_LDS + c] = s[j][e]; });
        gdn_wait_older();  // this chunk's m1 is in, and the state
        at_start(k, ss);
        gdn_walk_first(ss, os, m1s, now, ops, l, dk, dv);
        __syncthreads();  // m1s is free, os is written
        gdn_copy_async(m1s, GDN_LD1, w.m1, w.ld1, dk, k + 1 < chunks);
        gdn_wait_older();  // this chunk's m2 is in
        gdn_walk_second(s, os, m2s, now, ops, l, dk);
        __syncthreads();  // m2s and os are free
        gdn_copy_async(m2s, GDN_LD2, w.m2, w.ld2, dk, k + 1 < chunks);
    }
    asm volatile("cp.async.wait_all;");
}

// The walk's state from `from` (items, dk, dv), or zeros; `to` (items, dk, dv) from it.
__device__ void gdn_state_in(float (&s)[GDN_COLS / 8][4], const GdnLane &l, const float *from, int dk, int dv) {
    gdn_state_fragment(l, [&](int j, int e, int row, int c) {
        const int col = l.col0 + c;
        s[j][e] = from && row < dk && col < dv ? from[((long long)l.item * dk + row) * dv + col] : 0.f;
    });
}
__device__ void gdn_state_out(const float (&s)[GDN_COLS / 8][4], const GdnLane &l, float *to, int dk, int dv) {
    gdn_state_fragment(l, [&](int j, int e, int row, int c) {
        const int col = l.col0 + c;
        if (row < dk && col < dv) to[((long long)l.item * dk + row) * dv + col] = s[j][e];
    });
}

// `ss`'s state (dk × the block's columns) into `to` (dk, dv), a row's columns by consecutive threads.
__device__ void gdn_state_store(const float *ss, const GdnLane &l, float *to, int dk, int dv) {
    for (int e = threadIdx.x; e < dk * GDN_COLS; e += blockDim.x) {
        const int row = e / GDN_COLS, c = e % GDN_COLS;
        if (l.col0 + c < dv) to[(long long)row * dv + l.col0 + c] = ss[row * GDN_LDS + c];
    }
}

// The state carried across chunks, one block per (item, GDN_COLS state columns), the chunks in order:
// with U and W the two parts of UW (B, C, dv + dk) = T·X, V' = U − W·h, then h ← e^(G_last)·h + LKᵀ·V'.
// `out`: H (B, dk, dv), the state at each chunk's start; V' (B, C, dv); the final states (items, dk,
// dv). `state` (items, dk, dv) is the first chunk's.
extern "C" __global__ void __launch_bounds__(256, 2) gdn_chunk_state(const float *__restrict__ uw, const float *__restrict__ lk,
                                                                  const float *__restrict__ g, const float *__restrict__ state,
                                                                  float *__restrict__ out, int items, int chunks, int dk, int dv) {
    const GdnLane l = gdn_lane(dv);
    const long long B = (long long)items * chunks;
    float *hs = out, *vp = out + B * dk * dv, *final_state = vp + B * GDN_C * dv;
    float s[GDN_COLS / 8][4];
    gdn_state_in(s, l, state, dk, dv);
    const auto chunk = [&](int n) {
        const long long bn = (long long)l.item * chunks + n;
        const float *u = uw + bn * GDN_C * (dv + dk);
        return GdnWalk{u, nullptr, u + dv, lk + bn * GDN_C * dk, dv + dk, dv + dk, dk, -1.f, 1.f,
                       __expf(g[bn * GDN_C + GDN_C - 1]), vp + bn * GDN_C * dv};
    };
    const auto at_start = [&](int n, const float *ss) {
        gdn_state_store(ss, l, hs + ((long long)l.item * chunks + n) * dk * dv, dk, dv);
    };
    gdn_walk(s, l, chunks, dk, dv, chunk, at_start);
    gdn_state_out(s, l, final_state, dk, dv);
}

// Between the chunk layout (B, C, dv) and the layer's (batch, seq, heads, dv): forward (to_layer = 1)
// writes a + b's real tokens in the layer's layout; backward (0) gathers `a` from it into chunks,
// padding zero (`b` unread). Four values a thread (dv is a multiple of four, the buffers 16-byte
// aligned): the index arithmetic, 64-bit divisions, was most of its time with one (109 → 34 µs a call
// at qwen3.5-27b, two sequences, H200).
extern "C" __global__ void gdn_chunk_layout(const float4 *__restrict__ a, const float4 *__restrict__ b,
                                            float4 *__restrict__ out, int batch, int seq, int heads, int dv,
                                            int to_layer) {
    const int chunks = (seq + GDN_C - 1) / GDN_C, dv4 = dv / 4;
    const long long chunked = (long long)batch * heads * chunks * GDN_C * dv4, layer = (long long)batch * seq * heads * dv4;
    const long long n = to_layer ? layer : chunked;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(e % dv4);
        if (to_layer) {
            const long long row = e / dv4 / heads, bs = row / seq;
            const int h = (int)((e / dv4) % heads), s = (int)(row % seq);
            const long long at = (((bs * heads + h) * chunks + s / GDN_C) * GDN_C + s % GDN_C) * dv4 + c;
            const float4 x = a[at], y = b[at];
            out[e] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
        } else {
            const int t = (int)((e / dv4) % GDN_C);
            const long long bn = e / dv4 / GDN_C, item = bn / chunks, s = (bn % chunks) * GDN_C + t;
            out[e] = s < seq ? a[(((item / heads) * seq + s) * heads + item % heads) * dv4 + c] : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
}

// The state's adjoint carried back across chunks, one block per (item, GDN_COLS columns), the chunks
// from the last: dV' = A + LK·dh, then dh ← e^(G_last)·dh + Bm − Wᵀ·dV', from dh = 0 after the last
// chunk. Bm (B, dk, dv) = (γ⊙Q)ᵀ·dO and A (B, C, dv) = P̃ᵀ·dO. `out`: DV2 (B, 2C, dv) = [dO; dV'],
// then DH (B, dk, dv), the adjoint of the state after each chunk.
extern "C" __global__ void __launch_bounds__(256, 2) gdn_chunk_state_backward(const float *__restrict__ bms, const float *__restrict__ as,
                                                    const float *__restrict__ lk, const float *__restrict__ uw,
                                                    const float *__restrict__ g, const float *__restrict__ d_o,
                                                    float *__restrict__ out, int items, int chunks, int dk, int dv) {
    const GdnLane l = gdn_lane(dv);
    const long long B = (long long)items * chunks;
    float *dv2 = out, *dhs = out + B * 2 * GDN_C * dv;
    float s[GDN_COLS / 8][4];
    gdn_state_in(s, l, nullptr, dk, dv);
    const auto chunk = [&](int k) {
        const long long bn = (long long)l.item * chunks + chunks - 1 - k;
        return GdnWalk{as + bn * GDN_C * dv, bms + bn * dk * dv, lk + bn * GDN_C * dk, uw + bn * GDN_C * (dv + dk) + dv,
                       dv, dk, dv + dk, 1.f, -1.f, __expf(g[bn * GDN_C + GDN_C - 1]),
                       dv2 + (bn * 2 + 1) * GDN_C * dv};
    };
    const auto at_start = [&](int k, const float *ss) {
        const long long bn = (long long)l.item * chunks + chunks - 1 - k;
        gdn_state_store(ss, l, dhs + bn * dk * dv, dk, dv);
        for (int e = threadIdx.x; e < GDN_C * GDN_COLS; e += blockDim.x) {
            const int t = e / GDN_COLS, col = l.col0 + e % GDN_COLS;
            if (col < dv) dv2[(bn * 2 * GDN_C + t) * dv + col] = d_o[(bn * GDN_C + t) * dv + col];
        }
    };
    gdn_walk(s, l, chunks, dk, dv, chunk, at_start);
}

// Z (B, C, dv + dk) = [dU | dW] = [dV' | −(dV'·hᵀ)], from DV2's second half and Y1's (B, 2C, dk). Four
// values a thread, as gdn_chunk_layout (dk and dv are multiples of four).
extern "C" __global__ void gdn_chunk_pack_dz(const float4 *__restrict__ dv2, const float4 *__restrict__ y1,
                                             float4 *__restrict__ out, int B, int dk, int dv) {
    const int dk4 = dk / 4, dv4 = dv / 4, width = dk4 + dv4;
    const long long n = (long long)B * GDN_C * width;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(e % width);
        const long long bt = e / width, bn = bt / GDN_C, t = bt % GDN_C;
        if (c < dv4) {
            out[e] = dv2[((bn * 2 + 1) * GDN_C + t) * dv4 + c];
        } else {
            const float4 y = y1[((bn * 2 + 1) * GDN_C + t) * dk4 + c - dv4];
            out[e] = make_float4(-y.x, -y.y, -y.z, -y.w);
        }
    }
}

// The masks' backward, per chunk row: dN' = −(Tᵀ·dT·Tᵀ) ⊙ D on the strictly lower triangle (`dnf` holds
// the product), dP' = dP̃ ⊙ D on the lower one (`y3` = dO·V'ᵀ); and what the decays get through D,
// with E = dN' ⊙ (β⊙K·Kᵀ) + dP' ⊙ (Q·Kᵀ): EG_i = Σ_j E_ij − Σ_j E_ji. `out`: DNP (B, 2C, C) =
// [dN'; dP'], then EG (B, C). One block per chunk row.
extern "C" __global__ void gdn_chunk_masks_backward(const float *__restrict__ dnf, const float *__restrict__ y3,
                                                    const float *__restrict__ np, const float *__restrict__ g,
                                                    float *__restrict__ out, int B) {
    __shared__ float e_s[GDN_C][GDN_C + 1], g_cum[GDN_C];
    const long long bn = blockIdx.x, cc = GDN_C * GDN_C;
    gdn_stage_decays(g, bn, g_cum);
    for (int e = threadIdx.x; e < GDN_C * GDN_C; e += blockDim.x) {
        const int i = e / GDN_C, j = e % GDN_C;
        const float d = gdn_decay(g_cum, i, j);
        const float dn = j < i ? -dnf[bn * cc + e] * d : 0.f, dp = y3[bn * cc + e] * d;
        out[bn * 2 * cc + e] = dn, out[bn * 2 * cc + cc + e] = dp;
        e_s[i][j] = dn * np[bn * 2 * cc + e] + dp * np[bn * 2 * cc + cc + e];
    }
    __syncthreads();
    if (threadIdx.x < GDN_C) {
        float s = 0.f;
        for (int j = 0; j < GDN_C; ++j) s += e_s[threadIdx.x][j] - e_s[j][threadIdx.x];
        out[(long long)B * 2 * cc + bn * GDN_C + threadIdx.x] = s;
    }
}

// The products' results, per token, into the prepared inputs' gradients in the layout
// gated_delta_prepare_backward_bf16 reads (dq and dk per value head (rows, heads, dk), dv (rows, heads,
// dv), dg and dβ (rows, heads)), for the real tokens of chunk row bn:
//   dQ = γ⊙Y1a + F1b;  dK = F2 + β⊙F1a + βγ⊙dXk + λ⊙Y2;  dV = β⊙dXv;
//   dβ = F1a·K + dXv·V + γ dXk·K;  dG = EG + γ Y1a·Q + βγ dXk·K − λ Y2·K, plus at the last position
//   dL = e^(G_last)⟨h, dh⁺⟩ + Σ λ Y2·K; dg is dG summed from each position to the chunk's end.
// Y1 (B, 2C, dk) = [dO·hᵀ; ·], Y2 (B, C, dk) = V'·dh⁺ᵀ, dX (B, C, dv + dk), F1 (B, 2C, dk) = DNP·K,
// F2 (B, C, dk) = DNPᵀ·KQ, EG (B, C), HS (B, dk, dv) the states at each chunk's start, DH (B, dk, dv)
// the adjoints after it. One block per chunk row, a warp per token.
extern "C" __global__ void gdn_chunk_grads(const float *__restrict__ prepared, const __nv_bfloat16 *__restrict__ conv,
                                           const float *__restrict__ y1, const float *__restrict__ y2,
                                           const float *__restrict__ dx, const float *__restrict__ f1,
                                           const float *__restrict__ f2, const float *__restrict__ eg,
                                           const float *__restrict__ hs, const float *__restrict__ dh,
                                           float *__restrict__ out, int batch, int seq, int key_heads, int heads,
                                           int dk, int dv) {
    __shared__ float g_cum[GDN_C], beta[GDN_C], d_g[GDN_C], d_beta[GDN_C], shared[32];
    const int chunks = (seq + GDN_C - 1) / GDN_C, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warps = blockDim.x / 32;
    const long long bn = blockIdx.x, rows = (long long)batch * seq, vrows = rows * heads;
    const long long kd = (long long)key_heads * dk, width = 2 * kd + (long long)heads * dv;
    const GdnPrepared in = gdn_prepared(prepared, rows, kd, heads);
    const float *qp = in.q, *kp = in.k;
    float *dq = out, *dkk = dq + vrows * dk, *dvv = dkk + vrows * dk, *dg = dvv + vrows * dv, *db = dg + vrows;
    gdn_load_decays(in.g, in.beta, bn, chunks, seq, heads, key_heads, g_cum, beta);
    const float last = g_cum[GDN_C - 1];
    float lam_rl = 0.f;  // this warp's share of Σ λ Y2·K
    for (int t = warp; t < GDN_C; t += warps) {
        const GdnToken tok = gdn_token(bn, t, chunks, seq, heads, key_heads);
        const float gamma = __expf(g_cum[t]), lam = __expf(last - g_cum[t]), be = beta[t];
        const long long at = (tok.row * key_heads + tok.kh) * dk, out_at = (tok.row * heads + tok.h) * dk;
        const float *y1a = y1 + (bn * 2 * GDN_C + t) * dk, *f1a = f1 + (bn * 2 * GDN_C + t) * dk;
        const float *f1b = f1a + GDN_C * dk, *y2t = y2 + (bn * GDN_C + t) * dk, *f2t = f2 + (bn * GDN_C + t) * dk;
        const float *dxt = dx + (bn * GDN_C + t) * (dv + dk);
        float s_beta = 0.f, s_q = 0.f, s_xk = 0.f, s_rl = 0.f;
        for (int i = lane; i < dk; i += 32) {
            const float q = tok.real ? qp[at + i] : 0.f, k = tok.real ? kp[at + i] : 0.f;
            s_beta += f1a[i] * k, s_q += y1a[i] * q, s_xk += dxt[dv + i] * k, s_rl += y2t[i] * k;
            if (tok.real) {
                dq[out_at + i] = gamma * y1a[i] + f1b[i];
                dkk[out_at + i] = f2t[i] + be * f1a[i] + be * gamma * dxt[dv + i] + lam * y2t[i];
            }
        }
        for (int c = lane; c < dv; c += 32) {
            const float v = tok.real ? __bfloat162float(conv[tok.row * width + 2 * kd + (long long)tok.h * dv + c]) : 0.f;
            s_beta += dxt[c] * v;
            if (tok.real) dvv[(tok.row * heads + tok.h) * dv + c] = be * dxt[c];
        }
        s_beta = warp_sum(s_beta), s_q = warp_sum(s_q), s_xk = warp_sum(s_xk), s_rl = warp_sum(s_rl);
        if (lane == 0) {
            d_beta[t] = s_beta + gamma * s_xk;
            d_g[t] = eg[bn * GDN_C + t] + gamma * s_q + be * gamma * s_xk - lam * s_rl;
            lam_rl += lam * s_rl;
        }
    }
    float hd = 0.f;
    for (long long e = threadIdx.x; e < (long long)dk * dv; e += blockDim.x) hd += hs[bn * dk * dv + e] * dh[bn * dk * dv + e];
    const float d_last = __expf(last) * block_reduce<false>(hd, shared) + block_reduce<false>(lam_rl, shared);
    if (threadIdx.x == 0) {
        float acc = d_last;
        for (int t = GDN_C - 1; t >= 0; --t) {
            acc += d_g[t];
            const GdnToken tok = gdn_token(bn, t, chunks, seq, heads, key_heads);
            if (tok.real) dg[tok.row * heads + tok.h] = acc, db[tok.row * heads + tok.h] = d_beta[t];
        }
    }
}
