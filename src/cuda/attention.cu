/* attention.cu — causal grouped-query softmax attention on the GPU, flash-style, float32.
 *
 * q[B,T,H,hd], k,v[B,T,Hkv,hd]; query head h reads kv head g = h / (H/Hkv). For each row
 * (b,h,t), over the visible keys j ∈ [start_t, t] (start_t = 0, or max(0, t−w+1) with a
 * sliding window w > 0):
 *   s_j   = scale · q_t·k_j,            scale = 1/sqrt(hd)
 *   lse_t = log Σ_j exp(s_j)
 *   out_t = Σ_j exp(s_j − lse_t) v_j
 * Backward (FlashAttention-2's math), recomputing P from lse:
 *   D_t = dout_t·out_t,   P_tj = exp(s_tj − lse_t),   dS_tj = P_tj (dout_t·v_j − D_t)
 *   dq_t += scale Σ_j dS_tj k_j;   dk_j += scale Σ_t dS_tj q_t;   dv_j += Σ_t P_tj dout_t
 * Only out and lse[B,H,T] are written by forward; no T×T matrix exists anywhere (the
 * largest score block is a 64×64 tile in shared memory).
 *
 * Work split. Every kernel is a 256-thread block seen as a 16×16 grid (ty, tx), working on
 * tiles that sit in shared memory, row-major with rows padded to hd+4 floats; the head dim
 * is a compile-time bucket HD ∈ {32, 64, 128} (zero-padded past hd), so each thread's
 * accumulators are a fixed register array. Each product is register-blocked SGEMM-style:
 *  - scores S = Q·Kᵀ and dP = dO·Vᵀ: thread (ty, tx) owns rows ty+16i and keys tx+16c (a
 *    4×4 block for 64×64 tiles), reading float4s along the head dim: the 16 lanes that
 *    share a row broadcast it, the keys' rows fall in disjoint banks thanks to the padding.
 *  - products with P or dS (O += P·V, dq += dS·K, dv += Pᵀ·dO, dk += dSᵀ·Q): P/dS are
 *    written to shared memory, and thread (ty, tx) owns 4 consecutive output rows (one
 *    float4 of a P/dS row or column) × hd/16 dims (16 lanes read consecutive vectors).
 * So one shared load feeds 4 to 8 FMAs instead of one.
 *  - forward: one block per (64 query rows, head, batch); K/V tiles stream through; online
 *    softmax (running max and sum per row; the rescale factor goes through shared memory
 *    from the score layout to the output layout).
 *  - backward: D_t is computed once per row by a small kernel into a scratch buffer. dq is
 *    a kernel shaped like forward; dk/dv is one block per (64 keys, kv head, batch), looping
 *    over the group's query heads and the query tiles that can see the keys, owning its
 *    keys' dk/dv rows. Each element of dq, dk, dv is thus added by exactly one thread, once:
 *    no atomics, deterministic. The price is computing S and dP in both kernels (7 tile
 *    products instead of FA2's 5 with atomic dq).
 *  - the causal/window mask is evaluated only on tiles that cross the diagonal, the window
 *    edge or T; tiles entirely above the diagonal or past the window are never visited.
 * Plain float32 FMAs on the CUDA cores (no TF32: the tests compare with float32 references
 * at 1e-3); with train.matmul_precision tf32 or bf16 the entry points below hand the tile
 * products to the TF32 or bf16 tensor-core kernels of attention_tc.cu instead. expf, not __expf, so it agrees with the CPU op to rounding.
 * Measured on an H100 at B8 T2048 H12 Hkv4 hd64, causal: forward 2.47 ms, backward 7.38 ms
 * (dq 3.1, dk/dv 4.4), ~20 TFLOP/s; the earlier unblocked kernels took 9.4 and 26.9 ms. */
#include "attention_common.cuh"
#include "cuda_check.h"
#include "ops_cuda.h"
#include "precision.cuh"
#include "reduce.cuh"

#define THREADS 256           /* 8 warps; a 16×16 grid of threads over every tile */
#define TILE 64               /* query rows (forward, dq) or keys (dk/dv) a block owns */
#define MAX_HD 128

/* Copies rows first..first+ROWS−1 of head `head` of x[B,T,heads,hd] into tile[ROWS][HD+4];
 * rows at or past T and dims at or past hd are zero, so the padded dot products below are
 * exact. All threads take part; HD is a power of two, so r and d are a shift and a mask. */
template <int HD, int ROWS>
__device__ __forceinline__ void load_tile(float *tile, const float *x, int b, int first, int heads,
                                          int head, int T, int hd) {
    for (int idx = threadIdx.x; idx < ROWS * HD; idx += THREADS) {
        const int r = idx / HD, d = idx % HD, t = first + r;
        tile[r * (HD + 4) + d] = t < T && d < hd ? x[token_row(b, t, heads, head, T) * hd + d] : 0.0f;
    }
}

/* VW consecutive floats from shared memory in one load (VW = 2 or 4; 8- or 16-byte aligned). */
template <int VW>
__device__ __forceinline__ void load_vec(float (&out)[VW], const float *p) {
    if constexpr (VW == 4) {
        const float4 x = *reinterpret_cast<const float4 *>(p);
        out[0] = x.x; out[1] = x.y; out[2] = x.z; out[3] = x.w;
    } else {
        const float2 x = *reinterpret_cast<const float2 *>(p);
        out[0] = x.x; out[1] = x.y;
    }
}

/* s[i][c] = A[ty+16i]·Bt[tx+16c] over HD dims: rows of A[..][HD+4] against rows of
 * Bt[..][HD+4] (Q·Kᵀ and dO·Vᵀ). Each thread owns an RI×CI sub-tile, rows and columns
 * strided by 16 so that the 8 threads of a quarter-warp read 8 different rows of Bt, whose
 * HD+4 stride puts them in 8 disjoint groups of 4 banks (no conflicts); the A rows are the
 * same for 16 lanes (a broadcast). One float4 load per row feeds 4·(other side) FMAs. */
template <int HD, int RI, int CI>
__device__ __forceinline__ void tile_dot(float (&s)[RI][CI], const float *A, const float *Bt,
                                         int ty, int tx) {
    constexpr int LD = HD + 4;
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
        for (int c = 0; c < CI; c++) s[i][c] = 0.0f;
#pragma unroll
    for (int d = 0; d < HD; d += 4) {
        float a[RI][4], bt[CI][4];
#pragma unroll
        for (int i = 0; i < RI; i++) load_vec<4>(a[i], A + (ty + 16 * i) * LD + d);
#pragma unroll
        for (int c = 0; c < CI; c++) load_vec<4>(bt[c], Bt + (tx + 16 * c) * LD + d);
#pragma unroll
        for (int i = 0; i < RI; i++)
#pragma unroll
            for (int c = 0; c < CI; c++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[i][c] += a[i][e] * bt[c][e];
    }
}

/* Dims owned by a thread in the [rows × HD] accumulators: NJ groups of VW consecutive dims,
 * d = j·16·VW + tx·VW + e, so 16 lanes read 16 consecutive vectors of a row (no conflicts). */
template <int HD> struct AccDims {
    static constexpr int VW = HD >= 64 ? 4 : 2;
    static constexpr int NJ = HD / (16 * VW);
    static constexpr int N = NJ * VW;
    static __device__ __forceinline__ int dim(int tx, int j, int e) { return j * 16 * VW + tx * VW + e; }
};

/* acc[i][·] += Σ_c Wt[c][ty·4+i] · X[c][dims]: the P·V, dS·K products, with the weights
 * stored transposed (Wt[BC][TILE+4]) so a thread's 4 rows are one float4. */
template <int HD, int BC>
__device__ __forceinline__ void tile_accumulate_rows(float (&acc)[4][AccDims<HD>::N], const float *Wt,
                                                     const float *X, int ty, int tx) {
    using A = AccDims<HD>;
    constexpr int LD = HD + 4, LDT = TILE + 4;
#pragma unroll 8
    for (int c = 0; c < BC; c++) {
        float w[4];
        load_vec<4>(w, Wt + c * LDT + ty * 4);
#pragma unroll
        for (int j = 0; j < A::NJ; j++) {
            float x[A::VW];
            load_vec<A::VW>(x, X + c * LD + A::dim(tx, j, 0));
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int e = 0; e < A::VW; e++) acc[i][j * A::VW + e] += w[i] * x[e];
        }
    }
}

/* D[b,h,t] = dout_t·out_t, once per row for both backward kernels: one warp per row. */
__global__ void __launch_bounds__(THREADS)
attention_row_dot_kernel(float *D, const float *dout, const float *out, int B, int T, int H, int hd) {
    const long long row = (long long)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= (long long)B * T * H) return;   /* warp-uniform */
    const float *o = out + row * hd, *g = dout + row * hd;
    float partial = 0.0f;
    for (int d = lane; d < hd; d += 32) partial += g[d] * o[d];
    partial = warp_sum(partial);
    const int h = (int)(row % H), t = (int)((row / H) % T), b = (int)(row / ((long long)H * T));
    if (lane == 0) D[((size_t)b * H + h) * T + t] = partial;
}

/* Forward: one block per (64 query rows, head, batch); key/value tiles of BC stream through.
 * Scores: thread (ty, tx) owns rows ty+16i, keys tx+16c; a row's 16 owners are one half-warp,
 * so row max and sum are 4 xor-shuffles. P goes to shared memory transposed; then thread
 * (ty, tx) owns output rows ty·4..ty·4+3 and its AccDims dims. The online-softmax rescale
 * factor crosses from the score layout to the output layout through shared memory. */
template <int HD, int BC, int MINB>
__global__ void __launch_bounds__(THREADS, MINB)
attention_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                         int T, int H, int Hkv, int hd, int window, float scale) {
    using A = AccDims<HD>;
    constexpr int LD = HD + 4, LDT = TILE + 4, RI = TILE / 16, CI = BC / 16;
    extern __shared__ float4 shared4[];
    float *q_tile = reinterpret_cast<float *>(shared4);   /* [TILE][LD] */
    float *k_tile = q_tile + TILE * LD;                    /* [BC][LD]   */
    float *v_tile = k_tile + BC * LD;                      /* [BC][LD]   */
    float *p_t = v_tile + BC * LD;                         /* [BC][LDT]  P transposed */
    float *corr_s = p_t + BC * LDT;                        /* [TILE] */
    float *l_s = corr_s + TILE;                            /* [TILE] */
    /* the last query tiles have the most keys: launch them first (a shorter tail) */
    const int tiles = (T + TILE - 1) / TILE;
    const RankedBlock rb = ranked_block(H, tiles);   /* the latest rows (the longest blocks) first */
    const int b = rb.b, h = rb.head, g = h / (H / Hkv), t0 = (tiles - 1 - rb.rank) * TILE;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;

    load_tile<HD, TILE>(q_tile, q, b, t0, H, h, T, hd);
    float m[RI], l[RI], acc[4][A::N];
#pragma unroll
    for (int i = 0; i < RI; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int e = 0; e < A::N; e++) acc[i][e] = 0.0f;

    const int t_last = min(T - 1, t0 + TILE - 1);
    for (int j0 = first_visible_key(t0, window); j0 <= t_last; j0 += BC) {
        __syncthreads();   /* the previous tile is consumed (and the q tile is loaded) */
        load_tile<HD, BC>(k_tile, k, b, j0, Hkv, g, T, hd);
        load_tile<HD, BC>(v_tile, v, b, j0, Hkv, g, T, hd);
        __syncthreads();

        float s[RI][CI];
        tile_dot<HD, RI, CI>(s, q_tile, k_tile, ty, tx);
        const bool full = tile_all_visible(t0, TILE, j0, BC, T, window);
#pragma unroll
        for (int i = 0; i < RI; i++) {
            const int r = ty + 16 * i, t = t0 + r;
            float row_max = -INFINITY;
#pragma unroll
            for (int c = 0; c < CI; c++) {
                s[i][c] = full || visible(t, j0 + tx + 16 * c, T, window) ? scale * s[i][c] : -INFINITY;
                row_max = fmaxf(row_max, s[i][c]);
            }
            for (int off = 8; off > 0; off >>= 1)   /* over the row's half-warp */
                row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, off));
            const float m_new = fmaxf(m[i], row_max);
            /* m_new = −∞: no key of this row visible yet; P = 0 and the (zero) sums stay. */
            const float corr = m_new == -INFINITY ? 1.0f : expf(m[i] - m_new);
            float row_sum = 0.0f;
#pragma unroll
            for (int c = 0; c < CI; c++) {
                const float p = s[i][c] == -INFINITY ? 0.0f : expf(s[i][c] - m_new);
                row_sum += p;
                p_t[(tx + 16 * c) * LDT + r] = p;
            }
            for (int off = 8; off > 0; off >>= 1) row_sum += __shfl_xor_sync(0xffffffffu, row_sum, off);
            l[i] = l[i] * corr + row_sum;
            m[i] = m_new;
            if (tx == 0) corr_s[r] = corr;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float corr = corr_s[ty * 4 + i];
#pragma unroll
            for (int e = 0; e < A::N; e++) acc[i][e] *= corr;
        }
        tile_accumulate_rows<HD, BC>(acc, p_t, v_tile, ty, tx);
    }

#pragma unroll
    for (int i = 0; i < RI; i++) {
        const int r = ty + 16 * i, t = t0 + r;
        if (tx == 0) {
            l_s[r] = l[i];
            if (t < T) lse[((size_t)b * H + h) * T + t] = m[i] + logf(l[i]);
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = ty * 4 + i, t = t0 + r;
        if (t >= T) continue;
        float *out_row = out + token_row(b, t, H, h, T) * hd;
        const float inv_l = 1.0f / l_s[r];
#pragma unroll
        for (int j = 0; j < A::NJ; j++)
#pragma unroll
            for (int e = 0; e < A::VW; e++) {
                const int d = A::dim(tx, j, e);
                if (d < hd) out_row[d] = acc[i][j * A::VW + e] * inv_l;
            }
    }
}

/* dq_t += scale Σ_j dS_tj k_j: one block per (64 query rows, head, batch), shaped like the
 * forward; dS goes to shared memory transposed and meets the K tile as P met V. */
template <int HD, int BC, int MINB>
__global__ void __launch_bounds__(THREADS, MINB)
attention_backward_dq_kernel(float *dq, const float *dout, const float *q, const float *k,
                             const float *v, const float *lse, const float *Dsum, int T, int H,
                             int Hkv, int hd, int window, float scale) {
    using A = AccDims<HD>;
    constexpr int LD = HD + 4, LDT = TILE + 4, RI = TILE / 16, CI = BC / 16;
    extern __shared__ float4 shared4[];
    float *q_tile = reinterpret_cast<float *>(shared4);   /* [TILE][LD] */
    float *dout_tile = q_tile + TILE * LD;                 /* [TILE][LD] */
    float *k_tile = dout_tile + TILE * LD;                 /* [BC][LD]   */
    float *v_tile = k_tile + BC * LD;                      /* [BC][LD]   */
    float *ds_t = v_tile + BC * LD;                        /* [BC][LDT]  dS transposed */
    float *lse_s = ds_t + BC * LDT;                        /* [TILE] */
    float *D_s = lse_s + TILE;                             /* [TILE] */
    /* the last query tiles have the most keys: launch them first (a shorter tail) */
    const int tiles = (T + TILE - 1) / TILE;
    const RankedBlock rb = ranked_block(H, tiles);   /* the latest rows (the longest blocks) first */
    const int b = rb.b, h = rb.head, g = h / (H / Hkv), t0 = (tiles - 1 - rb.rank) * TILE;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;

    load_tile<HD, TILE>(q_tile, q, b, t0, H, h, T, hd);
    load_tile<HD, TILE>(dout_tile, dout, b, t0, H, h, T, hd);
    for (int r = threadIdx.x; r < TILE; r += THREADS) {
        const int t = t0 + r;
        lse_s[r] = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f;
        D_s[r] = t < T ? Dsum[((size_t)b * H + h) * T + t] : 0.0f;
    }
    float acc[4][A::N];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int e = 0; e < A::N; e++) acc[i][e] = 0.0f;

    const int t_last = min(T - 1, t0 + TILE - 1);
    for (int j0 = first_visible_key(t0, window); j0 <= t_last; j0 += BC) {
        __syncthreads();
        load_tile<HD, BC>(k_tile, k, b, j0, Hkv, g, T, hd);
        load_tile<HD, BC>(v_tile, v, b, j0, Hkv, g, T, hd);
        __syncthreads();

        float s[RI][CI], dp[RI][CI];
        tile_dot<HD, RI, CI>(s, q_tile, k_tile, ty, tx);
        tile_dot<HD, RI, CI>(dp, dout_tile, v_tile, ty, tx);
        const bool full = tile_all_visible(t0, TILE, j0, BC, T, window);
#pragma unroll
        for (int i = 0; i < RI; i++) {
            const int r = ty + 16 * i, t = t0 + r;
#pragma unroll
            for (int c = 0; c < CI; c++) {
                const int kc = tx + 16 * c;
                const float p = full || visible(t, j0 + kc, T, window) ? expf(scale * s[i][c] - lse_s[r]) : 0.0f;
                ds_t[kc * LDT + r] = p * (dp[i][c] - D_s[r]);
            }
        }
        __syncthreads();
        tile_accumulate_rows<HD, BC>(acc, ds_t, k_tile, ty, tx);
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int t = t0 + ty * 4 + i;
        if (t >= T) continue;
        float *dq_row = dq + token_row(b, t, H, h, T) * hd;
#pragma unroll
        for (int j = 0; j < A::NJ; j++)
#pragma unroll
            for (int e = 0; e < A::VW; e++) {
                const int d = A::dim(tx, j, e);
                if (d < hd) dq_row[d] += scale * acc[i][j * A::VW + e];
            }
    }
}

/* dk_j += scale Σ_t dS_tj q_t and dv_j += Σ_t P_tj dout_t: one block per (64 keys, kv head,
 * batch), looping over the group's query heads and the query tiles (BR rows) that see the
 * keys. Scores as in dq (rows ty+16i, keys tx+16c); P and dS go to shared memory row-major,
 * then thread (ty, tx) owns keys ty·4..ty·4+3 (one float4 of a P row) and its AccDims dims. */
template <int HD, int BR, int MINB>
__global__ void __launch_bounds__(THREADS, MINB)
attention_backward_dkdv_kernel(float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *lse, const float *Dsum,
                               int T, int H, int Hkv, int hd, int window, float scale) {
    using A = AccDims<HD>;
    constexpr int LD = HD + 4, LDP = TILE + 4, RI = BR / 16, CI = TILE / 16;
    extern __shared__ float4 shared4[];
    float *k_tile = reinterpret_cast<float *>(shared4);   /* [TILE][LD] */
    float *v_tile = k_tile + TILE * LD;                    /* [TILE][LD] */
    float *q_tile = v_tile + TILE * LD;                    /* [BR][LD]   */
    float *dout_tile = q_tile + BR * LD;                   /* [BR][LD]   */
    float *p_tile = dout_tile + BR * LD;                   /* [BR][LDP]  */
    float *ds_tile = p_tile + BR * LDP;                    /* [BR][LDP]  */
    float *lse_s = ds_tile + BR * LDP;                     /* [BR] */
    float *D_s = lse_s + BR;                               /* [BR] */
    const RankedBlock rb = ranked_block(Hkv, (T + TILE - 1) / TILE);   /* the first keys (the longest blocks) first */
    const int b = rb.b, g = rb.head, j0 = rb.rank * TILE, group = H / Hkv;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;

    load_tile<HD, TILE>(k_tile, k, b, j0, Hkv, g, T, hd);
    load_tile<HD, TILE>(v_tile, v, b, j0, Hkv, g, T, hd);
    float dk_acc[4][A::N], dv_acc[4][A::N];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int e = 0; e < A::N; e++) dk_acc[i][e] = dv_acc[i][e] = 0.0f;

    /* the last query row that sees any of the keys j0..j0+TILE−1; query tiles start at j0
     * (a multiple of TILE, so of BR): rows before it see none of the keys. */
    const int j_last = min(T - 1, j0 + TILE - 1);
    const int t_end = window > 0 ? min(T - 1, j_last + window - 1) : T - 1;
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int t0 = j0; t0 <= t_end; t0 += BR) {
            __syncthreads();   /* the previous query tile is consumed (K, V are loaded) */
            load_tile<HD, BR>(q_tile, q, b, t0, H, h, T, hd);
            load_tile<HD, BR>(dout_tile, dout, b, t0, H, h, T, hd);
            for (int r = threadIdx.x; r < BR; r += THREADS) {
                const int t = t0 + r;
                lse_s[r] = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f;
                D_s[r] = t < T ? Dsum[((size_t)b * H + h) * T + t] : 0.0f;
            }
            __syncthreads();

            float s[RI][CI], dp[RI][CI];
            tile_dot<HD, RI, CI>(s, q_tile, k_tile, ty, tx);
            tile_dot<HD, RI, CI>(dp, dout_tile, v_tile, ty, tx);
            const bool full = tile_all_visible(t0, BR, j0, TILE, T, window);
#pragma unroll
            for (int i = 0; i < RI; i++) {
                const int r = ty + 16 * i, t = t0 + r;
#pragma unroll
                for (int c = 0; c < CI; c++) {
                    const int kc = tx + 16 * c;
                    const float p = full || visible(t, j0 + kc, T, window) ? expf(scale * s[i][c] - lse_s[r]) : 0.0f;
                    p_tile[r * LDP + kc] = p;
                    ds_tile[r * LDP + kc] = p * (dp[i][c] - D_s[r]);
                }
            }
            __syncthreads();
            /* dV[key][·] += Σ_r P[r][key] dO[r][·], dK[key][·] += Σ_r dS[r][key] Q[r][·] */
#pragma unroll 8
            for (int r = 0; r < BR; r++) {
                float p[4], ds[4];
                load_vec<4>(p, p_tile + r * LDP + ty * 4);
                load_vec<4>(ds, ds_tile + r * LDP + ty * 4);
#pragma unroll
                for (int j = 0; j < A::NJ; j++) {
                    float o[A::VW], x[A::VW];
                    load_vec<A::VW>(o, dout_tile + r * LD + A::dim(tx, j, 0));
                    load_vec<A::VW>(x, q_tile + r * LD + A::dim(tx, j, 0));
#pragma unroll
                    for (int i = 0; i < 4; i++)
#pragma unroll
                        for (int e = 0; e < A::VW; e++) {
                            dv_acc[i][j * A::VW + e] += p[i] * o[e];
                            dk_acc[i][j * A::VW + e] += ds[i] * x[e];
                        }
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int key = j0 + ty * 4 + i;
        if (key >= T) continue;
        const size_t row = token_row(b, key, Hkv, g, T) * hd;
#pragma unroll
        for (int j = 0; j < A::NJ; j++)
#pragma unroll
            for (int e = 0; e < A::VW; e++) {
                const int d = A::dim(tx, j, e);
                if (d < hd) {
                    if (dk) dk[row + d] += scale * dk_acc[i][j * A::VW + e];
                    if (dv) dv[row + d] += dv_acc[i][j * A::VW + e];
                }
            }
    }
}

/* Where the tile products go: the CUDA cores here (fp32), or the TF32 or bf16 tensor cores
 * (attention_tc.cu); process-wide, like cuBLAS's precision in matmul.cu. */
static Precision attention_precision = PRECISION_FP32;

extern "C" int attention_set_precision_cuda(const char *name) { return precision_parse(name, &attention_precision); }

static void attention_check_shape(int H, int Hkv, int hd) {
    if (Hkv <= 0 || H % Hkv != 0 || hd <= 0 || hd > MAX_HD) {
        fprintf(stderr, "%s:%d: attention_cuda: H=%d, Hkv=%d, hd=%d unsupported (need H %% Hkv == 0, "
                "0 < hd <= %d)\n", __FILE__, __LINE__, H, Hkv, hd, MAX_HD);
        abort();
    }
}

/* Dynamic shared memory above 48 KiB must be allowed per kernel first. */
static void allow_shared_memory(const void *kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

/* Shape buckets: hd ≤ 32 → HD 32, ≤ 64 → 64, else 128 (dims past hd are zero-padded).
 * HD 128 halves the streamed tile (BC for forward/dq, BR for dk/dv) to stay within shared
 * memory; the 64 and 32 buckets aim at 2 blocks (16 warps) per SM. */
template <int HD, int BC, int MINB>
static void launch_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                           int B, int T, int H, int Hkv, int hd, int window, cudaStream_t stream) {
    const size_t bytes = sizeof(float) * (TILE * (HD + 4) + 2 * BC * (HD + 4) + BC * (TILE + 4) + 2 * TILE);
    const void *kernel = (const void *)attention_forward_kernel<HD, BC, MINB>;
    allow_shared_memory(kernel, bytes);
    const dim3 grid((unsigned)((T + TILE - 1) / TILE * H * B));   /* ranked_block's order */
    attention_forward_kernel<HD, BC, MINB><<<grid, THREADS, bytes, stream>>>(
        out, lse, q, k, v, T, H, Hkv, hd, window, 1.0f / sqrtf((float)hd));
    CUDA_CHECK_LAUNCH();
}

template <int HD, int BC, int BR, int MINB>
static void launch_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, const float *lse, const float *Dsum,
                            int B, int T, int H, int Hkv, int hd, int window, float scale,
                            cudaStream_t stream) {
    if (dq) {
        const size_t bytes = sizeof(float) * (2 * TILE * (HD + 4) + 2 * BC * (HD + 4) + BC * (TILE + 4) + 2 * TILE);
        const void *kernel = (const void *)attention_backward_dq_kernel<HD, BC, MINB>;
        allow_shared_memory(kernel, bytes);
        const dim3 grid((unsigned)((T + TILE - 1) / TILE * H * B));   /* ranked_block's order */
        attention_backward_dq_kernel<HD, BC, MINB><<<grid, THREADS, bytes, stream>>>(
            dq, dout, q, k, v, lse, Dsum, T, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
    if (dk || dv) {
        const size_t bytes = sizeof(float) * (2 * TILE * (HD + 4) + 2 * BR * (HD + 4) + 2 * BR * (TILE + 4) + 2 * BR);
        const void *kernel = (const void *)attention_backward_dkdv_kernel<HD, BR, MINB>;
        allow_shared_memory(kernel, bytes);
        const dim3 grid((unsigned)((T + TILE - 1) / TILE * Hkv * B));   /* ranked_block's order */
        attention_backward_dkdv_kernel<HD, BR, MINB><<<grid, THREADS, bytes, stream>>>(
            dk, dv, dout, q, k, v, lse, Dsum, T, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
}

extern "C" void attention_forward_cuda(float *out, float *lse, const float *q, const float *k,
                                       const float *v, int B, int T, int H, int Hkv, int hd,
                                       int window, cudaStream_t stream) {
    attention_check_shape(H, Hkv, hd);
    if (B <= 0 || T <= 0) return;
    if (attention_precision != PRECISION_FP32)
        attention_forward_tc(out, lse, q, k, v, B, T, H, Hkv, hd, window, attention_precision == PRECISION_BF16,
                             stream);
    else if (hd <= 32) launch_forward<32, 64, 2>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
    else if (hd <= 64) launch_forward<64, 64, 2>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
    else launch_forward<128, 32, 2>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
}

/* D = rowsum(dout ⊙ out), [B,H,T], lives in a file-static device buffer that only grows.
 * Not thread-safe: two host threads running attention backward at once would share it (the
 * stream order makes back-to-back calls on one stream safe, and cudaFree before a regrow
 * synchronises the device, so no queued kernel still reads the old buffer). */
static void *d_rowdot = NULL;
static size_t d_rowdot_bytes = 0;

static float *rowdot_buffer(size_t n) {
    return (float *)grow_device_buffer(&d_rowdot, &d_rowdot_bytes, n * sizeof(float));
}

extern "C" void attention_backward_cuda(float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v,
                                        const float *out, const float *lse, int B, int T, int H,
                                        int Hkv, int hd, int window, cudaStream_t stream) {
    attention_check_shape(H, Hkv, hd);
    if (B <= 0 || T <= 0 || (!dq && !dk && !dv)) return;
    const float scale = 1.0f / sqrtf((float)hd);
    if (attention_precision != PRECISION_FP32) {   /* it forms D as it stages dout */
        attention_backward_tc(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, Hkv, hd, window, scale,
                              attention_precision == PRECISION_BF16, stream);
        return;
    }
    const size_t rows = (size_t)B * T * H;
    float *Dsum = rowdot_buffer(rows);
    const unsigned row_blocks = (unsigned)((rows + THREADS / 32 - 1) / (THREADS / 32));
    attention_row_dot_kernel<<<row_blocks, THREADS, 0, stream>>>(Dsum, dout, out, B, T, H, hd);
    CUDA_CHECK_LAUNCH();
    if (hd <= 32)
        launch_backward<32, 64, 64, 2>(dq, dk, dv, dout, q, k, v, lse, Dsum, B, T, H, Hkv, hd, window, scale, stream);
    else if (hd <= 64)
        launch_backward<64, 64, 64, 2>(dq, dk, dv, dout, q, k, v, lse, Dsum, B, T, H, Hkv, hd, window, scale, stream);
    else
        launch_backward<128, 32, 32, 1>(dq, dk, dv, dout, q, k, v, lse, Dsum, B, T, H, Hkv, hd, window, scale, stream);
}
