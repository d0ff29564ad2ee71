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
    const float *qp = prepared, *kp = prepared + rows * kd, *gp = prepared + 2 * rows * kd, *bp = gp + rows * heads;
    gdn_load_decays(gp, bp, bn, chunks, seq, heads, key_heads, g_cum, beta);
    float *kq = out + bn * 2 * GDN_C * dk, *k_out = out + B * 2 * GDN_C * dk + bn * GDN_C * dk;
    float *x = out + B * 3 * GDN_C * dk + bn * GDN_C * (dv + dk);
    float *lk = out + B * GDN_C * (4 * dk + dv) + bn * GDN_C * dk;
    float *qg = out + B * GDN_C * (5 * dk + dv) + bn * GDN_C * dk;
    float *g_out = out + B * GDN_C * (6 * dk + dv) + bn * GDN_C;
    const float last = g_cum[GDN_C - 1];
    for (int e = threadIdx.x; e < GDN_C * dk; e += blockDim.x) {
        const int t = e / dk, i = e % dk;
        const GdnToken tok = gdn_token(bn, t, chunks, seq, heads, key_heads);
        const long long at = (tok.row * key_heads + tok.kh) * dk + i;
        const float q = tok.real ? qp[at] : 0.f, k = tok.real ? kp[at] : 0.f, gamma = __expf(g_cum[t]);
        kq[e] = beta[t] * k, kq[GDN_C * dk + e] = q, k_out[e] = k;
        x[t * (dv + dk) + dv + i] = beta[t] * gamma * k;
        lk[e] = __expf(last - g_cum[t]) * k, qg[e] = gamma * q;
    }
    for (int e = threadIdx.x; e < GDN_C * dv; e += blockDim.x) {
        const int t = e / dv, c = e % dv;
        const GdnToken tok = gdn_token(bn, t, chunks, seq, heads, key_heads);
        const float v = tok.real ? __bfloat162float(conv[tok.row * width + 2 * kd + (long long)tok.h * dv + c]) : 0.f;
        x[t * (dv + dk) + c] = beta[t] * v;
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

// The two walks (the state forward, its adjoint back) have one shape. Over the block's 32 state columns
// col0 .. col0 + 32 (256 threads: column tid % 32, a run of consecutive rows from tid / 32), a chunk does
//   o[t] = base[t] + sign1 · Σ_i m1[t][i]·s[i]   (t < C; written to `out` too)
//   s[i] = decay · s[i] + extra[i] + sign2 · Σ_t m2[t][i]·o[t]   (i < dk; `extra` may be null)
// with m1 and m2 (C rows of dk) read from global memory. Only s is sequential: m1, m2, base and extra
// are inputs, so each chunk's are loaded into registers while the chunk before computes and stored to
// shared memory when it is done, and read from there four values at a time. Measured at qwen3.5-0.8b
// (16 chunks a walk, H200): m1 and m2 read from global memory term by term, 3 ms a walk; through a
// small tile, 0.9 ms; prefetched but read one value a load, 607 µs (bound by shared-memory loads);
// four values a load, 304 µs, about a third of the FMA rate.
// Dynamic shared memory: s (128 × 32), o (C × 32), m1 and m2 (C × dk each): 88 KiB at dk = 128.
struct GdnWalk {
    const float *base, *extra, *m1, *m2;
    int ldb, ld1, ld2;
    float sign1, sign2, decay;
    float *out;
};

// Per thread: its 8 float4 of m1 and of m2 (C · dk ≤ 8192 floats over 256 threads), and its rows of
// base and extra. A thread's rows are consecutive (8 of the C outputs, dk / 8 of the state's), so that
// the walk reads m1 and m2 from shared memory four values at a time.
struct GdnPrefetch {
    float4 m1[8], m2[8];
    float base[GDN_C / 8], extra[128 / 8];
};

__device__ void gdn_prefetch(GdnPrefetch &p, const GdnWalk &w, int dk, int dv, int col) {
    const int r0 = threadIdx.x / 32, quads = GDN_C * dk / 4, per = dk / 8;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int e = threadIdx.x + 256 * k, t = 4 * e / dk, i = 4 * e % dk;
        if (e < quads) {
            p.m1[k] = *reinterpret_cast<const float4 *>(w.m1 + (long long)t * w.ld1 + i);
            p.m2[k] = *reinterpret_cast<const float4 *>(w.m2 + (long long)t * w.ld2 + i);
        }
    }
    const bool active = col < dv;
#pragma unroll
    for (int r = 0; r < GDN_C / 8; ++r) p.base[r] = active ? w.base[(r0 * (GDN_C / 8) + r) * w.ldb + col] : 0.f;
#pragma unroll
    for (int r = 0; r < 128 / 8; ++r)
        p.extra[r] = w.extra && active && r < per ? w.extra[(long long)(r0 * per + r) * dv + col] : 0.f;
}

// One chunk from the prefetched `p` (its matrices already in shared memory `m1s`, `m2s`).
__device__ void gdn_walk_chunk(float (*s)[32], float (*o)[32], const float *m1s, const float *m2s,
                               const GdnPrefetch &p, const GdnWalk &w, int dk, int dv, int col) {
    constexpr int R1 = GDN_C / 8, R2 = 128 / 8;
    const int c = threadIdx.x % 32, r0 = threadIdx.x / 32, per = dk / 8;
    float acc[R2];
#pragma unroll
    for (int r = 0; r < R2; ++r) acc[r] = 0.f;
    for (int i = 0; i < dk; i += 4) {
        const float s0 = s[i][c], s1 = s[i + 1][c], s2 = s[i + 2][c], s3 = s[i + 3][c];
#pragma unroll
        for (int r = 0; r < R1; ++r) {
            const float4 m = *reinterpret_cast<const float4 *>(m1s + (r0 * R1 + r) * dk + i);
            acc[r] += m.x * s0 + m.y * s1 + m.z * s2 + m.w * s3;
        }
    }
#pragma unroll
    for (int r = 0; r < R1; ++r) {
        const int t = r0 * R1 + r;
        const float v = p.base[r] + w.sign1 * acc[r];
        o[t][c] = v;
        if (col < dv) w.out[t * dv + col] = v;
        acc[r] = 0.f;
    }
    __syncthreads();
    for (int t = 0; t < GDN_C; ++t) {
        const float ov = o[t][c];
#pragma unroll
        for (int r = 0; r < R2; r += 4) {
            if (r < per) {
                const float4 m = *reinterpret_cast<const float4 *>(m2s + t * dk + r0 * per + r);
                acc[r] += m.x * ov, acc[r + 1] += m.y * ov, acc[r + 2] += m.z * ov, acc[r + 3] += m.w * ov;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R2; ++r) {
        const int i = r0 * per + r;
        if (r < per) s[i][c] = w.decay * s[i][c] + p.extra[r] + w.sign2 * acc[r];
    }
}

// Runs a walk over `chunks` chunks: chunk(k) gives the k-th chunk's operands; before each chunk the
// state is handed to `at_start` (k, s) for writing out. After it, s holds the final state.
template <typename Chunk, typename Start>
__device__ void gdn_walk(float (*s)[32], int chunks, int dk, int dv, int col, Chunk chunk, Start at_start) {
    extern __shared__ float4 gdn_dynamic[];
    float(*o)[32] = reinterpret_cast<float(*)[32]>(reinterpret_cast<float *>(gdn_dynamic) + 128 * 32);
    float *m1s = reinterpret_cast<float *>(gdn_dynamic) + (128 + GDN_C) * 32, *m2s = m1s + GDN_C * dk;
    GdnPrefetch p;
    GdnWalk w = chunk(0);
    gdn_prefetch(p, w, dk, dv, col);
    const int quads = GDN_C * dk / 4;
    for (int k = 0; k < chunks; ++k) {
        __syncthreads();  // the previous chunk is done with m1s, m2s and o
#pragma unroll
        for (int q = 0; q < 8; ++q) {
            const int e = threadIdx.x + 256 * q;
            if (e < quads) reinterpret_cast<float4 *>(m1s)[e] = p.m1[q], reinterpret_cast<float4 *>(m2s)[e] = p.m2[q];
        }
        const GdnPrefetch now = p;
        const GdnWalk current = w;
        at_start(k, s);
        if (k + 1 < chunks) {
            w = chunk(k + 1);
            gdn_prefetch(p, w, dk, dv, col);
        }
        __syncthreads();
        gdn_walk_chunk(s, o, m1s, m2s, now, current, dk, dv, col);
    }
    __syncthreads();
}

// A walk's thread: its block's item, its state column (c within the block's 32), its first row.
struct GdnColumn {
    int item, c, col, r0;
    bool active;
};
__device__ GdnColumn gdn_column(int dv) {
    const int tiles = (dv + 31) / 32, c = threadIdx.x % 32, col = (blockIdx.x % tiles) * 32 + c;
    return {(int)(blockIdx.x / tiles), c, col, (int)(threadIdx.x / 32), col < dv};
}

// The carried state's 32 columns: the start of the walks' dynamic shared memory.
__device__ float (*gdn_walk_state())[32] {
    extern __shared__ float4 gdn_dynamic[];
    return reinterpret_cast<float(*)[32]>(gdn_dynamic);
}

// The state carried across chunks, one block of 256 threads per (item, 32 state columns), the chunks
// in order: with U and W the two parts of UW (B, C, dv + dk) = T·X, V' = U − W·h, then
// h ← e^(G_last)·h + LKᵀ·V'. `out`: H (B, dk, dv), the state at each chunk's start; V' (B, C, dv);
// the final states (items, dk, dv). `state` (items, dk, dv) is the first chunk's.
extern "C" __global__ void __launch_bounds__(256) gdn_chunk_state(const float *__restrict__ uw, const float *__restrict__ lk,
                                           const float *__restrict__ g, const float *__restrict__ state,
                                           float *__restrict__ out, int items, int chunks, int dk, int dv) {
    float(*s)[32] = gdn_walk_state();
    const auto [item, c, col, r0, active] = gdn_column(dv);
    const long long B = (long long)items * chunks;
    float *hs = out, *vp = out + B * dk * dv, *final_state = vp + B * GDN_C * dv;
    for (int i = r0; i < dk; i += 8) s[i][c] = active ? state[((long long)item * dk + i) * dv + col] : 0.f;
    const auto chunk = [&](int n) {
        const long long bn = (long long)item * chunks + n;
        const float *u = uw + bn * GDN_C * (dv + dk);
        return GdnWalk{u, nullptr, u + dv, lk + bn * GDN_C * dk, dv + dk, dv + dk, dk, -1.f, 1.f,
                       __expf(g[bn * GDN_C + GDN_C - 1]), vp + bn * GDN_C * dv};
    };
    const auto at_start = [&](int n, float(*s)[32]) {
        const long long bn = (long long)item * chunks + n;
        for (int i = r0; i < dk; i += 8)
            if (active) hs[(bn * dk + i) * dv + col] = s[i][c];
    };
    gdn_walk(s, chunks, dk, dv, col, chunk, at_start);
    for (int i = r0; i < dk; i += 8)
        if (active) final_state[((long long)item * dk + i) * dv + col] = s[i][c];
}

// Between the chunk layout (B, C, dv) and the layer's (batch, seq, heads, dv): forward (to_layer = 1)
// writes a + b's real tokens in the layer's layout; backward (0) gathers `a` from it into chunks,
// padding zero (`b` unread).
extern "C" __global__ void gdn_chunk_layout(const float *__restrict__ a, const float *__restrict__ b,
                                            float *__restrict__ out, int batch, int seq, int heads, int dv,
                                            int to_layer) {
    const int chunks = (seq + GDN_C - 1) / GDN_C;
    const long long chunked = (long long)batch * heads * chunks * GDN_C * dv, layer = (long long)batch * seq * heads * dv;
    const long long n = to_layer ? layer : chunked;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        if (to_layer) {
            const int c = e % dv, h = (e / dv) % heads;
            const long long row = e / dv / heads, bs = row / seq, s = row % seq;
            const long long at = (((bs * heads + h) * chunks + s / GDN_C) * GDN_C + s % GDN_C) * dv + c;
            out[e] = a[at] + b[at];
        } else {
            const int c = e % dv, t = (e / dv) % GDN_C;
            const long long bn = e / dv / GDN_C, item = bn / chunks, s = (bn % chunks) * GDN_C + t;
            out[e] = s < seq ? a[(((item / heads) * seq + s) * heads + item % heads) * dv + c] : 0.f;
        }
    }
}

// The state's adjoint carried back across chunks, one block of 256 threads per (item, 32 columns),
// the chunks from the last: dV' = A + LK·dh, then dh ← e^(G_last)·dh + Bm − Wᵀ·dV', from dh = 0 after
// the last chunk. Bm (B, dk, dv) = (γ⊙Q)ᵀ·dO and A (B, C, dv) = P̃ᵀ·dO. `out`: DV2 (B, 2C, dv) =
// [dO; dV'], then DH (B, dk, dv), the adjoint of the state after each chunk.
extern "C" __global__ void __launch_bounds__(256) gdn_chunk_state_backward(const float *__restrict__ bms, const float *__restrict__ as,
                                                    const float *__restrict__ lk, const float *__restrict__ uw,
                                                    const float *__restrict__ g, const float *__restrict__ d_o,
                                                    float *__restrict__ out, int items, int chunks, int dk, int dv) {
    float(*s)[32] = gdn_walk_state();
    const auto [item, c, col, r0, active] = gdn_column(dv);
    const long long B = (long long)items * chunks;
    float *dv2 = out, *dhs = out + B * 2 * GDN_C * dv;
    for (int i = r0; i < dk; i += 8) s[i][c] = 0.f;
    const auto chunk = [&](int k) {
        const long long bn = (long long)item * chunks + chunks - 1 - k;
        return GdnWalk{as + bn * GDN_C * dv, bms + bn * dk * dv, lk + bn * GDN_C * dk, uw + bn * GDN_C * (dv + dk) + dv,
                       dv, dk, dv + dk, 1.f, -1.f, __expf(g[bn * GDN_C + GDN_C - 1]),
                       dv2 + (bn * 2 + 1) * GDN_C * dv};
    };
    const auto at_start = [&](int k, float(*s)[32]) {
        const long long bn = (long long)item * chunks + chunks - 1 - k;
        for (int i = r0; i < dk; i += 8)
            if (active) dhs[(bn * dk + i) * dv + col] = s[i][c];
        for (int t = r0; t < GDN_C; t += 8)
            if (active) dv2[(bn * 2 * GDN_C + t) * dv + col] = d_o[(bn * GDN_C + t) * dv + col];
    };
    gdn_walk(s, chunks, dk, dv, col, chunk, at_start);
}

// Z (B, C, dv + dk) = [dU | dW] = [dV' | −(dV'·hᵀ)], from DV2's second half and Y1's (B, 2C, dk).
extern "C" __global__ void gdn_chunk_pack_dz(const float *__restrict__ dv2, const float *__restrict__ y1,
                                             float *__restrict__ out, int B, int dk, int dv) {
    const long long n = (long long)B * GDN_C * (dv + dk);
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        const int c = e % (dv + dk);
        const long long bt = e / (dv + dk), bn = bt / GDN_C, t = bt % GDN_C;
        out[e] = c < dv ? dv2[((bn * 2 + 1) * GDN_C + t) * dv + c] : -y1[((bn * 2 + 1) * GDN_C + t) * dk + c - dv];
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
    const float *qp = prepared, *kp = prepared + rows * kd, *gp = prepared + 2 * rows * kd, *bp = gp + vrows;
    float *dq = out, *dkk = dq + vrows * dk, *dvv = dkk + vrows * dk, *dg = dvv + vrows * dv, *db = dg + vrows;
    gdn_load_decays(gp, bp, bn, chunks, seq, heads, key_heads, g_cum, beta);
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
