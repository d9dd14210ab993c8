/* gla.cu — gated linear attention's chunked kernel on the GPU (CPU reference and layouts:
 * layers/gla_cpu.h / gla_cpu.c), and the GLA layer's elementwise decay kernels.
 *
 * Per (batch b, head h), with S_{−1} = 0 (dk × dv, float32):
 *     S_t = diag(α_t) S_{t−1} + k_tᵀ v_t,    o_t = scale · q_t S_t,    α_t = exp(log_alpha_t)
 *
 * Work split. One thread block per (value slice, head, batch): a slice is GLA_SLICE = 32
 * adjacent value columns e0 .. e0+31 (the last slice may be narrower). Columns of S, o
 * and dv do not mix in forward (S_t[:, e] needs only v_t[e]), so each block keeps its own
 * dk × 32 slice of the state in shared memory and walks the tokens in order. The
 * intra-chunk attention matrix A (below), which every slice needs, is recomputed by each
 * slice's block: cheap next to the state work, and it keeps blocks independent.
 *
 * Tiles. The block walks each chunk in tiles of at most GLA_TILE = 16 tokens that never
 * cross a chunk boundary, so every chunk start is a tile start (where the state is
 * saved) and the on-chip arrays do not depend on the configured chunk length. A tile
 * from start state S0 is exactly the CPU's chunk step (b_t: the cumulative log decay from
 * the tile's first token, so every exponent below is ≤ 0 and nothing overflows):
 *     A_tj  = Σ_c q_tc k_jc e^{b_tc − b_jc}                      (j ≤ t)
 *     o_t   = scale · [ (q_t ⊙ e^{b_t}) S0 + Σ_{j ≤ t} A_tj v_j ]
 *     S_end = diag(e^{b_last}) S0 + Σ_j (k_j ⊙ e^{b_last − b_j})ᵀ v_j
 * Cutting a chunk into tiles changes only rounding, not the math.
 *
 * Backward walks the chunks last to first. For each chunk it first recomputes, from the
 * saved chunk-start state, the states entering the chunk's 2nd, 3rd, ... tiles (into
 * global scratch, one dk × 32 slice per tile), then walks the chunk's tiles last to first
 * with dS = ∂L/∂S_end carried in shared memory (the formulas above each step in the
 * kernel). dq, dk and dlog α sum over all value columns, i.e. over the slices: each block
 * WRITES its share into a per-slice partial buffer, and a second kernel adds the slices
 * in a fixed order into grad_q, grad_k, grad_log_alpha. No atomics anywhere: the same
 * inputs give the same bits. dv and dS stay within a slice, so grad_v is added to
 * directly (each element has exactly one writing thread).
 *
 * exp: expf (not __expf), as in the other kernels: the fast intrinsic would put the
 * result further from the CPU's than the tests allow. All arithmetic is float32.
 *
 * This is the plain, correct first version: CUDA cores only, one block per
 * (slice, head, batch) walking the sequence serially. Tensor cores and a parallel
 * scan over chunks are later work. */
#include <stdio.h>
#include <stdlib.h>

#include "cuda_check.h"
#include "gla_cuda.h"
#include "grid.cuh"

#define GLA_TILE 16      /* tokens per on-chip tile */
#define GLA_SLICE 32     /* value columns per block */
#define GLA_THREADS 256
/* Row strides in shared memory: rows of key-like tiles (q, k, b, dq, dk) are dk + 1 floats
 * and rows of value-like tiles and states (v, g, S, dS) 33, so threads walking different
 * rows in lock step hit different banks. */
#define VAL_LD (GLA_SLICE + 1)

__host__ __device__ static inline int key_ld(int dk) { return dk + 1; }

/* forward: Q, K, Bc [TILE][dk+1]; V [TILE][33]; A [TILE][TILE]; S [dk][33] */
static size_t forward_smem_floats(int dk) {
    return 3 * (size_t)GLA_TILE * key_ld(dk) + (size_t)GLA_TILE * VAL_LD +
           (size_t)GLA_TILE * GLA_TILE + (size_t)dk * VAL_LD;
}

/* backward: Q, K, Bc, dQ, dK [TILE][dk+1]; V, G [TILE][33]; A, dA [TILE][TILE];
 * S0, dS [dk][33]. At dk = 256: 156 KiB. */
static size_t backward_smem_floats(int dk) {
    return 5 * (size_t)GLA_TILE * key_ld(dk) + 2 * (size_t)GLA_TILE * VAL_LD +
           2 * (size_t)GLA_TILE * GLA_TILE + 2 * (size_t)dk * VAL_LD;
}

static int value_slices(int dv) { return (dv + GLA_SLICE - 1) / GLA_SLICE; }

/* Tiles in the longest chunk (a chunk longer than T is cut to T). */
static int tiles_per_chunk(int T, int chunk) {
    const int span = chunk < T ? chunk : T;
    return (span + GLA_TILE - 1) / GLA_TILE;
}

/* ---------------------------------------------------------------- block helpers
 * Every thread of the block calls these; none synchronises (the kernels do, between). */

/* tile[r·ld + c] = src[r·stride + c] for r < rows, c < cols; 0 for the rest of the
 * GLA_TILE × cols_pad block (padding columns must be 0: sums run over all of them). */
__device__ static void load_tile(float *tile, int ld, const float *src, size_t stride, int rows,
                                 int cols, int cols_pad) {
    for (int i = threadIdx.x; i < GLA_TILE * cols_pad; i += blockDim.x) {
        const int r = i / cols_pad, c = i % cols_pad;
        tile[r * ld + c] = (r < rows && c < cols) ? src[(size_t)r * stride + c] : 0.0f;
    }
}

/* Bc[t·ld + c] = Σ_{s ≤ t} la[s·stride + c] for t < rows: the log decay accumulated
 * from the tile's first token, summed in the CPU's order. */
__device__ static void load_cumulative_decay(float *Bc, int ld, const float *la, size_t stride,
                                             int rows, int dk) {
    for (int c = threadIdx.x; c < dk; c += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < rows; t++) {
            acc += la[(size_t)t * stride + c];
            Bc[t * ld + c] = acc;
        }
    }
}

/* The state slice S[c][e] (row stride VAL_LD) from / to global rows of stride ld; columns
 * e ≥ W are padding, kept 0 in shared memory and never stored. Element (c, e) belongs to
 * thread i = c·GLA_SLICE + e (mod blockDim) here and in advance_state. */
__device__ static void load_state(float *S, const float *src, size_t ld, int dk, int W) {
    for (int i = threadIdx.x; i < dk * GLA_SLICE; i += blockDim.x) {
        const int c = i / GLA_SLICE, e = i % GLA_SLICE;
        S[c * VAL_LD + e] = e < W ? src[(size_t)c * ld + e] : 0.0f;
    }
}

__device__ static void store_state(float *dst, size_t ld, const float *S, int dk, int W) {
    for (int i = threadIdx.x; i < dk * GLA_SLICE; i += blockDim.x) {
        const int c = i / GLA_SLICE, e = i % GLA_SLICE;
        if (e < W) dst[(size_t)c * ld + e] = S[c * VAL_LD + e];
    }
}

/* In place: K[j] ← k_j ⊙ e^{b_last − b_j} and, when Q is not NULL, Q[t] ← q_t ⊙ e^{b_t}. */
__device__ static void decay_tile(float *Q, float *K, const float *Bc, int ldk, int rows, int dk) {
    const float *blast = Bc + (rows - 1) * ldk;
    for (int i = threadIdx.x; i < rows * dk; i += blockDim.x) {
        const int t = i / dk, c = i % dk;
        const float bt = Bc[t * ldk + c];
        K[t * ldk + c] *= expf(blast[c] - bt);
        if (Q) Q[t * ldk + c] *= expf(bt);
    }
}

/* S ← diag(e^{b_last}) S + Σ_{j < rows} Kd_jᵀ v_j, with Kd from decay_tile. */
__device__ static void advance_state(float *S, const float *Kd, const float *V, const float *Bc,
                                     int ldk, int rows, int dk) {
    const float *blast = Bc + (rows - 1) * ldk;
    for (int i = threadIdx.x; i < dk * GLA_SLICE; i += blockDim.x) {
        const int c = i / GLA_SLICE, e = i % GLA_SLICE;
        float s = expf(blast[c]) * S[c * VAL_LD + e];
        for (int j = 0; j < rows; j++) s += Kd[j * ldk + c] * V[j * VAL_LD + e];
        S[c * VAL_LD + e] = s;
    }
}

/* ---------------------------------------------------------------- forward */

/* grid (value slices, H, B), GLA_THREADS threads. Per tile of L ≤ GLA_TILE tokens, from
 * the state S0 entering it:
 *     A_tj  = Σ_c q_tc k_jc e^{b_tc − b_jc}                       (j ≤ t < L)
 *     o_t   = scale · [ (q_t ⊙ e^{b_t}) S0 + Σ_{j ≤ t} A_tj v_j ]
 *     S    ← diag(e^{b_last}) S0 + Σ_j (k_j ⊙ e^{b_last − b_j})ᵀ v_j
 * The state entering each chunk is written to chunk_states before the chunk's first
 * tile; S after the last token to final_state (if given). */
__global__ void __launch_bounds__(GLA_THREADS)
gla_chunk_forward_kernel(float *o, float *chunk_states, float *final_state, const float *q,
                         const float *k, const float *v, const float *log_alpha, int T, int H,
                         int dk, int dv, int chunk, float scale) {
    extern __shared__ float smem[];
    const int ldk = key_ld(dk);
    float *Q = smem, *K = Q + GLA_TILE * ldk, *Bc = K + GLA_TILE * ldk;
    float *V = Bc + GLA_TILE * ldk, *A = V + GLA_TILE * VAL_LD, *S = A + GLA_TILE * GLA_TILE;
    const int e0 = blockIdx.x * GLA_SLICE, W = min(GLA_SLICE, dv - e0);
    const int h = blockIdx.y, b = blockIdx.z;
    const size_t sk = (size_t)H * dk, sv = (size_t)H * dv, state = (size_t)dk * dv;
    const int n_chunks = (T + chunk - 1) / chunk;
    /* this (b, h)'s chunk states, moved to the slice's first column */
    float *states = chunk_states + ((size_t)b * H + h) * n_chunks * state + e0;

    for (int i = threadIdx.x; i < dk * VAL_LD; i += blockDim.x) S[i] = 0.0f;
    __syncthreads();
    for (int n = 0; n < n_chunks; n++) {
        const int tc1 = min(T, (n + 1) * chunk);
        store_state(states + (size_t)n * state, dv, S, dk, W);
        for (int t0 = n * chunk; t0 < tc1; t0 += GLA_TILE) {
            const int L = min(GLA_TILE, tc1 - t0);
            const size_t rk = ((size_t)b * T + t0) * sk + (size_t)h * dk;        /* (b, t0, h, 0) */
            const size_t rv = ((size_t)b * T + t0) * sv + (size_t)h * dv + e0;   /* (b, t0, h, e0) */
            load_tile(Q, ldk, q + rk, sk, L, dk, dk);
            load_tile(K, ldk, k + rk, sk, L, dk, dk);
            load_tile(V, VAL_LD, v + rv, sv, L, W, GLA_SLICE);
            load_cumulative_decay(Bc, ldk, log_alpha + rk, sk, L, dk);
            __syncthreads();
            /* A_tj, thread per (t, j); 0 above the diagonal and past the tile's end */
            for (int i = threadIdx.x; i < GLA_TILE * GLA_TILE; i += blockDim.x) {
                const int t = i / GLA_TILE, j = i % GLA_TILE;
                float a = 0.0f;
                if (t < L && j <= t)
                    for (int c = 0; c < dk; c++)
                        a += Q[t * ldk + c] * K[j * ldk + c] * expf(Bc[t * ldk + c] - Bc[j * ldk + c]);
                A[i] = a;
            }
            __syncthreads();   /* A has read the raw q, k */
            decay_tile(Q, K, Bc, ldk, L, dk);
            __syncthreads();
            /* o_t, thread per (t, e) */
            for (int i = threadIdx.x; i < L * GLA_SLICE; i += blockDim.x) {
                const int t = i / GLA_SLICE, e = i % GLA_SLICE;
                if (e >= W) continue;
                float s = 0.0f;
                for (int c = 0; c < dk; c++) s += Q[t * ldk + c] * S[c * VAL_LD + e];
                for (int j = 0; j <= t; j++) s += A[t * GLA_TILE + j] * V[j * VAL_LD + e];
                o[rv + (size_t)t * sv + e] = scale * s;
            }
            __syncthreads();   /* o has read S0 */
            advance_state(S, K, V, Bc, ldk, L, dk);
            __syncthreads();   /* the next tile's loads overwrite Q, K, V, Bc */
        }
    }
    if (final_state) store_state(final_state + ((size_t)b * H + h) * state + e0, dv, S, dk, W);
}

/* ---------------------------------------------------------------- backward */

/* grid (value slices, H, B), GLA_THREADS threads. Per chunk, last to first: recompute the
 * states entering its tiles 1, 2, ... into tile_states; then per tile, last to first,
 * with S0 the state entering it, S_end the state leaving it, dS = ∂L/∂S_end (0 after the
 * last token) and g_t = ∂L/∂o_t over this block's columns:
 *     dA_tj  = scale · g_t · v_j                                       (j ≤ t; this slice's share)
 *     dq_t   = scale · e^{b_t} ⊙ (S0 g_tᵀ) + Σ_{j ≤ t} dA_tj k_j ⊙ e^{b_t − b_j}
 *     dk_j   = Σ_{t ≥ j} dA_tj q_t ⊙ e^{b_t − b_j} + e^{b_last − b_j} ⊙ (dS v_jᵀ)
 *     dv_j  += scale · Σ_{t ≥ j} A_tj g_t + (k_j ⊙ e^{b_last − b_j}) dS
 *     ∂L/∂b_t = q_t ⊙ dq_t − k_t ⊙ dk_t (+ rowsum(dS ⊙ S_end) at t = last);
 *     ∂L/∂log α_s = Σ_{t ≥ s in the tile} ∂L/∂b_t
 *     dS    ← diag(e^{b_last}) dS + scale · Σ_t (q_t ⊙ e^{b_t})ᵀ g_t   (to the tile before)
 * dq, dk, dlog α are linear in this slice's g and dS, so the slices' shares add up:
 * they are WRITTEN to dq_part, dk_part, dlog_part [slice][B][T][H][dk] (dlog_part may be
 * NULL: skipped). grad_v is ACCUMULATED. tile_states: per block, (tiles_per_chunk − 1)
 * slices of dk × GLA_SLICE floats. */
__global__ void __launch_bounds__(GLA_THREADS)
gla_chunk_backward_kernel(float *grad_v, float *dq_part, float *dk_part, float *dlog_part,
                          float *tile_states, const float *grad_o, const float *q, const float *k,
                          const float *v, const float *log_alpha, const float *chunk_states, int T,
                          int H, int dk, int dv, int chunk, float scale, int n_tiles_max) {
    extern __shared__ float smem[];
    const int ldk = key_ld(dk);
    float *Q = smem, *K = Q + GLA_TILE * ldk, *Bc = K + GLA_TILE * ldk;
    float *dQ = Bc + GLA_TILE * ldk, *dK = dQ + GLA_TILE * ldk;
    float *V = dK + GLA_TILE * ldk, *G = V + GLA_TILE * VAL_LD;
    float *A = G + GLA_TILE * VAL_LD, *dA = A + GLA_TILE * GLA_TILE;
    float *S0 = dA + GLA_TILE * GLA_TILE, *dS = S0 + dk * VAL_LD;
    const int slice = blockIdx.x, e0 = slice * GLA_SLICE, W = min(GLA_SLICE, dv - e0);
    const int h = blockIdx.y, b = blockIdx.z;
    const size_t sk = (size_t)H * dk, sv = (size_t)H * dv, state = (size_t)dk * dv;
    const size_t tile_state = (size_t)dk * GLA_SLICE;
    const int n_chunks = (T + chunk - 1) / chunk;
    const size_t part = (size_t)gridDim.z * T * sk;   /* one slice's (B,T,H,dk) partial */
    float *dqp = dq_part + slice * part, *dkp = dk_part + slice * part;
    float *dlp = dlog_part ? dlog_part + slice * part : NULL;
    const float *states = chunk_states + ((size_t)b * H + h) * n_chunks * state + e0;
    float *tstates = tile_states + (((size_t)b * H + h) * gridDim.x + slice) * (n_tiles_max - 1) * tile_state;

    for (int i = threadIdx.x; i < dk * VAL_LD; i += blockDim.x) dS[i] = 0.0f;
    __syncthreads();
    for (int n = n_chunks - 1; n >= 0; n--) {
        const int tc0 = n * chunk, tc1 = min(T, tc0 + chunk);
        const int n_tiles = (tc1 - tc0 + GLA_TILE - 1) / GLA_TILE;
        const float *S_chunk = states + (size_t)n * state;
        const float *S_next = n + 1 < n_chunks ? states + (size_t)(n + 1) * state : NULL;

        /* the states entering tiles 1 .. n_tiles−1: forward's tile step from the chunk's
         * saved start, S0 as the running state; tile ti's end goes to tstates[ti] */
        if (n_tiles > 1) {
            load_state(S0, S_chunk, dv, dk, W);
            for (int ti = 0; ti < n_tiles - 1; ti++) {
                const int t0 = tc0 + ti * GLA_TILE, L = min(GLA_TILE, tc1 - t0);
                const size_t rk = ((size_t)b * T + t0) * sk + (size_t)h * dk;
                const size_t rv = ((size_t)b * T + t0) * sv + (size_t)h * dv + e0;
                load_tile(K, ldk, k + rk, sk, L, dk, dk);
                load_tile(V, VAL_LD, v + rv, sv, L, W, GLA_SLICE);
                load_cumulative_decay(Bc, ldk, log_alpha + rk, sk, L, dk);
                __syncthreads();
                decay_tile(NULL, K, Bc, ldk, L, dk);
                __syncthreads();
                advance_state(S0, K, V, Bc, ldk, L, dk);
                store_state(tstates + (size_t)ti * tile_state, GLA_SLICE, S0, dk, W);
                __syncthreads();
            }
        }

        for (int ti = n_tiles - 1; ti >= 0; ti--) {
            const int t0 = tc0 + ti * GLA_TILE, L = min(GLA_TILE, tc1 - t0);
            const size_t rk = ((size_t)b * T + t0) * sk + (size_t)h * dk;
            const size_t rv = ((size_t)b * T + t0) * sv + (size_t)h * dv + e0;
            const float *S_start = ti == 0 ? S_chunk : tstates + (size_t)(ti - 1) * tile_state;
            const size_t ld_start = ti == 0 ? (size_t)dv : GLA_SLICE;
            /* NULL only after the last token, where dS = 0 */
            const float *S_end = ti == n_tiles - 1 ? S_next : tstates + (size_t)ti * tile_state;
            const size_t ld_end = ti == n_tiles - 1 ? (size_t)dv : GLA_SLICE;
            const float *blast = Bc + (L - 1) * ldk;
            load_tile(Q, ldk, q + rk, sk, L, dk, dk);
            load_tile(K, ldk, k + rk, sk, L, dk, dk);
            load_tile(V, VAL_LD, v + rv, sv, L, W, GLA_SLICE);
            load_tile(G, VAL_LD, grad_o + rv, sv, L, W, GLA_SLICE);
            load_cumulative_decay(Bc, ldk, log_alpha + rk, sk, L, dk);
            load_state(S0, S_start, ld_start, dk, W);
            __syncthreads();

            /* A_tj and this slice's dA_tj, thread per (t, j) */
            for (int i = threadIdx.x; i < GLA_TILE * GLA_TILE; i += blockDim.x) {
                const int t = i / GLA_TILE, j = i % GLA_TILE;
                float a = 0.0f, g = 0.0f;
                if (t < L && j <= t) {
                    for (int c = 0; c < dk; c++)
                        a += Q[t * ldk + c] * K[j * ldk + c] * expf(Bc[t * ldk + c] - Bc[j * ldk + c]);
                    for (int e = 0; e < GLA_SLICE; e++) g += G[t * VAL_LD + e] * V[j * VAL_LD + e];
                    g *= scale;
                }
                A[i] = a;
                dA[i] = g;
            }
            __syncthreads();

            /* dq_t[c] and dk_t[c] (t in the role of j for dk), thread per (t, c) */
            for (int i = threadIdx.x; i < L * dk; i += blockDim.x) {
                const int t = i / dk, c = i % dk;
                const float bt = Bc[t * ldk + c];
                float s0g = 0.0f, dsv = 0.0f;
                for (int e = 0; e < GLA_SLICE; e++) {
                    s0g += S0[c * VAL_LD + e] * G[t * VAL_LD + e];
                    dsv += dS[c * VAL_LD + e] * V[t * VAL_LD + e];
                }
                float dq = scale * expf(bt) * s0g;
                for (int j = 0; j <= t; j++)
                    dq += dA[t * GLA_TILE + j] * K[j * ldk + c] * expf(bt - Bc[j * ldk + c]);
                float dkk = expf(blast[c] - bt) * dsv;
                for (int s = t; s < L; s++)
                    dkk += dA[s * GLA_TILE + t] * Q[s * ldk + c] * expf(Bc[s * ldk + c] - bt);
                dQ[t * ldk + c] = dq;
                dK[t * ldk + c] = dkk;
            }
            __syncthreads();

            /* ∂L/∂log α as a reverse running sum of ∂L/∂b, thread per key channel c */
            if (dlp)
                for (int c = threadIdx.x; c < dk; c += blockDim.x) {
                    float row = 0.0f;
                    if (S_end)
                        for (int e = 0; e < W; e++) row += dS[c * VAL_LD + e] * S_end[(size_t)c * ld_end + e];
                    for (int t = L - 1; t >= 0; t--) {
                        row += Q[t * ldk + c] * dQ[t * ldk + c] - K[t * ldk + c] * dK[t * ldk + c];
                        dlp[rk + (size_t)t * sk + c] = row;
                    }
                }
            for (int i = threadIdx.x; i < L * dk; i += blockDim.x) {
                const int t = i / dk, c = i % dk;
                dqp[rk + (size_t)t * sk + c] = dQ[t * ldk + c];
                dkp[rk + (size_t)t * sk + c] = dK[t * ldk + c];
            }
            __syncthreads();   /* done with the raw q, k */

            decay_tile(Q, K, Bc, ldk, L, dk);   /* Q ← q ⊙ e^{b_t}, K ← k ⊙ e^{b_last − b_t} */
            __syncthreads();

            /* dv_j, thread per (j, e); the only writer of its element */
            for (int i = threadIdx.x; i < L * GLA_SLICE; i += blockDim.x) {
                const int j = i / GLA_SLICE, e = i % GLA_SLICE;
                if (e >= W) continue;
                float s = 0.0f;
                for (int t = j; t < L; t++) s += A[t * GLA_TILE + j] * G[t * VAL_LD + e];
                s *= scale;
                for (int c = 0; c < dk; c++) s += K[j * ldk + c] * dS[c * VAL_LD + e];
                grad_v[rv + (size_t)j * sv + e] += s;
            }
            __syncthreads();   /* everything above has read dS */

            /* dS ← ∂L/∂S0, thread per (c, e) */
            for (int i = threadIdx.x; i < dk * GLA_SLICE; i += blockDim.x) {
                const int c = i / GLA_SLICE, e = i % GLA_SLICE;
                float s = 0.0f;
                for (int t = 0; t < L; t++) s += Q[t * ldk + c] * G[t * VAL_LD + e];
                dS[c * VAL_LD + e] = expf(blast[c]) * dS[c * VAL_LD + e] + scale * s;
            }
            __syncthreads();   /* the next tile's loads overwrite the tiles */
        }
    }
}

/* grad[i] += Σ_s part[s·n + i] over the slices s in order (q, k, and log α if given). */
__global__ void gla_sum_partials_kernel(float *grad_q, float *grad_k, float *grad_log_alpha,
                                        const float *dq_part, const float *dk_part,
                                        const float *dlog_part, int n_slices, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float sq = 0.0f, sk = 0.0f, sl = 0.0f;
        for (int s = 0; s < n_slices; s++) {
            sq += dq_part[(size_t)s * n + i];
            sk += dk_part[(size_t)s * n + i];
            if (grad_log_alpha) sl += dlog_part[(size_t)s * n + i];
        }
        grad_q[i] += sq;
        grad_k[i] += sk;
        if (grad_log_alpha) grad_log_alpha[i] += sl;
    }
}

/* ---------------------------------------------------------------- decay kernels */

/* log σ(x) without overflow for large |x| (the CPU layer's log_sigmoid_f). */
__device__ static inline float log_sigmoid_device(float x) {
    return x < 0.0f ? x - log1pf(expf(x)) : -log1pf(expf(-x));
}

__global__ void gla_log_decay_gated_kernel(float *log_alpha, const float *pre, size_t n, float inv) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        log_alpha[i] = log_sigmoid_device(pre[i]) * inv;
}

/* d/dx log σ(x) = σ(−x) = 1 / (1 + e^x) */
__global__ void gla_log_decay_gated_backward_kernel(float *grad, const float *pre, size_t n, float inv) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        grad[i] *= 1.0f / (1.0f + expf(pre[i])) * inv;
}

/* log(1 − 2^(−5−h)) in double, rounded once, as the CPU layer computes it. */
__global__ void gla_log_decay_retention_kernel(float *log_alpha, size_t n, int H, int dk) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int h = (int)((i / (size_t)dk) % (size_t)H);
        log_alpha[i] = (float)log1p(-ldexp(1.0, -5 - h));
    }
}

/* ---------------------------------------------------------------- launchers */

static void check_gla_shape(int dk, int dv, int chunk, const char *who) {
    if (dk < 1 || dk > GLA_CUDA_MAX_DK || dv < 1 || chunk < 1) {
        fprintf(stderr, "%s:%d: %s: per-head dk = %d, dv = %d, chunk = %d unsupported "
                "(need 1 ≤ dk ≤ %d, dv ≥ 1, chunk ≥ 1)\n",
                __FILE__, __LINE__, who, dk, dv, chunk, GLA_CUDA_MAX_DK);
        abort();
    }
}

extern "C" void gla_chunk_forward_cuda(float *o, float *chunk_states, float *final_state,
                                       const float *q, const float *k, const float *v,
                                       const float *log_alpha, int B, int T, int H, int dk, int dv,
                                       int chunk, float scale, float *scratch, cudaStream_t stream) {
    (void)scratch;   /* the CPU kernel's argument; the GPU forward needs none */
    check_gla_shape(dk, dv, chunk, "gla_chunk_forward_cuda");
    if (B <= 0 || T <= 0 || H <= 0) return;
    const size_t smem_bytes = forward_smem_floats(dk) * sizeof(float);
    /* above 48 KiB a kernel must opt in to the larger shared memory */
    CUDA_CHECK(cudaFuncSetAttribute(gla_chunk_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem_bytes));
    const dim3 grid((unsigned)value_slices(dv), (unsigned)H, (unsigned)B);
    gla_chunk_forward_kernel<<<grid, GLA_THREADS, smem_bytes, stream>>>(
        o, chunk_states, final_state, q, k, v, log_alpha, T, H, dk, dv, chunk, scale);
    CUDA_CHECK_LAUNCH();
}

/* scratch: dq_part, dk_part, dlog_part (slices · B·T·H·dk each), then the recomputed
 * tile states (B·H·slices blocks × (tiles_per_chunk − 1) × dk × GLA_SLICE). */
extern "C" size_t gla_chunk_backward_cuda_scratch_floats(int B, int T, int H, int dk, int dv, int chunk) {
    if (B <= 0 || T <= 0 || H <= 0 || dk <= 0 || dv <= 0 || chunk <= 0) return 0;
    const size_t slices = (size_t)value_slices(dv), n = (size_t)B * T * H * dk;
    const size_t inner = (size_t)(tiles_per_chunk(T, chunk) - 1);
    return 3 * slices * n + (size_t)B * H * slices * inner * dk * GLA_SLICE;
}

extern "C" void gla_chunk_backward_cuda(float *grad_q, float *grad_k, float *grad_v,
                                        float *grad_log_alpha, const float *grad_o, const float *q,
                                        const float *k, const float *v, const float *log_alpha,
                                        const float *chunk_states, int B, int T, int H, int dk,
                                        int dv, int chunk, float scale, float *scratch,
                                        cudaStream_t stream) {
    check_gla_shape(dk, dv, chunk, "gla_chunk_backward_cuda");
    if (B <= 0 || T <= 0 || H <= 0) return;
    const int slices = value_slices(dv);
    const size_t n = (size_t)B * T * H * dk;
    float *dq_part = scratch, *dk_part = dq_part + slices * n, *dlog_part = dk_part + slices * n;
    float *tile_states = dlog_part + slices * n;
    const size_t smem_bytes = backward_smem_floats(dk) * sizeof(float);
    CUDA_CHECK(cudaFuncSetAttribute(gla_chunk_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem_bytes));
    const dim3 grid((unsigned)slices, (unsigned)H, (unsigned)B);
    gla_chunk_backward_kernel<<<grid, GLA_THREADS, smem_bytes, stream>>>(
        grad_v, dq_part, dk_part, grad_log_alpha ? dlog_part : NULL, tile_states, grad_o, q, k, v,
        log_alpha, chunk_states, T, H, dk, dv, chunk, scale, tiles_per_chunk(T, chunk));
    CUDA_CHECK_LAUNCH();
    gla_sum_partials_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(
        grad_q, grad_k, grad_log_alpha, dq_part, dk_part, dlog_part, slices, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void gla_log_decay_gated_cuda(float *log_alpha, const float *pre, size_t n,
                                         float inv_normalizer, cudaStream_t stream) {
    if (n == 0) return;
    gla_log_decay_gated_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(log_alpha, pre, n, inv_normalizer);
    CUDA_CHECK_LAUNCH();
}

extern "C" void gla_log_decay_gated_backward_cuda(float *grad, const float *pre, size_t n,
                                                  float inv_normalizer, cudaStream_t stream) {
    if (n == 0) return;
    gla_log_decay_gated_backward_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(grad, pre, n,
                                                                                   inv_normalizer);
    CUDA_CHECK_LAUNCH();
}

extern "C" void gla_log_decay_retention_cuda(float *log_alpha, size_t N, int H, int dk,
                                             cudaStream_t stream) {
    const size_t n = N * (size_t)H * dk;
    if (n == 0) return;
    gla_log_decay_retention_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(log_alpha, n, H, dk);
    CUDA_CHECK_LAUNCH();
}
