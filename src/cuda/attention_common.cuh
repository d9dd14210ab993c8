/* attention_common.cuh — what the float32 attention kernels (attention.cu), the mma.sync
 * tensor-core ones (attention_tc.cu) and the wgmma ones (attention_wgmma.cu) share: the
 * visibility rule and the score mask, the row addressing, the block order and the
 * tensor-core entry points that attention.cu dispatches to (device code only). */
#ifndef BRAID_ATTENTION_COMMON_CUH
#define BRAID_ATTENTION_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "ptx.cuh"

/* The tensor-core kernels' softmax works in base 2: scores and lse go to base 2 with
 * ATTN_LOG2E, and ln 2 brings lse back. */
#define ATTN_LOG2E 1.4426950408889634f
#define ATTN_LN2 0.6931471805599453f

/* Two floats rounded to bf16 in one 32-bit register, the lower index in the low half: a
 * pair of an mma/wgmma A fragment. */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* The first key query t sees: 0, or t−w+1 with a sliding window w > 0. */
__device__ __forceinline__ int first_visible_key(int t, int window) {
    return window > 0 ? max(0, t - window + 1) : 0;
}

/* Key j is visible to query t (t < T is checked here; j <= t < T covers j). */
__device__ __forceinline__ bool visible(int t, int j, int T, int window) {
    return t < T && j <= t && (window <= 0 || j > t - window);
}

/* Every (query, key) pair of a tile is visible: queries q0..q0+nq−1 all before T, keys
 * k0..k0+nk−1 all at or before the first query and, with a window, inside the last query's
 * window. Such tiles skip the per-element mask; only tiles that cross the diagonal, the
 * window edge or T evaluate visible(). */
__device__ __forceinline__ bool tile_all_visible(int q0, int nq, int k0, int nk, int T, int window) {
    return q0 + nq - 1 < T && k0 + nk - 1 <= q0 && (window <= 0 || k0 > q0 + nq - 1 - window);
}

/* Scores of pairs that are not visible become −∞ (so 2^(x·scale − m) is 0 and dS is 0):
 * s is a warp's C-layout block, visible_at(r, c) says whether its row r (0..15) sees its
 * column c (0..8·NT−1). Only tiles that cross the diagonal, the window edge or T need it:
 * the kernels call it where tile_all_visible() is false, so most tiles pay nothing. The
 * wgmma kernels' accumulators have the same per-warp layout (NT = 8 for 64 columns). */
template <int NT, class VisibleAt>
__device__ __forceinline__ void mask_scores(float (&s)[NT][4], int lane, VisibleAt visible_at) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int c = 0; c < 4; c++)
            if (!visible_at(g + 8 * (c / 2), 8 * n + 2 * t + c % 2)) s[n][c] = -INFINITY;
}

/* The transposed backward's probabilities and score gradients, in place, for a warp's
 * C-layout block with keys as rows and queries as columns (8·NT query columns): from Sᵀ
 * and dPᵀ, Pᵀ = 2^(Sᵀ·scale_log2 − lse₂) and dSᵀ = Pᵀ ⊙ (dPᵀ − D), where lse₂ (base 2)
 * and D = dO·O are the staged statistics of each query column. Shared by the mma.sync
 * and wgmma dk/dv kernels. */
template <int NT>
__device__ __forceinline__ void transposed_probs_and_dscores(float (&s)[NT][4], float (&dp)[NT][4],
                                                             const float *lse2, const float *D, float scale_log2,
                                                             int lane) {
    const int t = lane % 4;
#pragma unroll
    for (int n = 0; n < NT; n++) {
        /* this lane's two columns of the n-tile, 8n+2t and 8n+2t+1 */
        const float2 lse_c = *reinterpret_cast<const float2 *>(lse2 + 8 * n + 2 * t);
        const float2 D_c = *reinterpret_cast<const float2 *>(D + 8 * n + 2 * t);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const float p = ex2(fmaf(s[n][c], scale_log2, -(c % 2 ? lse_c.y : lse_c.x)));
            s[n][c] = p;                                          /* Pᵀ */
            dp[n][c] = p * (dp[n][c] - (c % 2 ? D_c.y : D_c.x));  /* dSᵀ */
        }
    }
}

/* Row index of (b, t, head) in a [B, T, heads, hd] tensor. */
__device__ __forceinline__ size_t token_row(int b, int t, int heads, int head, int T) {
    return ((size_t)b * T + t) * heads + head;
}

/* The block order of every attention kernel's grid. Causal blocks differ in work: a block of
 * late query rows meets many key tiles, one of early rows few (key blocks the other way
 * round). The block scheduler starts blocks in linear index order as slots free up, so a
 * (tile, head, batch) grid with the tile index fastest runs each (head, batch)'s longest
 * block early but leaves the last pairs' longest blocks for the very end: a tail of long
 * blocks on a few SMs. Numbering the blocks by rank first (rank 0 = the longest tile of
 * every (head, batch), then rank 1, ...) is the longest-first rule of list scheduling:
 * simulated at jamba-small's shape with 264 block slots, the dk/dv kernel's makespan goes
 * from 84 to 65 tile-steps (the work alone: 64), the forward's and dq's from 60 to 50
 * (49.5). The grid is one-dimensional, ranks · heads · B blocks. */
struct RankedBlock {
    int rank, head, b;
};
__device__ __forceinline__ RankedBlock ranked_block(int heads, int ranks) {
    const int per_rank = (int)gridDim.x / ranks, r = (int)blockIdx.x % per_rank;   /* heads · B */
    return {(int)blockIdx.x / per_rank, r % heads, r / heads};
}

/* attention_tc.cu: the same contract as attention_forward_cuda / attention_backward_cuda
 * (shapes already checked; the backward forms D = rowsum(dout ⊙ out) itself, as it stages dout);
 * bf16 = 0: TF32 tensor cores, 1: bf16 ones. */
void attention_forward_tc(float *out, float *lse, const float *q, const float *k, const float *v,
                          int B, int T, int H, int Hkv, int hd, int window, int bf16, cudaStream_t stream);
void attention_backward_tc(float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const float *out, const float *lse,
                           int B, int T, int H, int Hkv, int hd, int window, float scale, int bf16,
                           cudaStream_t stream);

/* attention_wgmma.cu: the bf16 forward for the 64 head-dim bucket on Hopper's wgmma, from
 * q itself ([B, T, H, hd] float) and attention_tc.cu's K and V copies ([B][Hkv][Tp][64]
 * bf16, Tp a multiple of 128).
 * Returns 0 if it ran, −1 where it is not built (no sm_90a), the device is not compute
 * capability 9.0, hd is outside (32, 64], or BRAID_ATTENTION_WGMMA=0: the caller then runs
 * its own kernel. */
int attention_forward_wgmma(float *out, float *lse, const float *q, const void *k_copy, const void *v_copy,
                            int B, int T, int Tp, int H, int Hkv, int hd, int window, cudaStream_t stream);
/* attention_wgmma.cu: the backward's two kernels on wgmma for the same bucket, from
 * attention_tc.cu's copies (dO, Q, K, V; lse2 in base 2 and D as [B·H][Tp]). Same
 * contract and return values as attention_forward_wgmma. */
int attention_backward_wgmma(float *dq, float *dk, float *dv, const void *dout_copy, const void *q_copy,
                             const void *k_copy, const void *v_copy, const float *lse2, const float *D, int B, int T,
                             int Tp, int H, int Hkv, int hd, int window, float scale, cudaStream_t stream);

#endif
