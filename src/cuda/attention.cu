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
 * largest score block is a 16×32 tile in shared memory).
 *
 * Work split (tiles: BR = 16 query rows, BC = 32 keys; blocks of 8 warps):
 *  - forward and dq: one block per (query tile, head, batch). The query tile sits in shared
 *    memory; key/value tiles stream through it. Each warp owns 2 query rows. For scores,
 *    lane j takes key j of the tile (K rows padded to hd+1 floats, so the 32 lanes hit 32
 *    different banks) and reads the query row as a broadcast; for the P·V product the
 *    roles flip: lane l owns output dims l, l+32, l+64, l+96 and the 32 probabilities are
 *    passed round by shuffles. Forward keeps the running max m and sum l per row (online
 *    softmax) and rescales its accumulator when m grows.
 *  - dk/dv: one block per (key tile, kv head, batch), looping over the group's query heads
 *    and the query tiles that can see the keys. A block owns its 32 keys' dk, dv rows
 *    (each warp 4 keys, lanes over dims), so they are written once, with no atomics. dq is
 *    a separate kernel shaped like forward that owns its query rows the same way: the
 *    scores are computed twice (once per kernel) instead of FA2's atomic adds into dq, which
 *    keeps the backward deterministic. D_t is recomputed per tile from out and dout (hd
 *    multiply-adds per row, next to 32·hd·2 for the tile's scores) so no extra buffer is
 *    needed.
 * This is plain float32 on the CUDA cores, a first correct step: tensor-core tiles (TF32 or
 * bf16 through wgmma) are issue 8's later work. expf, not __expf, so it agrees with the
 * CPU op to rounding. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "reduce.cuh"

#define BR 16                 /* query rows per block (forward, dq), and per dk/dv tile */
#define BC 32                 /* keys per tile: one per lane */
#define WARPS 8
#define THREADS (32 * WARPS)
#define ROWS_PER_WARP (BR / WARPS)
#define KEYS_PER_WARP (BC / WARPS)
#define MAX_HD 128
#define DIMS_PER_LANE (MAX_HD / 32)

__device__ __forceinline__ int first_visible_key(int t, int window) {
    return window > 0 ? max(0, t - window + 1) : 0;
}

/* Row index of (b, t, head) in a [B, T, heads, hd] tensor. */
__device__ __forceinline__ size_t token_row(int b, int t, int heads, int head, int T) {
    return ((size_t)b * T + t) * heads + head;
}

/* Copies rows first..first+rows−1 of head `head` of x[B,T,heads,hd] into tile (row stride
 * `stride` floats); rows at or past T are zero. All threads take part. */
__device__ void load_tile(float *tile, int stride, const float *x, int b, int first, int rows,
                          int heads, int head, int T, int hd) {
    for (int idx = threadIdx.x; idx < rows * hd; idx += blockDim.x) {
        const int r = idx / hd, d = idx % hd, t = first + r;
        tile[r * stride + d] = t < T ? x[token_row(b, t, heads, head, T) * hd + d] : 0.0f;
    }
}

__global__ void __launch_bounds__(THREADS)
attention_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                         int T, int H, int Hkv, int hd, int window, float scale) {
    extern __shared__ float shared[];
    float *q_tile = shared;                    /* [BR][hd]   */
    float *k_tile = q_tile + BR * hd;          /* [BC][hd+1] */
    float *v_tile = k_tile + BC * (hd + 1);    /* [BC][hd]   */
    const int b = blockIdx.z, h = blockIdx.y, g = h / (H / Hkv), t0 = blockIdx.x * BR;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    load_tile(q_tile, hd, q, b, t0, BR, H, h, T, hd);
    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < DIMS_PER_LANE; e++) acc[i][e] = 0.0f;
    }

    const int t_last = min(T - 1, t0 + BR - 1);
    for (int j0 = first_visible_key(t0, window); j0 <= t_last; j0 += BC) {
        __syncthreads();   /* the previous tile is consumed (and the q tile is loaded) */
        load_tile(k_tile, hd + 1, k, b, j0, BC, Hkv, g, T, hd);
        load_tile(v_tile, hd, v, b, j0, BC, Hkv, g, T, hd);
        __syncthreads();

        const int j = j0 + lane;
        float s[ROWS_PER_WARP];
        bool visible[ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; i++) {
            const int t = t0 + warp * ROWS_PER_WARP + i;
            visible[i] = t < T && j <= t && j >= first_visible_key(t, window);
            s[i] = 0.0f;
        }
        for (int d = 0; d < hd; d++) {
            const float kd = k_tile[lane * (hd + 1) + d];
#pragma unroll
            for (int i = 0; i < ROWS_PER_WARP; i++) s[i] += q_tile[(warp * ROWS_PER_WARP + i) * hd + d] * kd;
        }
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; i++) {
            s[i] = visible[i] ? scale * s[i] : -INFINITY;
            const float tile_max = warp_max(s[i]);
            if (tile_max == -INFINITY) continue;          /* warp-uniform: no key visible */
            const float m_new = fmaxf(m[i], tile_max);
            const float p = visible[i] ? expf(s[i] - m_new) : 0.0f;
            const float correction = expf(m[i] - m_new);  /* 0 on the first visible tile */
            l[i] = l[i] * correction + warp_sum(p);
            m[i] = m_new;
#pragma unroll
            for (int e = 0; e < DIMS_PER_LANE; e++) acc[i][e] *= correction;
            for (int jj = 0; jj < BC; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                for (int e = 0; e < DIMS_PER_LANE; e++) {
                    const int d = lane + 32 * e;
                    if (d < hd) acc[i][e] += pj * v_tile[jj * hd + d];
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        const int t = t0 + warp * ROWS_PER_WARP + i;
        if (t >= T) continue;
        float *out_row = out + token_row(b, t, H, h, T) * hd;
        const float inv_l = 1.0f / l[i];
#pragma unroll
        for (int e = 0; e < DIMS_PER_LANE; e++) {
            const int d = lane + 32 * e;
            if (d < hd) out_row[d] = acc[i][e] * inv_l;
        }
        if (lane == 0) lse[((size_t)b * H + h) * T + t] = m[i] + logf(l[i]);
    }
}

/* dq_t += scale Σ_j dS_tj k_j for the block's BR query rows. */
__global__ void __launch_bounds__(THREADS)
attention_backward_dq_kernel(float *dq, const float *dout, const float *q, const float *k,
                             const float *v, const float *out, const float *lse, int T, int H,
                             int Hkv, int hd, int window, float scale) {
    extern __shared__ float shared[];
    float *q_tile = shared;                    /* [BR][hd]   */
    float *dout_tile = q_tile + BR * hd;       /* [BR][hd]   */
    float *k_tile = dout_tile + BR * hd;       /* [BC][hd+1] */
    float *v_tile = k_tile + BC * (hd + 1);    /* [BC][hd+1] */
    const int b = blockIdx.z, h = blockIdx.y, g = h / (H / Hkv), t0 = blockIdx.x * BR;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    load_tile(q_tile, hd, q, b, t0, BR, H, h, T, hd);
    load_tile(dout_tile, hd, dout, b, t0, BR, H, h, T, hd);
    __syncthreads();

    float D[ROWS_PER_WARP], row_lse[ROWS_PER_WARP], dq_acc[ROWS_PER_WARP][DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        const int r = warp * ROWS_PER_WARP + i, t = t0 + r;
        float partial = 0.0f;
        if (t < T)
            for (int d = lane; d < hd; d += 32)
                partial += dout_tile[r * hd + d] * out[token_row(b, t, H, h, T) * hd + d];
        D[i] = warp_sum(partial);
        row_lse[i] = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f;
#pragma unroll
        for (int e = 0; e < DIMS_PER_LANE; e++) dq_acc[i][e] = 0.0f;
    }

    const int t_last = min(T - 1, t0 + BR - 1);
    for (int j0 = first_visible_key(t0, window); j0 <= t_last; j0 += BC) {
        __syncthreads();
        load_tile(k_tile, hd + 1, k, b, j0, BC, Hkv, g, T, hd);
        load_tile(v_tile, hd + 1, v, b, j0, BC, Hkv, g, T, hd);
        __syncthreads();

        const int j = j0 + lane;
        float s[ROWS_PER_WARP], dp[ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; i++) s[i] = dp[i] = 0.0f;
        for (int d = 0; d < hd; d++) {
            const float kd = k_tile[lane * (hd + 1) + d], vd = v_tile[lane * (hd + 1) + d];
#pragma unroll
            for (int i = 0; i < ROWS_PER_WARP; i++) {
                const int r = warp * ROWS_PER_WARP + i;
                s[i] += q_tile[r * hd + d] * kd;
                dp[i] += dout_tile[r * hd + d] * vd;
            }
        }
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; i++) {
            const int t = t0 + warp * ROWS_PER_WARP + i;
            const bool visible = t < T && j <= t && j >= first_visible_key(t, window);
            const float p = visible ? expf(scale * s[i] - row_lse[i]) : 0.0f;
            const float ds = p * (dp[i] - D[i]);
            for (int jj = 0; jj < BC; jj++) {
                const float ds_j = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
                for (int e = 0; e < DIMS_PER_LANE; e++) {
                    const int d = lane + 32 * e;
                    if (d < hd) dq_acc[i][e] += ds_j * k_tile[jj * (hd + 1) + d];
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        const int t = t0 + warp * ROWS_PER_WARP + i;
        if (t >= T) continue;
        float *dq_row = dq + token_row(b, t, H, h, T) * hd;
#pragma unroll
        for (int e = 0; e < DIMS_PER_LANE; e++) {
            const int d = lane + 32 * e;
            if (d < hd) dq_row[d] += scale * dq_acc[i][e];
        }
    }
}

/* dk_j += scale Σ_t dS_tj q_t and dv_j += Σ_t P_tj dout_t for the block's BC keys, over
 * every query head of the kv head's group. */
__global__ void __launch_bounds__(THREADS)
attention_backward_dkdv_kernel(float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               int T, int H, int Hkv, int hd, int window, float scale) {
    extern __shared__ float shared[];
    float *k_tile = shared;                    /* [BC][hd+1] */
    float *v_tile = k_tile + BC * (hd + 1);    /* [BC][hd+1] */
    float *q_tile = v_tile + BC * (hd + 1);    /* [BR][hd]   */
    float *dout_tile = q_tile + BR * hd;       /* [BR][hd]   */
    float *p_tile = dout_tile + BR * hd;       /* [BR][BC+1] */
    float *ds_tile = p_tile + BR * (BC + 1);   /* [BR][BC+1] */
    float *D_tile = ds_tile + BR * (BC + 1);   /* [BR] */
    float *lse_tile = D_tile + BR;             /* [BR] */
    const int b = blockIdx.z, g = blockIdx.y, j0 = blockIdx.x * BC, group = H / Hkv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    load_tile(k_tile, hd + 1, k, b, j0, BC, Hkv, g, T, hd);
    load_tile(v_tile, hd + 1, v, b, j0, BC, Hkv, g, T, hd);
    float dk_acc[KEYS_PER_WARP][DIMS_PER_LANE], dv_acc[KEYS_PER_WARP][DIMS_PER_LANE];
#pragma unroll
    for (int c = 0; c < KEYS_PER_WARP; c++)
#pragma unroll
        for (int e = 0; e < DIMS_PER_LANE; e++) dk_acc[c][e] = dv_acc[c][e] = 0.0f;

    /* the last query row that sees any of the keys j0..j0+BC−1 */
    const int j_last = min(T - 1, j0 + BC - 1);
    const int t_end = window > 0 ? min(T - 1, j_last + window - 1) : T - 1;
    const int j = j0 + lane;
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int t0 = j0; t0 <= t_end; t0 += BR) {
            __syncthreads();   /* the previous query tile is consumed */
            load_tile(q_tile, hd, q, b, t0, BR, H, h, T, hd);
            load_tile(dout_tile, hd, dout, b, t0, BR, H, h, T, hd);
            __syncthreads();
#pragma unroll
            for (int i = 0; i < ROWS_PER_WARP; i++) {   /* D_t and lse_t of this warp's rows */
                const int r = warp * ROWS_PER_WARP + i, t = t0 + r;
                float partial = 0.0f;
                if (t < T)
                    for (int d = lane; d < hd; d += 32)
                        partial += dout_tile[r * hd + d] * out[token_row(b, t, H, h, T) * hd + d];
                partial = warp_sum(partial);
                if (lane == 0) {
                    D_tile[r] = partial;
                    lse_tile[r] = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f;
                }
            }
            /* P and dS for the tile: warp rows, lane = key */
            float s[ROWS_PER_WARP], dp[ROWS_PER_WARP];
#pragma unroll
            for (int i = 0; i < ROWS_PER_WARP; i++) s[i] = dp[i] = 0.0f;
            for (int d = 0; d < hd; d++) {
                const float kd = k_tile[lane * (hd + 1) + d], vd = v_tile[lane * (hd + 1) + d];
#pragma unroll
                for (int i = 0; i < ROWS_PER_WARP; i++) {
                    const int r = warp * ROWS_PER_WARP + i;
                    s[i] += q_tile[r * hd + d] * kd;
                    dp[i] += dout_tile[r * hd + d] * vd;
                }
            }
            __syncwarp();   /* lane 0's D_tile/lse_tile writes for this warp's rows */
#pragma unroll
            for (int i = 0; i < ROWS_PER_WARP; i++) {
                const int r = warp * ROWS_PER_WARP + i, t = t0 + r;
                const bool visible = t < T && j < T && j <= t && j >= first_visible_key(t, window);
                const float p = visible ? expf(scale * s[i] - lse_tile[r]) : 0.0f;
                p_tile[r * (BC + 1) + lane] = p;
                ds_tile[r * (BC + 1) + lane] = p * (dp[i] - D_tile[r]);
            }
            __syncthreads();
            /* accumulate: warp owns keys warp*KEYS_PER_WARP + c, lanes own dims */
            for (int r = 0; r < BR; r++) {
#pragma unroll
                for (int c = 0; c < KEYS_PER_WARP; c++) {
                    const int key = warp * KEYS_PER_WARP + c;
                    const float p = p_tile[r * (BC + 1) + key], ds = ds_tile[r * (BC + 1) + key];
#pragma unroll
                    for (int e = 0; e < DIMS_PER_LANE; e++) {
                        const int d = lane + 32 * e;
                        if (d < hd) {
                            dv_acc[c][e] += p * dout_tile[r * hd + d];
                            dk_acc[c][e] += ds * q_tile[r * hd + d];
                        }
                    }
                }
            }
        }
    }

#pragma unroll
    for (int c = 0; c < KEYS_PER_WARP; c++) {
        const int key = j0 + warp * KEYS_PER_WARP + c;
        if (key >= T) continue;
        const size_t row = token_row(b, key, Hkv, g, T) * hd;
#pragma unroll
        for (int e = 0; e < DIMS_PER_LANE; e++) {
            const int d = lane + 32 * e;
            if (d < hd) {
                if (dk) dk[row + d] += scale * dk_acc[c][e];
                if (dv) dv[row + d] += dv_acc[c][e];
            }
        }
    }
}

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

extern "C" void attention_forward_cuda(float *out, float *lse, const float *q, const float *k,
                                       const float *v, int B, int T, int H, int Hkv, int hd,
                                       int window, cudaStream_t stream) {
    attention_check_shape(H, Hkv, hd);
    if (B <= 0 || T <= 0) return;
    const size_t bytes = sizeof(float) * (BR * hd + BC * (hd + 1) + BC * hd);
    allow_shared_memory((const void *)attention_forward_kernel, bytes);
    const dim3 grid((T + BR - 1) / BR, H, B);
    attention_forward_kernel<<<grid, THREADS, bytes, stream>>>(out, lse, q, k, v, T, H, Hkv, hd,
                                                               window, 1.0f / sqrtf((float)hd));
    CUDA_CHECK_LAUNCH();
}

extern "C" void attention_backward_cuda(float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v,
                                        const float *out, const float *lse, int B, int T, int H,
                                        int Hkv, int hd, int window, cudaStream_t stream) {
    attention_check_shape(H, Hkv, hd);
    if (B <= 0 || T <= 0) return;
    const float scale = 1.0f / sqrtf((float)hd);
    if (dq) {
        const size_t bytes = sizeof(float) * (2 * BR * hd + 2 * BC * (hd + 1));
        allow_shared_memory((const void *)attention_backward_dq_kernel, bytes);
        const dim3 grid((T + BR - 1) / BR, H, B);
        attention_backward_dq_kernel<<<grid, THREADS, bytes, stream>>>(
            dq, dout, q, k, v, out, lse, T, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
    if (dk || dv) {
        const size_t bytes =
            sizeof(float) * (2 * BC * (hd + 1) + 2 * BR * hd + 2 * BR * (BC + 1) + 2 * BR);
        allow_shared_memory((const void *)attention_backward_dkdv_kernel, bytes);
        const dim3 grid((T + BC - 1) / BC, Hkv, B);
        attention_backward_dkdv_kernel<<<grid, THREADS, bytes, stream>>>(
            dk, dv, dout, q, k, v, out, lse, T, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
}
