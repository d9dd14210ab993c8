/* attention_tc.cu — the causal grouped-query attention of attention.cu (same math, same
 * layouts, same contract: out and lse written, dq dk dv accumulated, no T×T matrix, no
 * atomics), with every tile product on the tensor cores: in TF32 when
 * train.matmul_precision is tf32, in bf16 when it is bf16 (attention_set_precision_cuda);
 * fp32 keeps the float32 CUDA-core kernels of attention.cu.
 *
 * The instructions are mma.sync m16n8k8 TF32 and m16n8k16 bf16 (float32 accumulate). Their
 * fragments, per lane (g = lane / 4, t = lane % 4; rows × columns), TF32:
 *   A 16×8:  a0 (g, t)   a1 (g+8, t)   a2 (g, t+4)   a3 (g+8, t+4)
 *   B 8×8:   b0 (t, g)   b1 (t+4, g)                     (k × n)
 *   C 16×8:  c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
 * bf16 (each register two elements): A 16×16 a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..)
 * a3 (g+8, 2t+8..); B 16×8 b0 (2t..2t+1, g) b1 (2t+8.., g); C as TF32's.
 * Every kernel is 4 warps; each warp owns 16 rows of the block's 64 (query rows in forward
 * and dq, keys in dk/dv), so a row's softmax statistics stay in the 4 lanes of a quad.
 * Two products make every step (a tile policy, Tf32Tiles or Bf16Tiles, says how each reads
 * its shared tiles; the kernels are written once over it):
 *  - rows · rowsᵀ (S = Q·Kᵀ, dP = dO·Vᵀ, and transposed in dk/dv): A and B fragments both
 *    read rows of shared tiles, row-major and padded so that the loads are conflict-free.
 *  - scores · rows (O += P·V, dq += dS·K, dv += Pᵀ·dO, dk += dSᵀ·Q): the scores never leave
 *    registers; the C fragment is fed back as the A operand (see each policy), and the B
 *    operand reads the rows of the shared tile whose index the product sums over.
 * Operands are rounded once: Q, K, V, dO as they are staged into shared memory (TF32 kept
 * as float, bf16 stored as bf16), P and dS as they are fed. Accumulation, softmax, lse and
 * D stay float32; the results differ from the float32 kernels by the operands' rounding
 * (observed ~1e-3 of the largest value for TF32, ~1e-2 for bf16; tested).
 * The softmax works in base 2 (scores times log2 e, one ex2 per probability).
 * dk/dv: one block per (64 keys, kv head, batch) looping over the group's query heads and
 * the query tiles that see its keys, as in attention.cu; the scores are computed transposed
 * (keys as rows), so dk and dv accumulate in registers with no transpose.
 * Measured on an H100 at B8 T2048 H12 Hkv4 hd64, causal (bench --ops): forward / backward
 * TF32 0.68 / 2.34 ms, bf16 0.50 / 1.79 ms, against 2.49 / 7.31 ms for the float32
 * kernels. Tried and dropped (slower, docs/performance.md): for TF32, fragments through
 * ldmatrix, and the score·rows operand staged transposed so that it could use ldmatrix. */
#include "attention_common.cuh"
#include "cuda_check.h"
#include "ops_cuda.h"

#include <stdint.h>

#include <cuda_bf16.h>

#define TC_THREADS 128   /* 4 warps */
#define LOG2E 1.4426950408889634f   /* scores and lse go to base 2 with it; ln 2 brings lse back */
#define LN2 0.6931471805599453f
#define TC_ROWS 64       /* rows a block owns: 16 per warp */

__device__ __forceinline__ float to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
}

/* d += a·b on the tensor cores (one m16n8k8 TF32 product, float32 accumulate). */
__device__ __forceinline__ void mma_tf32(float (&d)[4], const float (&a)[4], float b0, float b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
                   "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b0)), "r"(__float_as_uint(b1)));
}

/* d += a·b, one m16n8k16 bf16 product (float32 accumulate); each register two bf16, the
 * lower index in the low half. */
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Four 8×8 bf16 blocks of shared memory in one instruction: lane L names row L % 8 of
 * block L / 8 (16 bytes, 16-byte aligned); r[m] receives, in lane (g, t), elements 2t and
 * 2t+1 of block m's row g (the A/B fragment layout), or with TRANS elements (2t, g) and
 * (2t+1, g): block m transposed. */
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16 *p) {
    const uint32_t at = (uint32_t)__cvta_generic_to_shared(p);
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* The kernels below are written once over a tile policy: how a shared tile holds its
 * values and how the two products read it.
 *   Elem, PAD  the element type of the shared tiles, whose rows are HD+PAD elements apart.
 *   store4(at, v), store1(at, v)  four consecutive floats, or one, converted to Elem.
 *   rows_dot_rows<HD, NT>(s, A, row0, Bt, lane)  s[n] = A[row0.. +16] · Bt[8n.. +8]ᵀ over
 *       HD dims: the warp's 16×(8·NT) block of rows·rowsᵀ (S = Q·Kᵀ, dP = dO·Vᵀ, ...).
 *   scores_times_rows<HD, KT>(acc, w, X, lane)  acc += W · X over the 8·KT columns of W,
 *       a C-layout score block in registers (w[kk] covers columns 8kk..8kk+7, float32,
 *       not yet rounded), X[8·KT][HD+PAD] a shared tile (O += P·V, dq += dS·K, ...).
 * Tf32Tiles: float tiles rounded to TF32, m16n8k8. Bf16Tiles: bfloat16 tiles, m16n8k16. */
struct Tf32Tiles {
    using Elem = float;
    static constexpr int PAD = 4;   /* rows HD+4 floats apart: fragment loads hit 32 banks */

    /* the staged values: four consecutive dims, or one, rounded to TF32 */
    static __device__ __forceinline__ void store4(float *at, float4 v) {
        *reinterpret_cast<float4 *>(at) = make_float4(to_tf32(v.x), to_tf32(v.y), to_tf32(v.z), to_tf32(v.w));
    }
    static __device__ __forceinline__ void store1(float *at, float v) { *at = to_tf32(v); }

    /* fragments as 4-byte loads: A (g, t), (g+8, t), (g, t+4), (g+8, t+4); B (n g; k t, t+4) */
    template <int HD, int NT>
    static __device__ __forceinline__ void rows_dot_rows(float (&s)[NT][4], const float *A, int row0,
                                                         const float *Bt, int lane) {
        constexpr int LD = HD + PAD;
        const int g = lane / 4, t = lane % 4;
#pragma unroll
        for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        const float *a_lo = A + (row0 + g) * LD + t, *a_hi = a_lo + 8 * LD;
#pragma unroll
        for (int kk = 0; kk < HD / 8; kk++) {
            const float a[4] = {a_lo[8 * kk], a_hi[8 * kk], a_lo[8 * kk + 4], a_hi[8 * kk + 4]};
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const float *bt = Bt + (8 * n + g) * LD + 8 * kk + t;
                mma_tf32(s[n], a, bt[0], bt[4]);
            }
        }
    }

    /* A C fragment holds columns 2t, 2t+1 where an A fragment wants t, t+4: column 2t of
     * each 8 is fed as k-index t and 2t+1 as t+4 (a relabelling of the sum), so the B
     * fragment is rows 2t and 2t+1 of X: 4-byte loads, conflict-free with the padding. */
    template <int HD, int KT>
    static __device__ __forceinline__ void scores_times_rows(float (&acc)[HD / 8][4], const float (&w)[KT][4],
                                                             const float *X, int lane) {
        constexpr int LD = HD + PAD;
        const int g = lane / 4, t = lane % 4;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
            const float a[4] = {to_tf32(w[kk][0]), to_tf32(w[kk][2]), to_tf32(w[kk][1]), to_tf32(w[kk][3])};
            const float *x = X + (8 * kk + 2 * t) * LD + g;
#pragma unroll
            for (int n = 0; n < HD / 8; n++) mma_tf32(acc[n], a, x[8 * n], x[LD + 8 * n]);
        }
    }
};

struct Bf16Tiles {
    using Elem = __nv_bfloat16;
    static constexpr int PAD = 8;   /* rows 16 bytes past a multiple of 128: ldmatrix's 8 rows hit 8 bank groups */

    static __device__ __forceinline__ void store4(__nv_bfloat16 *at, float4 v) {
        *reinterpret_cast<uint2 *>(at) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
    }
    static __device__ __forceinline__ void store1(__nv_bfloat16 *at, float v) { *at = __float2bfloat16_rn(v); }

    /* every fragment an ldmatrix: A blocks rows 0-7 | 8-15 | 0-7 | 8-15 at dims +0 | +0 | +8
     * | +8 (a0..a3); B blocks one n-tile's 8 rows at dims +0 | +8 | +16 | +24 (b0 b1 of two
     * k-steps) */
    template <int HD, int NT>
    static __device__ __forceinline__ void rows_dot_rows(float (&s)[NT][4], const __nv_bfloat16 *A, int row0,
                                                         const __nv_bfloat16 *Bt, int lane) {
        constexpr int LD = HD + PAD;
#pragma unroll
        for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        const __nv_bfloat16 *a_at = A + (row0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LD + 8 * (lane >> 4);
        const __nv_bfloat16 *b_at = Bt + (lane & 7) * LD + 8 * (lane >> 3);
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks += 2) {
            uint32_t a0[4], a1[4];
            ldmatrix_x4<false>(a0, a_at + 16 * ks);
            ldmatrix_x4<false>(a1, a_at + 16 * ks + 16);
#pragma unroll
            for (int n = 0; n < NT; n++) {
                uint32_t bb[4];
                ldmatrix_x4<false>(bb, b_at + 8 * n * LD + 16 * ks);
                mma_bf16(s[n], a0, bb[0], bb[1]);
                mma_bf16(s[n], a1, bb[2], bb[3]);
            }
        }
    }

    /* Two C-layout n-tiles (columns 16kk..16kk+15) are, packed in pairs, exactly the A
     * fragment of one k16 step; X's B fragments come transposed (ldmatrix .trans): blocks
     * keys 0-7 | 8-15 | 0-7 | 8-15 at dims +0 | +0 | +8 | +8 (b0 b1 of two dim n-tiles). */
    template <int HD, int KT>
    static __device__ __forceinline__ void scores_times_rows(float (&acc)[HD / 8][4], const float (&w)[KT][4],
                                                             const __nv_bfloat16 *X, int lane) {
        constexpr int LD = HD + PAD;
        const __nv_bfloat16 *x_at = X + ((lane & 7) + 8 * ((lane >> 3) & 1)) * LD + 8 * (lane >> 4);
#pragma unroll
        for (int kk = 0; kk < KT / 2; kk++) {
            const uint32_t a[4] = {pack_bf16(w[2 * kk][0], w[2 * kk][1]), pack_bf16(w[2 * kk][2], w[2 * kk][3]),
                                   pack_bf16(w[2 * kk + 1][0], w[2 * kk + 1][1]),
                                   pack_bf16(w[2 * kk + 1][2], w[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < HD / 8; n += 2) {
                uint32_t bb[4];
                ldmatrix_x4<true>(bb, x_at + 16 * kk * LD + 8 * n);
                mma_bf16(acc[n], a, bb[0], bb[1]);
                mma_bf16(acc[n + 1], a, bb[2], bb[3]);
            }
        }
    }
};

/* Rows first..first+ROWS−1 of head `head` of x[B,T,heads,hd] into tile[ROWS][HD+PAD] in the
 * policy's element type; rows at or past T and dims at or past hd are zero, so padded
 * products are exact. float4 loads when hd is a multiple of 4 (every row then starts
 * 16-byte aligned); a warp reads whole rows, and its stores fall in distinct banks. */
template <class P, int HD, int ROWS>
__device__ __forceinline__ void load_tile(typename P::Elem *tile, const float *x, int b, int first, int heads,
                                          int head, int T, int hd) {
    constexpr int LD = HD + P::PAD;
    if (hd % 4 == 0) {
        for (int idx = threadIdx.x; idx < ROWS * HD / 4; idx += TC_THREADS) {
            const int r = idx / (HD / 4), d = 4 * (idx % (HD / 4)), t = first + r;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (t < T && d < hd) v = *reinterpret_cast<const float4 *>(x + token_row(b, t, heads, head, T) * hd + d);
            P::store4(tile + r * LD + d, v);
        }
    } else {
        for (int idx = threadIdx.x; idx < ROWS * HD; idx += TC_THREADS) {
            const int r = idx / HD, d = idx % HD, t = first + r;
            P::store1(tile + r * LD + d, t < T && d < hd ? x[token_row(b, t, heads, head, T) * hd + d] : 0.0f);
        }
    }
}

/* Forward: one block per (64 query rows, head, batch); warp w owns rows 16w..16w+15 and
 * streams key/value tiles of BC. Online softmax per row in base 2 (scores pre-multiplied by
 * log2 e, so each probability is one ex2), the row's 4 lanes combining with two
 * xor-shuffles; the output accumulator shares the score layout's rows, so its rescale needs
 * no exchange. */
template <class P, int HD, int BC, int MINB>
__global__ void __launch_bounds__(TC_THREADS, MINB)
attention_forward_tc_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                            int T, int H, int Hkv, int hd, int window, float scale) {
    using E = typename P::Elem;
    constexpr int LD = HD + P::PAD, NT = BC / 8, ND = HD / 8;
    extern __shared__ float4 shared4[];
    E *q_rows = reinterpret_cast<E *>(shared4);   /* [TC_ROWS][LD] */
    E *k_rows = q_rows + TC_ROWS * LD;                 /* [BC][LD] */
    E *v_rows = k_rows + BC * LD;                      /* [BC][LD] */
    const int b = blockIdx.z, h = blockIdx.y, grp = h / (H / Hkv);
    const int t0 = (gridDim.x - 1 - blockIdx.x) * TC_ROWS;   /* longest rows first */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int row0 = 16 * warp, tq[2] = {t0 + row0 + g, t0 + row0 + g + 8};
    const float scale_log2 = scale * LOG2E;

    load_tile<P, HD, TC_ROWS>(q_rows, q, b, t0, H, h, T, hd);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    const int t_last = min(T - 1, t0 + TC_ROWS - 1);
    for (int j0 = first_visible_key(t0, window); j0 <= t_last; j0 += BC) {
        __syncthreads();   /* the previous tiles are consumed (and the q tile is staged) */
        load_tile<P, HD, BC>(k_rows, k, b, j0, Hkv, grp, T, hd);
        load_tile<P, HD, BC>(v_rows, v, b, j0, Hkv, grp, T, hd);
        __syncthreads();

        float s[NT][4];
        P::template rows_dot_rows<HD, NT>(s, q_rows, row0, k_rows, lane);
        const bool full = tile_all_visible(t0, TC_ROWS, j0, BC, T, window);
#pragma unroll
        for (int half = 0; half < 2; half++) {   /* rows g (c0, c1) and g+8 (c2, c3) */
            float row_max = -INFINITY;
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &x = s[n][2 * half + e];
                    x = full || visible(tq[half], j0 + 8 * n + 2 * t + e, T, window) ? scale_log2 * x : -INFINITY;
                    row_max = fmaxf(row_max, x);
                }
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
            const float m_new = fmaxf(m[half], row_max);
            /* m_new = −∞: no key of this row visible yet; then every x is −∞ and 2^(x − 0) = 0
             * keeps the (zero) sums, where x − m_new would be NaN. */
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;
            const float corr = exp2f(m[half] - m_use);
            float row_sum = 0.0f;
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &x = s[n][2 * half + e];
                    x = exp2f(x - m_use);
                    row_sum += x;
                }
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
            l[half] = l[half] * corr + row_sum;
            m[half] = m_new;
#pragma unroll
            for (int n = 0; n < ND; n++) { acc[n][2 * half] *= corr; acc[n][2 * half + 1] *= corr; }
        }
        P::template scores_times_rows<HD, NT>(acc, s, v_rows, lane);
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int tr = tq[half];
        if (tr >= T) continue;
        if (t == 0) lse[((size_t)b * H + h) * T + tr] = (m[half] + log2f(l[half])) * LN2;
        float *out_row = out + token_row(b, tr, H, h, T) * hd;
        const float inv_l = 1.0f / l[half];
#pragma unroll
        for (int n = 0; n < ND; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = 8 * n + 2 * t + e;
                if (d < hd) out_row[d] = acc[n][2 * half + e] * inv_l;
            }
    }
}

/* dq_t += scale Σ_j dS_tj k_j: shaped like the forward (warp w owns query rows 16w..),
 * with dP = dO·Vᵀ beside S, and dS meeting the K tile as P met V. */
template <class P, int HD, int BC, int MINB>
__global__ void __launch_bounds__(TC_THREADS, MINB)
attention_backward_dq_tc_kernel(float *dq, const float *dout, const float *q, const float *k,
                                const float *v, const float *lse, const float *Dsum, int T, int H,
                                int Hkv, int hd, int window, float scale) {
    using E = typename P::Elem;
    constexpr int LD = HD + P::PAD, NT = BC / 8, ND = HD / 8;
    extern __shared__ float4 shared4[];
    E *q_rows = reinterpret_cast<E *>(shared4);   /* [TC_ROWS][LD] */
    E *dout_rows = q_rows + TC_ROWS * LD;              /* [TC_ROWS][LD] */
    E *k_rows = dout_rows + TC_ROWS * LD;              /* [BC][LD] */
    E *v_rows = k_rows + BC * LD;                      /* [BC][LD] */
    const int b = blockIdx.z, h = blockIdx.y, grp = h / (H / Hkv);
    const int t0 = (gridDim.x - 1 - blockIdx.x) * TC_ROWS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int row0 = 16 * warp, tq[2] = {t0 + row0 + g, t0 + row0 + g + 8};
    const float scale_log2 = scale * LOG2E;

    load_tile<P, HD, TC_ROWS>(q_rows, q, b, t0, H, h, T, hd);
    load_tile<P, HD, TC_ROWS>(dout_rows, dout, b, t0, H, h, T, hd);
    float lse_r[2], D_r[2];   /* lse in base 2 */
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const bool in = tq[half] < T;
        lse_r[half] = in ? lse[((size_t)b * H + h) * T + tq[half]] * LOG2E : 0.0f;
        D_r[half] = in ? Dsum[((size_t)b * H + h) * T + tq[half]] : 0.0f;
    }
    float acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    const int t_last = min(T - 1, t0 + TC_ROWS - 1);
    for (int j0 = first_visible_key(t0, window); j0 <= t_last; j0 += BC) {
        __syncthreads();
        load_tile<P, HD, BC>(k_rows, k, b, j0, Hkv, grp, T, hd);
        load_tile<P, HD, BC>(v_rows, v, b, j0, Hkv, grp, T, hd);
        __syncthreads();

        float s[NT][4], dp[NT][4];
        P::template rows_dot_rows<HD, NT>(s, q_rows, row0, k_rows, lane);
        P::template rows_dot_rows<HD, NT>(dp, dout_rows, row0, v_rows, lane);
        const bool full = tile_all_visible(t0, TC_ROWS, j0, BC, T, window);
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int half = c / 2, j = j0 + 8 * n + 2 * t + c % 2;
                const float p = full || visible(tq[half], j, T, window) ? exp2f(scale_log2 * s[n][c] - lse_r[half]) : 0.0f;
                s[n][c] = p * (dp[n][c] - D_r[half]);   /* dS, in place of S */
            }
        P::template scores_times_rows<HD, NT>(acc, s, k_rows, lane);
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        if (tq[half] >= T) continue;
        float *dq_row = dq + token_row(b, tq[half], H, h, T) * hd;
#pragma unroll
        for (int n = 0; n < ND; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = 8 * n + 2 * t + e;
                if (d < hd) dq_row[d] += scale * acc[n][2 * half + e];
            }
    }
}

/* dk_j += scale Σ_t dS_tj q_t, dv_j += Σ_t P_tj dout_t: one block per (64 keys, kv head,
 * batch); warp w owns keys 16w..16w+15. Per query tile of BR rows the warp computes
 * Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (keys as rows, queries as columns), Pᵀ and dSᵀ in place, then
 * dv += Pᵀ·dO and dk += dSᵀ·Q. lse and D are per column here: from shared memory. */
template <class P, int HD, int BR, int MINB>
__global__ void __launch_bounds__(TC_THREADS, MINB)
attention_backward_dkdv_tc_kernel(float *dk, float *dv, const float *dout, const float *q,
                                  const float *k, const float *v, const float *lse, const float *Dsum,
                                  int T, int H, int Hkv, int hd, int window, float scale) {
    using E = typename P::Elem;
    constexpr int LD = HD + P::PAD, NT = BR / 8, ND = HD / 8;
    extern __shared__ float4 shared4[];
    E *k_rows = reinterpret_cast<E *>(shared4);   /* [TC_ROWS][LD] */
    E *v_rows = k_rows + TC_ROWS * LD;                 /* [TC_ROWS][LD] */
    E *q_rows = v_rows + TC_ROWS * LD;                 /* [BR][LD] */
    E *dout_rows = q_rows + BR * LD;                   /* [BR][LD] */
    float *lse_s = reinterpret_cast<float *>(dout_rows + BR * LD);   /* [BR], base 2 */
    float *D_s = lse_s + BR;                               /* [BR] */
    const int b = blockIdx.z, grp = blockIdx.y, j0 = blockIdx.x * TC_ROWS, group = H / Hkv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int row0 = 16 * warp, jk[2] = {j0 + row0 + g, j0 + row0 + g + 8};
    const float scale_log2 = scale * LOG2E;

    load_tile<P, HD, TC_ROWS>(k_rows, k, b, j0, Hkv, grp, T, hd);
    load_tile<P, HD, TC_ROWS>(v_rows, v, b, j0, Hkv, grp, T, hd);
    float dk_acc[ND][4], dv_acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
#pragma unroll
        for (int c = 0; c < 4; c++) dk_acc[n][c] = dv_acc[n][c] = 0.0f;

    /* the last query row that sees any of the keys j0..j0+63; query tiles start at j0 (a
     * multiple of 64, so of BR): rows before it see none of the keys. */
    const int j_last = min(T - 1, j0 + TC_ROWS - 1);
    const int t_end = window > 0 ? min(T - 1, j_last + window - 1) : T - 1;
    for (int h = grp * group; h < (grp + 1) * group; h++) {
        for (int t0 = j0; t0 <= t_end; t0 += BR) {
            __syncthreads();   /* the previous query tile is consumed (K, V are staged) */
            load_tile<P, HD, BR>(q_rows, q, b, t0, H, h, T, hd);
            load_tile<P, HD, BR>(dout_rows, dout, b, t0, H, h, T, hd);
            for (int r = threadIdx.x; r < BR; r += TC_THREADS) {
                const int tr = t0 + r;
                lse_s[r] = tr < T ? lse[((size_t)b * H + h) * T + tr] * LOG2E : 0.0f;
                D_s[r] = tr < T ? Dsum[((size_t)b * H + h) * T + tr] : 0.0f;
            }
            __syncthreads();

            float s[NT][4], dp[NT][4];
            P::template rows_dot_rows<HD, NT>(s, k_rows, row0, q_rows, lane);      /* Sᵀ  [keys × queries] */
            P::template rows_dot_rows<HD, NT>(dp, v_rows, row0, dout_rows, lane);  /* dPᵀ */
            const bool full = tile_all_visible(t0, BR, j0, TC_ROWS, T, window);
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int col = 8 * n + 2 * t + c % 2, key = jk[c / 2];
                    const float p = full || visible(t0 + col, key, T, window)
                                        ? exp2f(scale_log2 * s[n][c] - lse_s[col]) : 0.0f;
                    s[n][c] = p;                          /* Pᵀ */
                    dp[n][c] = p * (dp[n][c] - D_s[col]); /* dSᵀ */
                }
            P::template scores_times_rows<HD, NT>(dv_acc, s, dout_rows, lane);
            P::template scores_times_rows<HD, NT>(dk_acc, dp, q_rows, lane);
        }
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        if (jk[half] >= T) continue;
        const size_t row = token_row(b, jk[half], Hkv, grp, T) * hd;
#pragma unroll
        for (int n = 0; n < ND; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = 8 * n + 2 * t + e;
                if (d < hd) {
                    if (dk) dk[row + d] += scale * dk_acc[n][2 * half + e];
                    if (dv) dv[row + d] += dv_acc[n][2 * half + e];
                }
            }
    }
}

/* Shape buckets as in attention.cu: hd ≤ 32 → HD 32, ≤ 64 → 64, else 128. BC (keys streamed
 * by forward and dq) and BR (queries streamed by dk/dv) are as large as the registers allow
 * beside the HD-wide accumulators (HD 128 spills no registers with BC 32 for dq and BR 16
 * for dk/dv); MINB (blocks per SM the compiler must fit) is 4 for the HD 64 forward, which
 * measured faster capped at 128 registers, a few bytes spilled (0.69 against 0.71 ms TF32,
 * 0.49 against 0.55 ms bf16), 1 elsewhere. */
static void allow_tc_shared_memory(const void *kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <class P, int HD, int BC, int MINB>
static void launch_forward_tc(float *out, float *lse, const float *q, const float *k, const float *v,
                              int B, int T, int H, int Hkv, int hd, int window, cudaStream_t stream) {
    const size_t bytes = sizeof(typename P::Elem) * (TC_ROWS + 2 * BC) * (HD + P::PAD);
    const void *kernel = (const void *)attention_forward_tc_kernel<P, HD, BC, MINB>;
    allow_tc_shared_memory(kernel, bytes);
    const dim3 grid((T + TC_ROWS - 1) / TC_ROWS, H, B);
    attention_forward_tc_kernel<P, HD, BC, MINB><<<grid, TC_THREADS, bytes, stream>>>(
        out, lse, q, k, v, T, H, Hkv, hd, window, 1.0f / sqrtf((float)hd));
    CUDA_CHECK_LAUNCH();
}

template <class P, int HD, int BC, int MINB_DQ, int BR, int MINB_DKDV>
static void launch_backward_tc(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *lse, const float *Dsum,
                               int B, int T, int H, int Hkv, int hd, int window, float scale,
                               cudaStream_t stream) {
    if (dq) {
        const size_t bytes = sizeof(typename P::Elem) * (2 * TC_ROWS + 2 * BC) * (HD + P::PAD);
        const void *kernel = (const void *)attention_backward_dq_tc_kernel<P, HD, BC, MINB_DQ>;
        allow_tc_shared_memory(kernel, bytes);
        const dim3 grid((T + TC_ROWS - 1) / TC_ROWS, H, B);
        attention_backward_dq_tc_kernel<P, HD, BC, MINB_DQ><<<grid, TC_THREADS, bytes, stream>>>(
            dq, dout, q, k, v, lse, Dsum, T, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
    if (dk || dv) {
        const size_t bytes = sizeof(typename P::Elem) * (2 * TC_ROWS + 2 * BR) * (HD + P::PAD) + sizeof(float) * 2 * BR;
        const void *kernel = (const void *)attention_backward_dkdv_tc_kernel<P, HD, BR, MINB_DKDV>;
        allow_tc_shared_memory(kernel, bytes);
        const dim3 grid((T + TC_ROWS - 1) / TC_ROWS, Hkv, B);
        attention_backward_dkdv_tc_kernel<P, HD, BR, MINB_DKDV><<<grid, TC_THREADS, bytes, stream>>>(
            dk, dv, dout, q, k, v, lse, Dsum, T, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
}

template <class P>
static void forward_tc(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                       int H, int Hkv, int hd, int window, cudaStream_t stream) {
    if (hd <= 32) launch_forward_tc<P, 32, 64, 1>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
    else if (hd <= 64) launch_forward_tc<P, 64, 64, 4>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
    else launch_forward_tc<P, 128, 64, 1>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
}

template <class P>
static void backward_tc(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, const float *lse, const float *Dsum, int B, int T, int H, int Hkv,
                        int hd, int window, float scale, cudaStream_t stream) {
    if (hd <= 32)
        launch_backward_tc<P, 32, 64, 1, 64, 1>(dq, dk, dv, dout, q, k, v, lse, Dsum, B, T, H, Hkv, hd, window, scale, stream);
    else if (hd <= 64)
        launch_backward_tc<P, 64, 64, 1, 64, 1>(dq, dk, dv, dout, q, k, v, lse, Dsum, B, T, H, Hkv, hd, window, scale, stream);
    else
        launch_backward_tc<P, 128, 32, 1, 16, 1>(dq, dk, dv, dout, q, k, v, lse, Dsum, B, T, H, Hkv, hd, window, scale, stream);
}

void attention_forward_tc(float *out, float *lse, const float *q, const float *k, const float *v,
                          int B, int T, int H, int Hkv, int hd, int window, int bf16, cudaStream_t stream) {
    if (bf16) forward_tc<Bf16Tiles>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
    else forward_tc<Tf32Tiles>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
}

void attention_backward_tc(float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const float *lse, const float *Dsum,
                           int B, int T, int H, int Hkv, int hd, int window, float scale, int bf16,
                           cudaStream_t stream) {
    if (bf16) backward_tc<Bf16Tiles>(dq, dk, dv, dout, q, k, v, lse, Dsum, B, T, H, Hkv, hd, window, scale, stream);
    else backward_tc<Tf32Tiles>(dq, dk, dv, dout, q, k, v, lse, Dsum, B, T, H, Hkv, hd, window, scale, stream);
}
