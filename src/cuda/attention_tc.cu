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
 * Every kernel is 4 warps; each warp owns 16·MT rows of the block's 64·MT (query rows in
 * forward and dq, keys in dk/dv; MT m-tiles of 16, 1 or 2), so a row's softmax statistics
 * stay in the 4 lanes of a quad.
 * Two products make every step (a tile policy, Tf32Tiles or Bf16Tiles, says how each reads
 * its shared tiles; the kernels are written once over it):
 *  - rows · rowsᵀ (S = Q·Kᵀ, dP = dO·Vᵀ, and transposed in dk/dv): A and B fragments both
 *    read rows of shared tiles, row-major and padded so that the loads are conflict-free.
 *  - scores · rows (O += P·V, dq += dS·K, dv += Pᵀ·dO, dk += dSᵀ·Q): the scores never leave
 *    registers; the C fragment is fed back as the A operand (see each policy), and the B
 *    operand reads the rows of the shared tile whose index the product sums over.
 * Operands are rounded once: Q, K, V, dO into per-call copies (TF32 kept as float, bf16
 * stored as bf16; [B][heads][T padded to 64][HD], zero-padded) that the kernels stage tile
 * by tile with cp.async, the next tile's copies in flight while this one is computed on;
 * P and dS are rounded as they are fed. Accumulation, softmax, lse and
 * D stay float32; the results differ from the float32 kernels by the operands' rounding
 * (observed ~1e-3 of the largest value for TF32, ~1e-2 for bf16; tested).
 * The softmax works in base 2 (scores times log2 e, one ex2 per probability).
 * dk/dv: one block per (64 keys, kv head, batch) looping over the group's query heads and
 * the query tiles that see its keys, as in attention.cu; the scores are computed transposed
 * (keys as rows), so dk and dv accumulate in registers with no transpose.
 * Blocks run longest first (attention_common.cuh's ranked_block).
 * Measured on an H100 at B8 T2048 H12 Hkv4 hd64, causal (bench --ops): forward / backward
 * TF32 0.43 / 1.47 ms, bf16 0.28 / 0.91 ms (the copies included), against 2.39 / 6.71 ms
 * for the float32 kernels; before the longest-first order and the one-pass dO staging
 * (eleventh session), TF32 0.48 / 1.74, bf16 0.30 / 1.02; before the copies and cp.async,
 * TF32 0.68 / 2.34, bf16 0.50 / 1.79. Tried and dropped (slower, docs/performance.md): for
 * TF32, fragments through ldmatrix, and the score·rows operand staged transposed so that it
 * could use ldmatrix; one fused backward kernel adding dq across key blocks (in a fixed
 * order through a scratch tile, or with atomics). */
#include "attention_common.cuh"
#include "ptx.cuh"
#include "cuda_check.h"
#include "grid.cuh"
#include "ops_cuda.h"

#include <stdint.h>

#include <type_traits>

#include <cuda_bf16.h>

#define TC_THREADS 128   /* 4 warps */
#define TC_ROWS 64       /* rows a block owns with one m-tile a warp (16 rows); MT m-tiles: 64·MT */
#define TC_MAX_MT 2      /* the tallest blocks: 128 rows; the operand copies' T is padded to it */
#define TC_SM_SHARED_BYTES (228 * 1024)   /* shared memory of an sm_90 SM; each block also reserves 1 KB */

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

/* The kernels below are written once over a tile policy: how a shared tile holds its
 * values and how the two products read it. A warp's rows come in MT m-tiles of 16 (rows
 * row0 + 16·mt ..): each B fragment read from shared memory then feeds MT products, and the
 * m-tiles' chains are independent work for the warp while one waits.
 *   Elem, PAD  the element type of the operand copies and shared tiles; tile rows are HD+PAD
 *       elements apart.
 *   store4(at, v)  four consecutive floats, rounded and converted to Elem.
 *   rows_dot_rows<HD, NT>(s, A, row0, Bt, lane)  s[mt][n] = A[row0+16mt.. +16] · Bt[8n.. +8]ᵀ
 *       over HD dims: the warp's (16·MT)×(8·NT) block of rows·rowsᵀ (S = Q·Kᵀ, dP = dO·Vᵀ,
 *       ...); s may also be [NT][4], one m-tile.
 *   scores_times_rows<HD, KT>(acc, w, X, lane)  acc[mt] += W[mt] · X over the 8·KT columns
 *       of W, a C-layout score block in registers (w[mt][kk] covers columns 8kk..8kk+7,
 *       float32, not yet rounded), X[8·KT][HD+PAD] a shared tile (O += P·V, dq += dS·K, ...);
 *       acc and w may also be one m-tile's [HD/8][4] and [KT][4].
 * Tf32Tiles: float tiles rounded to TF32, m16n8k8. Bf16Tiles: bfloat16 tiles, m16n8k16. */
template <class Self, class E>
struct OneMTile {   /* the one-m-tile forms, as the MT forms with MT = 1 */
    template <int HD, int NT>
    static __device__ __forceinline__ void rows_dot_rows(float (&s)[NT][4], const E *A, int row0, const E *Bt,
                                                         int lane) {
        Self::template rows_dot_rows<HD, NT>(reinterpret_cast<float (&)[1][NT][4]>(s), A, row0, Bt, lane);
    }
    template <int HD, int KT>
    static __device__ __forceinline__ void scores_times_rows(float (&acc)[HD / 8][4], const float (&w)[KT][4],
                                                             const E *X, int lane) {
        Self::template scores_times_rows<HD, KT>(reinterpret_cast<float (&)[1][HD / 8][4]>(acc),
                                                 reinterpret_cast<const float (&)[1][KT][4]>(w), X, lane);
    }
};

struct Tf32Tiles : OneMTile<Tf32Tiles, float> {
    using Elem = float;
    static constexpr int PAD = 4;   /* rows HD+4 floats apart: fragment loads hit 32 banks */
    using OneMTile<Tf32Tiles, float>::rows_dot_rows;
    using OneMTile<Tf32Tiles, float>::scores_times_rows;

    /* four consecutive dims of an operand copy, rounded to TF32 */
    static __device__ __forceinline__ void store4(float *at, float4 v) {
        *reinterpret_cast<float4 *>(at) = make_float4(to_tf32(v.x), to_tf32(v.y), to_tf32(v.z), to_tf32(v.w));
    }

    /* fragments as 4-byte loads: A (g, t), (g+8, t), (g, t+4), (g+8, t+4); B (n g; k t, t+4) */
    template <int HD, int NT, int MT>
    static __device__ __forceinline__ void rows_dot_rows(float (&s)[MT][NT][4], const float *A, int row0,
                                                         const float *Bt, int lane) {
        constexpr int LD = HD + PAD;
        const int g = lane / 4, t = lane % 4;
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int n = 0; n < NT; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
        const float *a_lo = A + (row0 + g) * LD + t;
#pragma unroll
        for (int kk = 0; kk < HD / 8; kk++) {
            float a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const float *lo = a_lo + 16 * mt * LD + 8 * kk, *hi = lo + 8 * LD;
                a[mt][0] = lo[0], a[mt][1] = hi[0], a[mt][2] = lo[4], a[mt][3] = hi[4];
            }
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const float *bt = Bt + (8 * n + g) * LD + 8 * kk + t;
                const float b0 = bt[0], b1 = bt[4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) mma_tf32(s[mt][n], a[mt], b0, b1);
            }
        }
    }

    /* A C fragment holds columns 2t, 2t+1 where an A fragment wants t, t+4: column 2t of
     * each 8 is fed as k-index t and 2t+1 as t+4 (a relabelling of the sum), so the B
     * fragment is rows 2t and 2t+1 of X: 4-byte loads, conflict-free with the padding. */
    template <int HD, int KT, int MT>
    static __device__ __forceinline__ void scores_times_rows(float (&acc)[MT][HD / 8][4],
                                                             const float (&w)[MT][KT][4], const float *X,
                                                             int lane) {
        constexpr int LD = HD + PAD;
        const int g = lane / 4, t = lane % 4;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
            float a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                a[mt][0] = to_tf32(w[mt][kk][0]), a[mt][1] = to_tf32(w[mt][kk][2]);
                a[mt][2] = to_tf32(w[mt][kk][1]), a[mt][3] = to_tf32(w[mt][kk][3]);
            }
            const float *x = X + (8 * kk + 2 * t) * LD + g;
#pragma unroll
            for (int n = 0; n < HD / 8; n++) {
                const float x0 = x[8 * n], x1 = x[LD + 8 * n];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) mma_tf32(acc[mt][n], a[mt], x0, x1);
            }
        }
    }
};

struct Bf16Tiles : OneMTile<Bf16Tiles, __nv_bfloat16> {
    using Elem = __nv_bfloat16;
    static constexpr int PAD = 8;   /* rows 16 bytes past a multiple of 128: ldmatrix's 8 rows hit 8 bank groups */
    using OneMTile<Bf16Tiles, __nv_bfloat16>::rows_dot_rows;
    using OneMTile<Bf16Tiles, __nv_bfloat16>::scores_times_rows;

    static __device__ __forceinline__ void store4(__nv_bfloat16 *at, float4 v) {
        *reinterpret_cast<uint2 *>(at) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
    }

    /* every fragment an ldmatrix: A blocks rows 0-7 | 8-15 | 0-7 | 8-15 at dims +0 | +0 | +8
     * | +8 (a0..a3); B blocks one n-tile's 8 rows at dims +0 | +8 | +16 | +24 (b0 b1 of two
     * k-steps) */
    template <int HD, int NT, int MT>
    static __device__ __forceinline__ void rows_dot_rows(float (&s)[MT][NT][4], const __nv_bfloat16 *A,
                                                         int row0, const __nv_bfloat16 *Bt, int lane) {
        constexpr int LD = HD + PAD;
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int n = 0; n < NT; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
        const __nv_bfloat16 *a_at = A + (row0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LD + 8 * (lane >> 4);
        const __nv_bfloat16 *b_at = Bt + (lane & 7) * LD + 8 * (lane >> 3);
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks += 2) {
            uint32_t a0[MT][4], a1[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                ldmatrix_x4<false>(a0[mt], a_at + 16 * mt * LD + 16 * ks);
                ldmatrix_x4<false>(a1[mt], a_at + 16 * mt * LD + 16 * ks + 16);
            }
#pragma unroll
            for (int n = 0; n < NT; n++) {
                uint32_t bb[4];
                ldmatrix_x4<false>(bb, b_at + 8 * n * LD + 16 * ks);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16(s[mt][n], a0[mt], bb[0], bb[1]);
                    mma_bf16(s[mt][n], a1[mt], bb[2], bb[3]);
                }
            }
        }
    }

    /* Two C-layout n-tiles (columns 16kk..16kk+15) are, packed in pairs, exactly the A
     * fragment of one k16 step; X's B fragments come transposed (ldmatrix .trans): blocks
     * keys 0-7 | 8-15 | 0-7 | 8-15 at dims +0 | +0 | +8 | +8 (b0 b1 of two dim n-tiles). */
    template <int HD, int KT, int MT>
    static __device__ __forceinline__ void scores_times_rows(float (&acc)[MT][HD / 8][4],
                                                             const float (&w)[MT][KT][4],
                                                             const __nv_bfloat16 *X, int lane) {
        constexpr int LD = HD + PAD;
        const __nv_bfloat16 *x_at = X + ((lane & 7) + 8 * ((lane >> 3) & 1)) * LD + 8 * (lane >> 4);
#pragma unroll
        for (int kk = 0; kk < KT / 2; kk++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                a[mt][0] = pack_bf16(w[mt][2 * kk][0], w[mt][2 * kk][1]);
                a[mt][1] = pack_bf16(w[mt][2 * kk][2], w[mt][2 * kk][3]);
                a[mt][2] = pack_bf16(w[mt][2 * kk + 1][0], w[mt][2 * kk + 1][1]);
                a[mt][3] = pack_bf16(w[mt][2 * kk + 1][2], w[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int n = 0; n < HD / 8; n += 2) {
                uint32_t bb[4];
                ldmatrix_x4<true>(bb, x_at + 16 * kk * LD + 8 * n);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16(acc[mt][n], a[mt], bb[0], bb[1]);
                    mma_bf16(acc[mt][n + 1], a[mt], bb[2], bb[3]);
                }
            }
        }
    }
};

/* The operand copies the kernels read: x [B, T, heads, hd] (float) → [B][heads][Tp][HD] in
 * the policy's element type and rounding, Tp = T rounded up to TC_ROWS·TC_MAX_MT, rows ≥ T and dims
 * ≥ hd zero. Each (batch, head) is then Tp·HD contiguous elements and every tile the
 * kernels stage is whole: they copy it with cp.async, 16 bytes a copy, with no conversion
 * and no bounds in their loops, and a padded product is exact. Converting once per call
 * (each K/V tile is staged by every query tile that sees it) halves the bytes staged in
 * bf16, and the copies of the next tile land while the warps compute on this one. */
/* Dims d … d+3 of one head's row (zero at dims ≥ hd): one float4 load where rows start
 * 16-byte aligned (hd a multiple of 4), else four guarded loads. */
__device__ __forceinline__ float4 load_head_dims4(const float *row, int d, int hd) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float *src = row + d;
    if (hd % 4 == 0) {
        if (d < hd) v = *reinterpret_cast<const float4 *>(src);
    } else {
        v.x = d < hd ? src[0] : 0.0f;
        v.y = d + 1 < hd ? src[1] : 0.0f;
        v.z = d + 2 < hd ? src[2] : 0.0f;
        v.w = d + 3 < hd ? src[3] : 0.0f;
    }
    return v;
}

template <class P, int HD>
__global__ void stage_operand_kernel(typename P::Elem *dst, const float *x, int B, int T, int Tp, int heads,
                                     int hd) {
    const size_t n = (size_t)B * heads * Tp * (HD / 4);
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        const int d = 4 * (int)(idx % (HD / 4));
        const size_t row = idx / (HD / 4);   /* (b, head, t) of the copy */
        const int t = (int)(row % Tp);
        const size_t bh = row / Tp;
        const int head = (int)(bh % heads), b = (int)(bh / heads);
        const float4 v = t < T ? load_head_dims4(x + token_row(b, t, heads, head, T) * hd, d, hd)
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        P::store4(dst + row * HD + d, v);
    }
}

/* dO's operand copy as stage_operand_kernel makes it, and beside it, per row of the copy
 * ([B·H][Tp], zero past T), the row statistics the backward kernels stage per query tile:
 * lse in base 2 and D = dout_t·out_t (float32, before dO is rounded). One pass instead of
 * three (dO's copy, a row-dot kernel reading dout again, and the statistics' copy). A row's
 * HD/4 threads are consecutive lanes of one warp (HD/4 divides 32, and the grid stride is a
 * multiple of 32), so D is a shuffle sum among them; every lane runs each loop turn, past
 * the end too, because the shuffles need the whole warp. */
template <class P, int HD>
__global__ void stage_dout_kernel(typename P::Elem *dst, float *lse2, float *D, const float *dout,
                                  const float *out, const float *lse, int B, int T, int Tp, int H, int hd) {
    constexpr int LANES = HD / 4;
    const size_t n = (size_t)B * H * Tp * LANES, n_warps = (n + 31) / 32 * 32;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n_warps;
         idx += (size_t)gridDim.x * blockDim.x) {
        const bool live = idx < n;
        const int d = 4 * (int)(idx % LANES);
        const size_t row = idx / LANES;   /* (b, head, t) of the copy */
        const int t = (int)(row % Tp);
        const size_t bh = row / Tp;
        const int head = (int)(bh % H), b = (int)(bh / H);
        float4 g = make_float4(0.0f, 0.0f, 0.0f, 0.0f), o = g;
        if (live && t < T) {
            const size_t at = token_row(b, t, H, head, T) * hd;
            g = load_head_dims4(dout + at, d, hd);
            o = load_head_dims4(out + at, d, hd);
        }
        float dot = g.x * o.x + g.y * o.y + g.z * o.z + g.w * o.w;
#pragma unroll
        for (int lanes = LANES / 2; lanes > 0; lanes /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, lanes);
        if (!live) continue;
        P::store4(dst + row * HD + d, g);
        if (d == 0) {
            lse2[row] = t < T ? lse[bh * T + t] * ATTN_LOG2E : 0.0f;
            D[row] = t < T ? dot : 0.0f;
        }
    }
}

/* ROWS whole rows of an operand copy (contiguous from src) into tile[ROWS][HD+PAD], as
 * cp.async copies of 16 bytes; the caller commits and waits. */
template <class P, int HD, int ROWS>
__device__ __forceinline__ void copy_rows_async(typename P::Elem *tile, const typename P::Elem *src) {
    constexpr int PER = 16 / sizeof(typename P::Elem), LD = HD + P::PAD, CHUNKS = ROWS * HD / PER;
#pragma unroll
    for (int c = 0; c < (CHUNKS + TC_THREADS - 1) / TC_THREADS; c++) {
        const int i = c * TC_THREADS + threadIdx.x;
        if (CHUNKS % TC_THREADS == 0 || i < CHUNKS)
            cp_async16(tile + (i / (HD / PER)) * LD + (i % (HD / PER)) * PER, src + (size_t)i * PER);
    }
}

/* N floats (a multiple of 4, 16-byte aligned) into shared memory, as cp.async copies. */
template <int N>
__device__ __forceinline__ void copy_floats_async(float *dst, const float *src) {
    for (int i = threadIdx.x; i < N / 4; i += TC_THREADS) cp_async16(dst + 4 * i, src + 4 * i);
}

/* Streamed tiles go through STAGES buffers: with 2, the copies of the next tile are issued
 * before this one is computed on (two __syncthreads a tile either way). A kernel takes 2
 * where its shared memory then still lets as many blocks share an SM as its launch bound
 * asks (at least two), else 1. */
template <int FIXED_BYTES, int STAGE_BYTES, int MINB>
constexpr int tile_stages() {
    return FIXED_BYTES + 2 * STAGE_BYTES <= TC_SM_SHARED_BYTES / (MINB > 2 ? MINB : 2) - 1024 ? 2 : 1;
}

/* The columns of one accumulator row that this lane holds, for the kernels' write-back:
 * acc is a warp's C-layout [ND][4] block (n-tile n: columns 8n..8n+7) and half picks row g
 * (0) or g+8 (1); each of its columns d = 8n+2t+e below hd is passed as put(d, value). */
template <int ND, class Put>
__device__ __forceinline__ void for_row_columns(const float (&acc)[ND][4], int half, int lane, int hd, Put put) {
    const int t = lane % 4;
#pragma unroll
    for (int n = 0; n < ND; n++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int d = 8 * n + 2 * t + e;
            if (d < hd) put(d, acc[n][2 * half + e]);
        }
}

/* mask_scores over MT m-tiles of query rows q0 + 16·mt .. against keys k0 .. (forward, dq) */
template <int MT, int NT>
__device__ __forceinline__ void mask_query_rows(float (&s)[MT][NT][4], int lane, int q0, int k0, int T, int window) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
        mask_scores<NT>(s[mt], lane, [&](int r, int c) { return visible(q0 + 16 * mt + r, k0 + c, T, window); });
}

/* The key/value tiles a forward or dq block streams: BC rows of one kv head's K and V
 * copies at a time, through STAGES shared buffers rows[STAGES][K, V][BC][HD+PAD]. */
template <class P, int HD, int BC, int STAGES>
struct KvTileStream {
    using E = typename P::Elem;
    static constexpr int LD = HD + P::PAD;
    E *rows;
    const E *k_head, *v_head;
    int st;   /* the buffer the next tile is computed from */

    __device__ __forceinline__ void stage(int buffer, int j) const {
        copy_rows_async<P, HD, BC>(rows + buffer * 2 * BC * LD, k_head + (size_t)j * HD);
        copy_rows_async<P, HD, BC>(rows + (buffer * 2 + 1) * BC * LD, v_head + (size_t)j * HD);
    }
    /* After the block's own copies are issued: with two buffers, the first tile's copies
     * join them; one commit closes the group. */
    __device__ __forceinline__ void start(int j_first) {
        st = 0;
        if (STAGES == 2) stage(0, j_first);
        cp_async_commit();
    }
    /* Tile j0 (of tiles up to t_last) into k_rows, v_rows, landed and visible to every
     * thread; with two buffers the next tile's copies are in flight meanwhile. */
    __device__ __forceinline__ void next(int j0, int t_last, const E *&k_rows, const E *&v_rows) {
        __syncthreads();   /* every warp is done with the buffer about to be refilled */
        if (STAGES == 1) {
            stage(0, j0);
            cp_async_commit();
            cp_async_wait<0>();
        } else {
            if (j0 + BC <= t_last) stage(st ^ 1, j0 + BC);
            cp_async_commit();   /* (empty on the last tile: the count stays uniform) */
            cp_async_wait<1>();  /* this thread's copies of tile j0 (and the block's first ones) have landed */
        }
        __syncthreads();         /* ... and every thread's */
        k_rows = rows + st * 2 * BC * LD;
        v_rows = k_rows + BC * LD;
        if (STAGES == 2) st ^= 1;
    }
};

/* Forward: one block per (64·MT query rows, head, batch); warp w owns rows 16·MT·w .. (MT
 * m-tiles of 16) and streams key/value tiles of BC. Online softmax per row in base 2
 * (scores times scale·log2 e, so each probability is one ex2), the row's 4 lanes combining
 * with two xor-shuffles; the output accumulator shares the score layout's rows, so its
 * rescale needs no exchange. */
template <class P, int HD, int BC, int MT, int STAGES, int MINB>
__global__ void __launch_bounds__(TC_THREADS, MINB)
attention_forward_tc_kernel(float *out, float *lse, const typename P::Elem *q, const typename P::Elem *k,
                            const typename P::Elem *v, int T, int Tp, int H, int Hkv, int hd, int window,
                            float scale) {
    using E = typename P::Elem;
    constexpr int LD = HD + P::PAD, NT = BC / 8, ND = HD / 8, ROWS = TC_ROWS * MT;
    extern __shared__ float4 shared4[];
    E *q_rows = reinterpret_cast<E *>(shared4);   /* [ROWS][LD] */
    E *kv_rows = q_rows + ROWS * LD;                   /* [STAGES][K, V][BC][LD] */
    const int tiles = (T + ROWS - 1) / ROWS;
    const RankedBlock rb = ranked_block(H, tiles);   /* the latest rows (the longest blocks) first */
    const int b = rb.b, h = rb.head, grp = h / (H / Hkv), t0 = (tiles - 1 - rb.rank) * ROWS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int row0 = 16 * MT * warp;
    const float scale_log2 = scale * ATTN_LOG2E;
    const size_t kv_head = ((size_t)b * Hkv + grp) * Tp * HD;
    KvTileStream<P, HD, BC, STAGES> kv{kv_rows, k + kv_head, v + kv_head, 0};

    /* key tiles start at multiples of BC (≤ TC_ROWS), so none reaches past Tp; keys before
     * the window are masked like any other invisible key */
    const int t_last = min(T - 1, t0 + ROWS - 1), j_first = first_visible_key(t0, window) / BC * BC;
    copy_rows_async<P, HD, ROWS>(q_rows, q + (((size_t)b * H + h) * Tp + t0) * HD);
    kv.start(j_first);
    float m[MT][2], l[MT][2], acc[MT][ND][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
        for (int n = 0; n < ND; n++) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.0f;
    }

    for (int j0 = j_first; j0 <= t_last; j0 += BC) {
        const E *k_rows, *v_rows;
        kv.next(j0, t_last, k_rows, v_rows);

        float s[MT][NT][4];
        P::template rows_dot_rows<HD, NT>(s, q_rows, row0, k_rows, lane);
        if (!tile_all_visible(t0, ROWS, j0, BC, T, window)) mask_query_rows<MT, NT>(s, lane, t0 + row0, j0, T, window);
        /* m is kept in base-2 units (scores · scale · log2 e); the raw scores' max scales to
         * it (scale > 0), so each probability is one FFMA and one ex2 */
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int half = 0; half < 2; half++) {   /* rows g (c0, c1) and g+8 (c2, c3) */
            float row_max = -INFINITY;
#pragma unroll
            for (int n = 0; n < NT; n++) row_max = fmaxf(row_max, fmaxf(s[mt][n][2 * half], s[mt][n][2 * half + 1]));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
            const float m_new = fmaxf(m[mt][half], row_max * scale_log2);
            /* m_new = −∞: no key of this row visible yet; then every score is −∞ and
             * 2^(−∞ − 0) = 0 keeps the (zero) sums, where −∞ − m_new would be NaN. */
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;
            const float corr = ex2(m[mt][half] - m_use);
            float row_sum = 0.0f;
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &x = s[mt][n][2 * half + e];
                    x = ex2(fmaf(x, scale_log2, -m_use));
                    row_sum += x;
                }
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
            l[mt][half] = l[mt][half] * corr + row_sum;
            m[mt][half] = m_new;
#pragma unroll
            for (int n = 0; n < ND; n++) { acc[mt][n][2 * half] *= corr; acc[mt][n][2 * half + 1] *= corr; }
        }
        P::template scores_times_rows<HD, NT>(acc, s, v_rows, lane);
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int tr = t0 + row0 + 16 * mt + g + 8 * half;
        if (tr >= T) continue;
        if (t == 0) lse[((size_t)b * H + h) * T + tr] = (m[mt][half] + log2f(l[mt][half])) * ATTN_LN2;
        float *out_row = out + token_row(b, tr, H, h, T) * hd;
        const float inv_l = 1.0f / l[mt][half];
        for_row_columns(acc[mt], half, lane, hd, [&](int d, float x) { out_row[d] = x * inv_l; });
    }
}

/* dq_t += scale Σ_j dS_tj k_j: shaped like the forward (warp w owns query rows 16·MT·w..),
 * with dP = dO·Vᵀ beside S, and dS meeting the K tile as P met V. */
template <class P, int HD, int BC, int MT, int STAGES, int MINB>
__global__ void __launch_bounds__(TC_THREADS, MINB)
attention_backward_dq_tc_kernel(float *dq, const typename P::Elem *dout, const typename P::Elem *q,
                                const typename P::Elem *k, const typename P::Elem *v, const float *lse2,
                                const float *D, int T, int Tp, int H, int Hkv, int hd, int window,
                                float scale) {
    using E = typename P::Elem;
    constexpr int LD = HD + P::PAD, NT = BC / 8, ND = HD / 8, ROWS = TC_ROWS * MT;
    extern __shared__ float4 shared4[];
    E *q_rows = reinterpret_cast<E *>(shared4);   /* [ROWS][LD] */
    E *dout_rows = q_rows + ROWS * LD;                 /* [ROWS][LD] */
    E *kv_rows = dout_rows + ROWS * LD;                /* [STAGES][K, V][BC][LD] */
    const int tiles = (T + ROWS - 1) / ROWS;
    const RankedBlock rb = ranked_block(H, tiles);   /* the latest rows (the longest blocks) first */
    const int b = rb.b, h = rb.head, grp = h / (H / Hkv), t0 = (tiles - 1 - rb.rank) * ROWS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
    const int row0 = 16 * MT * warp;
    const float scale_log2 = scale * ATTN_LOG2E;
    const size_t bh = (size_t)b * H + h;
    const size_t kv_head = ((size_t)b * Hkv + grp) * Tp * HD;
    KvTileStream<P, HD, BC, STAGES> kv{kv_rows, k + kv_head, v + kv_head, 0};

    const int t_last = min(T - 1, t0 + ROWS - 1), j_first = first_visible_key(t0, window) / BC * BC;
    copy_rows_async<P, HD, ROWS>(q_rows, q + (bh * Tp + t0) * HD);
    copy_rows_async<P, HD, ROWS>(dout_rows, dout + (bh * Tp + t0) * HD);
    kv.start(j_first);
    float lse_r[MT][2], D_r[MT][2], acc[MT][ND][4];   /* lse in base 2; rows < Tp */
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const size_t row = bh * Tp + t0 + row0 + 16 * mt + g + 8 * half;
            lse_r[mt][half] = lse2[row];
            D_r[mt][half] = D[row];
        }
#pragma unroll
        for (int n = 0; n < ND; n++) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.0f;
    }

    for (int j0 = j_first; j0 <= t_last; j0 += BC) {
        const E *k_rows, *v_rows;
        kv.next(j0, t_last, k_rows, v_rows);

        float s[MT][NT][4], dp[MT][NT][4];
        P::template rows_dot_rows<HD, NT>(s, q_rows, row0, k_rows, lane);
        P::template rows_dot_rows<HD, NT>(dp, dout_rows, row0, v_rows, lane);
        if (!tile_all_visible(t0, ROWS, j0, BC, T, window)) mask_query_rows<MT, NT>(s, lane, t0 + row0, j0, T, window);
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const float p = ex2(fmaf(s[mt][n][c], scale_log2, -lse_r[mt][c / 2]));
                    s[mt][n][c] = p * (dp[mt][n][c] - D_r[mt][c / 2]);   /* dS, in place of S */
                }
        P::template scores_times_rows<HD, NT>(acc, s, k_rows, lane);
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int tr = t0 + row0 + 16 * mt + g + 8 * half;
        if (tr >= T) continue;
        float *dq_row = dq + token_row(b, tr, H, h, T) * hd;
        for_row_columns(acc[mt], half, lane, hd, [&](int d, float x) { dq_row[d] += scale * x; });
    }
}

/* dk_j += scale Σ_t dS_tj q_t, dv_j += Σ_t P_tj dout_t: one block per (64 keys, kv head,
 * batch); warp w owns keys 16w..16w+15. Per query tile of BR rows the warp computes
 * Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (keys as rows, queries as columns), Pᵀ and dSᵀ in place, then
 * dv += Pᵀ·dO and dk += dSᵀ·Q. lse and D are per column here: from shared memory. */
template <class P, int HD, int BR, int STAGES, int MINB>
__global__ void __launch_bounds__(TC_THREADS, MINB)
attention_backward_dkdv_tc_kernel(float *dk, float *dv, const typename P::Elem *dout, const typename P::Elem *q,
                                  const typename P::Elem *k, const typename P::Elem *v, const float *lse2,
                                  const float *D, int T, int Tp, int H, int Hkv, int hd, int window,
                                  float scale) {
    using E = typename P::Elem;
    constexpr int LD = HD + P::PAD, NT = BR / 8, ND = HD / 8;
    extern __shared__ float4 shared4[];
    E *k_rows = reinterpret_cast<E *>(shared4);   /* [TC_ROWS][LD] */
    E *v_rows = k_rows + TC_ROWS * LD;                 /* [TC_ROWS][LD] */
    E *qd_rows = v_rows + TC_ROWS * LD;                /* [STAGES][Q, dO][BR][LD] */
    float *stats = reinterpret_cast<float *>(qd_rows + STAGES * 2 * BR * LD);   /* [STAGES][lse2, D][BR] */
    const RankedBlock rb = ranked_block(Hkv, (T + TC_ROWS - 1) / TC_ROWS);   /* the first keys (the longest blocks) first */
    const int b = rb.b, grp = rb.head, j0 = rb.rank * TC_ROWS, group = H / Hkv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
    const int row0 = 16 * warp, jk[2] = {j0 + row0 + g, j0 + row0 + g + 8};
    const float scale_log2 = scale * ATTN_LOG2E;
    /* one query tile: rows t0.. of head h's Q and dO, and their base-2 lse and D */
    auto stage = [&](int st, int h, int t0) {
        const size_t at = ((size_t)b * H + h) * Tp + t0;
        copy_rows_async<P, HD, BR>(qd_rows + st * 2 * BR * LD, q + at * HD);
        copy_rows_async<P, HD, BR>(qd_rows + (st * 2 + 1) * BR * LD, dout + at * HD);
        copy_floats_async<BR>(stats + st * 2 * BR, lse2 + at);
        copy_floats_async<BR>(stats + st * 2 * BR + BR, D + at);
    };

    /* the last query row that sees any of the keys j0..j0+63; query tiles start at j0 (a
     * multiple of 64, so of BR): rows before it see none of the keys. The block walks
     * (head, query tile) pairs: the group's heads, each over tiles j0.. t_end. */
    const int j_last = min(T - 1, j0 + TC_ROWS - 1);
    const int t_end = window > 0 ? min(T - 1, j_last + window - 1) : T - 1;
    const int h_end = (grp + 1) * group;
    const size_t kv_at = (((size_t)b * Hkv + grp) * Tp + j0) * HD;
    copy_rows_async<P, HD, TC_ROWS>(k_rows, k + kv_at);
    copy_rows_async<P, HD, TC_ROWS>(v_rows, v + kv_at);
    if (STAGES == 2) stage(0, grp * group, j0);
    cp_async_commit();
    float dk_acc[ND][4], dv_acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
#pragma unroll
        for (int c = 0; c < 4; c++) dk_acc[n][c] = dv_acc[n][c] = 0.0f;

    int st = 0;
    for (int h = grp * group, t0 = j0; h < h_end;) {
        const int h_next = t0 + BR <= t_end ? h : h + 1, t0_next = t0 + BR <= t_end ? t0 + BR : j0;
        __syncthreads();   /* every warp is done with the buffer about to be refilled */
        if (STAGES == 1) {
            stage(0, h, t0);
            cp_async_commit();
            cp_async_wait<0>();
        } else {
            if (h_next < h_end) stage(st ^ 1, h_next, t0_next);
            cp_async_commit();
            cp_async_wait<1>();
        }
        __syncthreads();
        const E *q_rows = qd_rows + st * 2 * BR * LD, *dout_rows = q_rows + BR * LD;
        const float *lse_s = stats + st * 2 * BR, *D_s = lse_s + BR;
        if (STAGES == 2) st ^= 1;

        float s[NT][4], dp[NT][4];
        P::template rows_dot_rows<HD, NT>(s, k_rows, row0, q_rows, lane);      /* Sᵀ  [keys × queries] */
        P::template rows_dot_rows<HD, NT>(dp, v_rows, row0, dout_rows, lane);  /* dPᵀ */
        if (!tile_all_visible(t0, BR, j0, TC_ROWS, T, window))
            mask_scores<NT>(s, lane, [&](int r, int c) { return visible(t0 + c, j0 + row0 + r, T, window); });
        transposed_probs_and_dscores<NT>(s, dp, lse_s, D_s, scale_log2, lane);
        P::template scores_times_rows<HD, NT>(dv_acc, s, dout_rows, lane);
        P::template scores_times_rows<HD, NT>(dk_acc, dp, q_rows, lane);
        h = h_next;
        t0 = t0_next;
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        if (jk[half] >= T) continue;
        const size_t row = token_row(b, jk[half], Hkv, grp, T) * hd;
        if (dk) for_row_columns(dk_acc, half, lane, hd, [&](int d, float x) { dk[row + d] += scale * x; });
        if (dv) for_row_columns(dv_acc, half, lane, hd, [&](int d, float x) { dv[row + d] += x; });
    }
}

/* Shape buckets as in attention.cu: hd ≤ 32 → HD 32, ≤ 64 → 64, else 128. BC (keys streamed
 * by forward and dq) and BR (queries streamed by dk/dv) are as large as the registers allow
 * beside the HD-wide accumulators (HD 128 spills no registers with BC 32 for dq and BR 16
 * for dk/dv). HD 64, jamba-small's, was tuned on an H100 (docs/performance.md): the
 * forward and dq take two m-tiles a warp (128-row blocks; forward with 64-key tiles and 2
 * blocks per SM, dq with 32-key tiles), which measured faster than one m-tile with more
 * blocks per SM (forward TF32 0.47 against 0.55 ms, bf16 equal at 0.30; dq 3–4% faster),
 * and dk/dv keeps one m-tile (its two accumulators fill the registers). MINB is the
 * launch bound (blocks per SM the compiler must fit). */
static void allow_tc_shared_memory(const void *kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

/* The operand copies and row statistics live in file-static device buffers that only grow,
 * one per role, like attention.cu's D buffer: calls on one stream use them in turn, and
 * cudaFree before a regrow synchronises the device. Not thread-safe. */
enum { COPY_Q, COPY_K, COPY_V, COPY_DOUT, COPY_LSE2, COPY_D, COPY_ROLES };
static void *copy_buffer[COPY_ROLES];
static size_t copy_capacity[COPY_ROLES];

static void *copy_scratch(int role, size_t bytes) {
    return grow_device_buffer(&copy_buffer[role], &copy_capacity[role], bytes);
}

static int padded_length(int T) { return (T + TC_ROWS * TC_MAX_MT - 1) / (TC_ROWS * TC_MAX_MT) * (TC_ROWS * TC_MAX_MT); }

template <class P, int HD>
static const typename P::Elem *stage_operand(int role, const float *x, int B, int T, int heads, int hd,
                                             cudaStream_t stream) {
    using E = typename P::Elem;
    const int Tp = padded_length(T);
    const size_t n = (size_t)B * heads * Tp * HD;
    E *copy = (E *)copy_scratch(role, n * sizeof(E));
    stage_operand_kernel<P, HD><<<grid_stride_blocks(n / 4), 256, 0, stream>>>(copy, x, B, T, Tp, heads, hd);
    CUDA_CHECK_LAUNCH();
    return copy;
}

template <class P, int HD, int BC, int MT, int MINB>
static void launch_forward_tc(float *out, float *lse, const float *q, const float *k, const float *v,
                              int B, int T, int H, int Hkv, int hd, int window, cudaStream_t stream) {
    using E = typename P::Elem;
    constexpr int ROW = sizeof(E) * (HD + P::PAD);
    static_assert(MT <= TC_MAX_MT, "blocks taller than the copies' padding");
    constexpr int STAGES = tile_stages<MT * TC_ROWS * ROW, 2 * BC * ROW, MINB>();
    const E *kc = stage_operand<P, HD>(COPY_K, k, B, T, Hkv, hd, stream);
    const E *vc = stage_operand<P, HD>(COPY_V, v, B, T, Hkv, hd, stream);
    if constexpr (std::is_same<P, Bf16Tiles>::value && HD == 64)   /* Hopper's own kernel, where it runs */
        if (attention_forward_wgmma(out, lse, q, kc, vc, B, T, padded_length(T), H, Hkv, hd, window, stream) == 0)
            return;
    const E *qc = stage_operand<P, HD>(COPY_Q, q, B, T, H, hd, stream);
    const size_t bytes = (size_t)ROW * (MT * TC_ROWS + STAGES * 2 * BC);
    const void *kernel = (const void *)attention_forward_tc_kernel<P, HD, BC, MT, STAGES, MINB>;
    allow_tc_shared_memory(kernel, bytes);
    const dim3 grid((unsigned)((T + MT * TC_ROWS - 1) / (MT * TC_ROWS) * H * B));   /* ranked_block's order */
    attention_forward_tc_kernel<P, HD, BC, MT, STAGES, MINB><<<grid, TC_THREADS, bytes, stream>>>(
        out, lse, qc, kc, vc, T, padded_length(T), H, Hkv, hd, window, 1.0f / sqrtf((float)hd));
    CUDA_CHECK_LAUNCH();
}

template <class P, int HD, int BC, int MT_DQ, int MINB_DQ, int BR, int MINB_DKDV>
static void launch_backward_tc(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               int B, int T, int H, int Hkv, int hd, int window, float scale,
                               cudaStream_t stream) {
    using E = typename P::Elem;
    constexpr int ROW = sizeof(E) * (HD + P::PAD);
    const int Tp = padded_length(T);
    const E *qc = stage_operand<P, HD>(COPY_Q, q, B, T, H, hd, stream);
    const E *kc = stage_operand<P, HD>(COPY_K, k, B, T, Hkv, hd, stream);
    const E *vc = stage_operand<P, HD>(COPY_V, v, B, T, Hkv, hd, stream);
    const size_t rows = (size_t)B * H * Tp;
    E *dc = (E *)copy_scratch(COPY_DOUT, rows * HD * sizeof(E));
    float *lse2 = (float *)copy_scratch(COPY_LSE2, rows * sizeof(float));
    float *D = (float *)copy_scratch(COPY_D, rows * sizeof(float));
    stage_dout_kernel<P, HD><<<grid_stride_blocks(rows * (HD / 4)), 256, 0, stream>>>(dc, lse2, D, dout, out, lse,
                                                                                      B, T, Tp, H, hd);
    CUDA_CHECK_LAUNCH();
    if constexpr (std::is_same<P, Bf16Tiles>::value && HD == 64)   /* Hopper's own kernels, where they run */
        if (attention_backward_wgmma(dq, dk, dv, dc, qc, kc, vc, lse2, D, B, T, Tp, H, Hkv, hd, window, scale,
                                     stream) == 0)
            return;
    if (dq) {
        static_assert(MT_DQ <= TC_MAX_MT, "blocks taller than the copies' padding");
        constexpr int STAGES = tile_stages<2 * MT_DQ * TC_ROWS * ROW, 2 * BC * ROW, MINB_DQ>();
        const size_t bytes = (size_t)ROW * (2 * MT_DQ * TC_ROWS + STAGES * 2 * BC);
        const void *kernel = (const void *)attention_backward_dq_tc_kernel<P, HD, BC, MT_DQ, STAGES, MINB_DQ>;
        allow_tc_shared_memory(kernel, bytes);
        const dim3 grid((unsigned)((T + MT_DQ * TC_ROWS - 1) / (MT_DQ * TC_ROWS) * H * B));
        attention_backward_dq_tc_kernel<P, HD, BC, MT_DQ, STAGES, MINB_DQ><<<grid, TC_THREADS, bytes, stream>>>(
            dq, dc, qc, kc, vc, lse2, D, T, Tp, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
    if (dk || dv) {
        constexpr int STAGE_BYTES = 2 * BR * ROW + 2 * BR * (int)sizeof(float);
        constexpr int STAGES = tile_stages<2 * TC_ROWS * ROW, STAGE_BYTES, MINB_DKDV>();
        const size_t bytes = (size_t)2 * TC_ROWS * ROW + (size_t)STAGES * STAGE_BYTES;
        const void *kernel = (const void *)attention_backward_dkdv_tc_kernel<P, HD, BR, STAGES, MINB_DKDV>;
        allow_tc_shared_memory(kernel, bytes);
        const dim3 grid((unsigned)((T + TC_ROWS - 1) / TC_ROWS * Hkv * B));
        attention_backward_dkdv_tc_kernel<P, HD, BR, STAGES, MINB_DKDV><<<grid, TC_THREADS, bytes, stream>>>(
            dk, dv, dc, qc, kc, vc, lse2, D, T, Tp, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
}
template <class P>
static void forward_tc(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                       int H, int Hkv, int hd, int window, cudaStream_t stream) {
    if (hd <= 32) launch_forward_tc<P, 32, 64, 1, 1>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
    else if (hd <= 64) launch_forward_tc<P, 64, 64, 2, 2>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
    else launch_forward_tc<P, 128, 64, 1, 1>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
}

template <class P>
static void backward_tc(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, const float *out, const float *lse, int B, int T, int H, int Hkv,
                        int hd, int window, float scale, cudaStream_t stream) {
    if (hd <= 32)
        launch_backward_tc<P, 32, 64, 1, 1, 64, 1>(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, Hkv, hd, window, scale, stream);
    else if (hd <= 64)
        launch_backward_tc<P, 64, 32, 2, 1, 64, 1>(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, Hkv, hd, window, scale, stream);
    else
        launch_backward_tc<P, 128, 32, 1, 1, 16, 1>(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, Hkv, hd, window, scale, stream);
}

void attention_forward_tc(float *out, float *lse, const float *q, const float *k, const float *v,
                          int B, int T, int H, int Hkv, int hd, int window, int bf16, cudaStream_t stream) {
    if (bf16) forward_tc<Bf16Tiles>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
    else forward_tc<Tf32Tiles>(out, lse, q, k, v, B, T, H, Hkv, hd, window, stream);
}

void attention_backward_tc(float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const float *out, const float *lse,
                           int B, int T, int H, int Hkv, int hd, int window, float scale, int bf16,
                           cudaStream_t stream) {
    if (bf16) backward_tc<Bf16Tiles>(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, Hkv, hd, window, scale, stream);
    else backward_tc<Tf32Tiles>(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, Hkv, hd, window, scale, stream);
}
