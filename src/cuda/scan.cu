/* scan.cu — Mamba-1's chunked selective scan on the GPU (CPU reference:
 * selective_scan_forward/backward in layers/mamba_cpu.c; shapes in mamba_cpu.h):
 *   h_t = exp(δ_t A_c) ⊙ h_{t−1} + (δ_t u_t) B_t      h: an N-vector per (b, channel c)
 *   y_t = h_t · C_t + D_c u_t
 * Forward writes y and the state entering every chunk; backward walks the chunks last to
 * first, recomputes a chunk's states from its saved start state and runs the reverse
 * recurrence dh_t = dy_t C_t + exp(δ_{t+1} A) ⊙ dh_{t+1}.
 *
 * Work split (both kernels): one thread per (b, c, n). A group of NP lanes (N rounded up
 * to a power of two, ≤ 32; lanes n ≥ N carry A = B = C = 0 and stay exactly zero) holds
 * one channel's state, so the sum over n (y, dδ, du) is a few xor shuffles inside the
 * group, and a block of 256 threads holds 256/NP adjacent channels of one batch row.
 * The time loop is sequential. Its inputs are staged per tile of time steps into shared
 * memory with coalesced loads (u, δ, dy: the block's channels are contiguous; B, C: one
 * row of N), so the recurrence itself waits only on shared memory and the exp; outputs go
 * through shared memory too and are written back coalesced.
 *
 * Backward: a chunk is processed in sub-tiles of SCAN_BWD_TILE steps, last first. The
 * sub-tile's states are recomputed into shared memory (one column per thread, no sharing),
 * then walked in reverse. The carried gradient exp(δA)·dh stays in a register across
 * sub-tiles and chunks. A sub-tile that does not start at its chunk's start first walks
 * the recurrence from the chunk start (reading global memory): with chunk ≤ SCAN_BWD_TILE
 * this never happens; with chunk = 64 it costs half a chunk of extra forward steps.
 * dB_t, dC_t are sums over all channels: a warp adds its channels with shuffles, the
 * block adds its warps in order, and each block writes its partial sum to scratch; dA,
 * dD are sums over the batch: each block writes its b's partial. A second kernel adds
 * the partials in a fixed order into dB, dC, dA, dD: no atomics, the same bits each run.
 *
 * exp: exp2f(δ · A·log2 e). A·log2 e is computed once per thread; exp2f is the hardware
 * ex2 with a couple of ulp error, well inside the 1e-4 the tests hold it to. */
#include <stdio.h>
#include <stdlib.h>

#include "cuda_check.h"
#include "mamba_cuda.h"
#include "grid.cuh"

#define SCAN_THREADS 256
#define SCAN_WARPS (SCAN_THREADS / 32)
#define SCAN_FWD_TILE 32   /* time steps staged per forward tile */
#define SCAN_BWD_TILE 32   /* time steps per backward sub-tile (its states live in smem) */
#define LOG2E 1.4426950408889634f

static int padded_state(int N) {
    int np = 4;
    while (np < N) np *= 2;
    return np;
}

static int channel_blocks(int channels, int N) {
    const int per_block = SCAN_THREADS / padded_state(N);
    return (channels + per_block - 1) / per_block;
}

/* ---------------------------------------------------------------- forward */

/* grid (channel blocks, Bsz); thread (channel cl = tid / NP, state n = tid % NP). */
template <int NP>
__global__ void __launch_bounds__(SCAN_THREADS)
selective_scan_forward_kernel(float *y, float *chunk_states, const float *u, const float *delta,
                              const float *A, const float *B, const float *C, const float *D,
                              int T, int channels, int N, int chunk) {
    constexpr int CB = SCAN_THREADS / NP;   /* channels per block */
    __shared__ float u_tile[SCAN_FWD_TILE][CB], dt_tile[SCAN_FWD_TILE][CB], y_tile[SCAN_FWD_TILE][CB];
    __shared__ float B_tile[SCAN_FWD_TILE][NP], C_tile[SCAN_FWD_TILE][NP];
    const int tid = threadIdx.x, cl = tid / NP, n = tid % NP;
    const int c0 = blockIdx.x * CB, c = c0 + cl, b = blockIdx.y;
    const bool active = c < channels && n < N;
    const int n_chunks = (T + chunk - 1) / chunk;
    const float A2 = active ? A[(size_t)c * N + n] * LOG2E : 0.0f;
    const float Dc = (c < channels && D) ? D[c] : 0.0f;
    float h = 0.0f;
    int next_save = 0, save_chunk = 0;   /* the next chunk start (no t % chunk per step) */

    for (int t0 = 0; t0 < T; t0 += SCAN_FWD_TILE) {
        const int len = min(SCAN_FWD_TILE, T - t0);
        __syncthreads();   /* the previous tile's y_tile has been written out */
        for (int i = tid; i < SCAN_FWD_TILE * CB; i += SCAN_THREADS) {
            const int s = i / CB, j = i % CB;
            const bool in = s < len && c0 + j < channels;
            const size_t at = ((size_t)b * T + t0 + s) * channels + c0 + j;
            u_tile[s][j] = in ? u[at] : 0.0f;
            dt_tile[s][j] = in ? delta[at] : 0.0f;
        }
        for (int i = tid; i < SCAN_FWD_TILE * NP; i += SCAN_THREADS) {
            const int s = i / NP, m = i % NP;
            const bool in = s < len && m < N;
            const size_t at = ((size_t)b * T + t0 + s) * N + m;
            B_tile[s][m] = in ? B[at] : 0.0f;
            C_tile[s][m] = in ? C[at] : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int s = 0; s < len; s++) {
            if (t0 + s == next_save) {   /* the state entering chunk save_chunk */
                if (active) chunk_states[(((size_t)b * n_chunks + save_chunk) * channels + c) * N + n] = h;
                next_save += chunk;
                save_chunk++;
            }
            const float dt = dt_tile[s][cl], uu = u_tile[s][cl];
            h = exp2f(dt * A2) * h + dt * uu * B_tile[s][n];
            float p = h * C_tile[s][n];
#pragma unroll
            for (int off = NP / 2; off > 0; off /= 2) p += __shfl_xor_sync(0xffffffffu, p, off);
            if (n == 0) y_tile[s][cl] = p + Dc * uu;
        }
        __syncthreads();
        for (int i = tid; i < len * CB; i += SCAN_THREADS) {
            const int s = i / CB, j = i % CB;
            if (c0 + j < channels) y[((size_t)b * T + t0 + s) * channels + c0 + j] = y_tile[s][j];
        }
    }
}

/* ---------------------------------------------------------------- backward */

/* Dynamic shared memory of the backward kernel, in floats. */
template <int NP>
struct ScanBackwardSmem {
    static constexpr int CB = SCAN_THREADS / NP;
    static constexpr int L = SCAN_BWD_TILE;
    static constexpr int states = 0;                   /* [L][threads] recomputed h */
    static constexpr int u = states + L * SCAN_THREADS; /* [L][CB] */
    static constexpr int dt = u + L * CB;
    static constexpr int dy = dt + L * CB;
    static constexpr int du = dy + L * CB;              /* [L][CB] Σ_n, before the write-out */
    static constexpr int ddt = du + L * CB;
    static constexpr int B = ddt + L * CB;              /* [L][NP] */
    static constexpr int C = B + L * NP;
    static constexpr int dB_warp = C + L * NP;          /* [L][warps][NP] per-warp Σ_c */
    static constexpr int dC_warp = dB_warp + L * SCAN_WARPS * NP;
    static constexpr int total = dC_warp + L * SCAN_WARPS * NP;
};

/* grid (channel blocks, Bsz). Partials written (not accumulated):
 *   dB_part, dC_part[blockIdx.x][b][t][n]   dA_part[b][c][n]   dD_part[b][c] */
template <int NP>
__global__ void __launch_bounds__(SCAN_THREADS)
selective_scan_backward_kernel(float *du, float *ddelta, float *dB_part, float *dC_part,
                               float *dA_part, float *dD_part, const float *dy, const float *u,
                               const float *delta, const float *A, const float *B, const float *C,
                               const float *D, const float *chunk_states, int Bsz, int T,
                               int channels, int N, int chunk) {
    using S = ScanBackwardSmem<NP>;
    constexpr int CB = S::CB, L = S::L;
    extern __shared__ float smem[];
    float *states = smem + S::states;
    float (*u_tile)[CB] = (float (*)[CB])(smem + S::u);
    float (*dt_tile)[CB] = (float (*)[CB])(smem + S::dt);
    float (*dy_tile)[CB] = (float (*)[CB])(smem + S::dy);
    float (*du_tile)[CB] = (float (*)[CB])(smem + S::du);
    float (*ddt_tile)[CB] = (float (*)[CB])(smem + S::ddt);
    float (*B_tile)[NP] = (float (*)[NP])(smem + S::B);
    float (*C_tile)[NP] = (float (*)[NP])(smem + S::C);
    float (*dB_warp)[SCAN_WARPS][NP] = (float (*)[SCAN_WARPS][NP])(smem + S::dB_warp);
    float (*dC_warp)[SCAN_WARPS][NP] = (float (*)[SCAN_WARPS][NP])(smem + S::dC_warp);

    const int tid = threadIdx.x, cl = tid / NP, n = tid % NP, lane = tid % 32, warp = tid / 32;
    const int c0 = blockIdx.x * CB, c = c0 + cl, b = blockIdx.y;
    const bool active = c < channels && n < N;
    const int n_chunks = (T + chunk - 1) / chunk;
    const float Ac = active ? A[(size_t)c * N + n] : 0.0f, A2 = Ac * LOG2E;
    const float Dc = (c < channels && D) ? D[c] : 0.0f;
    float carry = 0.0f;            /* exp(δ_{t+1} A) dh_{t+1}, 0 past the end */
    float dA_acc = 0.0f, dD_acc = 0.0f;

    for (int k = n_chunks - 1; k >= 0; k--) {
        const int tc0 = k * chunk, tc1 = min(T, tc0 + chunk);
        const float h_chunk =
            active ? chunk_states[(((size_t)b * n_chunks + k) * channels + c) * N + n] : 0.0f;
        const int n_sub = (tc1 - tc0 + L - 1) / L;
        for (int j = n_sub - 1; j >= 0; j--) {
            const int ts0 = tc0 + j * L, len = min(L, tc1 - ts0);
            /* the state entering ts0: walk from the chunk's start (only if chunk > L) */
            float h = h_chunk;
            if (active)
                for (int t = tc0; t < ts0; t++) {
                    const size_t at = ((size_t)b * T + t) * channels + c;
                    const float dt = delta[at];
                    h = exp2f(dt * A2) * h + dt * u[at] * B[((size_t)b * T + t) * N + n];
                }
            const float h_start = h;
            __syncthreads();   /* the previous sub-tile's smem has been read */
            for (int i = tid; i < L * CB; i += SCAN_THREADS) {
                const int s = i / CB, jj = i % CB;
                const bool in = s < len && c0 + jj < channels;
                const size_t at = ((size_t)b * T + ts0 + s) * channels + c0 + jj;
                u_tile[s][jj] = in ? u[at] : 0.0f;
                dt_tile[s][jj] = in ? delta[at] : 0.0f;
                dy_tile[s][jj] = in ? dy[at] : 0.0f;
            }
            for (int i = tid; i < L * NP; i += SCAN_THREADS) {
                const int s = i / NP, m = i % NP;
                const bool in = s < len && m < N;
                const size_t at = ((size_t)b * T + ts0 + s) * N + m;
                B_tile[s][m] = in ? B[at] : 0.0f;
                C_tile[s][m] = in ? C[at] : 0.0f;
            }
            __syncthreads();
            /* recompute the sub-tile's states: states[s][tid] = h_{ts0+s} */
            for (int s = 0; s < len; s++) {
                const float dt = dt_tile[s][cl];
                h = exp2f(dt * A2) * h + dt * u_tile[s][cl] * B_tile[s][n];
                states[s * SCAN_THREADS + tid] = h;
            }
            /* reverse recurrence */
            for (int s = len - 1; s >= 0; s--) {
                const float dt = dt_tile[s][cl], uu = u_tile[s][cl], dyv = dy_tile[s][cl];
                const float Bn = B_tile[s][n], Cn = C_tile[s][n];
                const float hs = states[s * SCAN_THREADS + tid];
                const float prev = s > 0 ? states[(s - 1) * SCAN_THREADS + tid] : h_start;
                const float decay = exp2f(dt * A2);
                const float dh = carry + dyv * Cn;
                const float decayed_prev = decay * prev;      /* e^{δA} h_{t−1} */
                float g_dt = dh * (Ac * decayed_prev + uu * Bn);
                float g_u = dh * dt * Bn;
                float g_B = dh * dt * uu, g_C = dyv * hs;
                dA_acc += dh * dt * decayed_prev;
                carry = decay * dh;
                /* Σ over n inside the channel's group */
#pragma unroll
                for (int off = NP / 2; off > 0; off /= 2) {
                    g_dt += __shfl_xor_sync(0xffffffffu, g_dt, off);
                    g_u += __shfl_xor_sync(0xffffffffu, g_u, off);
                }
                /* Σ over the warp's channels (lanes n, n+NP, n+2NP, ...) */
#pragma unroll
                for (int off = NP; off < 32; off *= 2) {
                    g_B += __shfl_xor_sync(0xffffffffu, g_B, off);
                    g_C += __shfl_xor_sync(0xffffffffu, g_C, off);
                }
                if (n == 0) {
                    ddt_tile[s][cl] = g_dt;
                    du_tile[s][cl] = g_u + Dc * dyv;
                    dD_acc += dyv * uu;
                }
                if (lane < NP) {
                    dB_warp[s][warp][lane] = g_B;
                    dC_warp[s][warp][lane] = g_C;
                }
            }
            __syncthreads();
            for (int i = tid; i < len * CB; i += SCAN_THREADS) {
                const int s = i / CB, jj = i % CB;
                if (c0 + jj >= channels) continue;
                const size_t at = ((size_t)b * T + ts0 + s) * channels + c0 + jj;
                if (du) du[at] += du_tile[s][jj];
                if (ddelta) ddelta[at] += ddt_tile[s][jj];
            }
            /* the block's Σ over its channels, warps in order */
            for (int i = tid; i < len * N; i += SCAN_THREADS) {
                const int s = i / N, m = i % N;
                float sum_B = 0.0f, sum_C = 0.0f;
                for (int w = 0; w < SCAN_WARPS; w++) {
                    sum_B += dB_warp[s][w][m];
                    sum_C += dC_warp[s][w][m];
                }
                const size_t at = (((size_t)blockIdx.x * Bsz + b) * T + ts0 + s) * N + m;
                dB_part[at] = sum_B;
                dC_part[at] = sum_C;
            }
        }
    }
    if (active) dA_part[((size_t)b * channels + c) * N + n] = dA_acc;
    if (n == 0 && c < channels) dD_part[(size_t)b * channels + c] = dD_acc;
}

/* dB[i] += Σ_k dB_part[k][i] (and dC) over the channel blocks k in order; i = (b,t,n). */
__global__ void scan_sum_dBC_kernel(float *dB, float *dC, const float *dB_part, const float *dC_part,
                                    int n_parts, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float sum_B = 0.0f, sum_C = 0.0f;
        for (int k = 0; k < n_parts; k++) {
            sum_B += dB_part[(size_t)k * n + i];
            sum_C += dC_part[(size_t)k * n + i];
        }
        if (dB) dB[i] += sum_B;
        if (dC) dC[i] += sum_C;
    }
}

/* dA[i] += Σ_b dA_part[b][i] (i = (c,n)); dD[c] += Σ_b dD_part[b][c]; b in order. */
__global__ void scan_sum_dAD_kernel(float *dA, float *dD, const float *dA_part, const float *dD_part,
                                    int Bsz, int channels, int N) {
    const size_t n_A = (size_t)channels * N;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_A + channels;
         i += (size_t)gridDim.x * blockDim.x) {
        if (i < n_A) {
            if (!dA) continue;
            float sum = 0.0f;
            for (int b = 0; b < Bsz; b++) sum += dA_part[(size_t)b * n_A + i];
            dA[i] += sum;
        } else {
            if (!dD) continue;
            const size_t c = i - n_A;
            float sum = 0.0f;
            for (int b = 0; b < Bsz; b++) sum += dD_part[(size_t)b * channels + c];
            dD[c] += sum;
        }
    }
}

/* ---------------------------------------------------------------- launchers */

static void check_scan_shape(int N, int chunk, const char *who) {
    if (N < 1 || N > 32 || chunk < 1) {
        fprintf(stderr, "%s: d_state %d / chunk %d unsupported (1 ≤ N ≤ 32, chunk ≥ 1)\n", who, N, chunk);
        abort();
    }
}

template <int NP>
static void launch_forward(float *y, float *chunk_states, const float *u, const float *delta,
                           const float *A, const float *B, const float *C, const float *D, int Bsz,
                           int T, int channels, int N, int chunk, cudaStream_t stream) {
    const dim3 grid((unsigned)channel_blocks(channels, N), (unsigned)Bsz);
    selective_scan_forward_kernel<NP><<<grid, SCAN_THREADS, 0, stream>>>(
        y, chunk_states, u, delta, A, B, C, D, T, channels, N, chunk);
    CUDA_CHECK_LAUNCH();
}

extern "C" void selective_scan_forward_cuda(float *y, float *chunk_states, const float *u,
                                            const float *delta, const float *A, const float *B,
                                            const float *C, const float *D, int Bsz, int T,
                                            int channels, int N, int chunk, cudaStream_t stream) {
    check_scan_shape(N, chunk, "selective_scan_forward_cuda");
    if (Bsz == 0 || T == 0 || channels == 0) return;
    switch (padded_state(N)) {
    case 4: launch_forward<4>(y, chunk_states, u, delta, A, B, C, D, Bsz, T, channels, N, chunk, stream); break;
    case 8: launch_forward<8>(y, chunk_states, u, delta, A, B, C, D, Bsz, T, channels, N, chunk, stream); break;
    case 16: launch_forward<16>(y, chunk_states, u, delta, A, B, C, D, Bsz, T, channels, N, chunk, stream); break;
    default: launch_forward<32>(y, chunk_states, u, delta, A, B, C, D, Bsz, T, channels, N, chunk, stream); break;
    }
}

/* scratch: dB_part, dC_part (n_cblocks·Bsz·T·N each), dA_part (Bsz·C·N), dD_part (Bsz·C). */
extern "C" size_t selective_scan_backward_cuda_scratch_floats(int Bsz, int T, int channels, int N) {
    const size_t btn = (size_t)Bsz * T * N;
    return 2 * (size_t)channel_blocks(channels, N) * btn + (size_t)Bsz * channels * (N + 1);
}

template <int NP>
static void launch_backward(float *du, float *ddelta, float *dB_part, float *dC_part, float *dA_part,
                            float *dD_part, const float *dy, const float *u, const float *delta,
                            const float *A, const float *B, const float *C, const float *D,
                            const float *chunk_states, int Bsz, int T, int channels, int N, int chunk,
                            cudaStream_t stream) {
    const size_t smem_bytes = ScanBackwardSmem<NP>::total * sizeof(float);
    /* above 48 KiB a kernel must opt in to the larger shared memory */
    CUDA_CHECK(cudaFuncSetAttribute(selective_scan_backward_kernel<NP>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes));
    const dim3 grid((unsigned)channel_blocks(channels, N), (unsigned)Bsz);
    selective_scan_backward_kernel<NP><<<grid, SCAN_THREADS, smem_bytes, stream>>>(
        du, ddelta, dB_part, dC_part, dA_part, dD_part, dy, u, delta, A, B, C, D, chunk_states, Bsz,
        T, channels, N, chunk);
    CUDA_CHECK_LAUNCH();
}

extern "C" void selective_scan_backward_cuda(float *du, float *ddelta, float *dA, float *dB,
                                             float *dC, float *dD, const float *dy, const float *u,
                                             const float *delta, const float *A, const float *B,
                                             const float *C, const float *D,
                                             const float *chunk_states, int Bsz, int T,
                                             int channels, int N, int chunk, float *scratch,
                                             size_t scratch_floats, cudaStream_t stream) {
    check_scan_shape(N, chunk, "selective_scan_backward_cuda");
    if (Bsz == 0 || T == 0 || channels == 0) return;
    const size_t need = selective_scan_backward_cuda_scratch_floats(Bsz, T, channels, N);
    if (scratch_floats < need) {
        fprintf(stderr, "selective_scan_backward_cuda: scratch of %zu floats, need %zu\n",
                scratch_floats, need);
        abort();
    }
    const int n_parts = channel_blocks(channels, N);
    const size_t btn = (size_t)Bsz * T * N;
    float *dB_part = scratch, *dC_part = dB_part + (size_t)n_parts * btn;
    float *dA_part = dC_part + (size_t)n_parts * btn, *dD_part = dA_part + (size_t)Bsz * channels * N;
    switch (padded_state(N)) {
    case 4: launch_backward<4>(du, ddelta, dB_part, dC_part, dA_part, dD_part, dy, u, delta, A, B, C, D, chunk_states, Bsz, T, channels, N, chunk, stream); break;
    case 8: launch_backward<8>(du, ddelta, dB_part, dC_part, dA_part, dD_part, dy, u, delta, A, B, C, D, chunk_states, Bsz, T, channels, N, chunk, stream); break;
    case 16: launch_backward<16>(du, ddelta, dB_part, dC_part, dA_part, dD_part, dy, u, delta, A, B, C, D, chunk_states, Bsz, T, channels, N, chunk, stream); break;
    default: launch_backward<32>(du, ddelta, dB_part, dC_part, dA_part, dD_part, dy, u, delta, A, B, C, D, chunk_states, Bsz, T, channels, N, chunk, stream); break;
    }
    if (dB || dC) {
        scan_sum_dBC_kernel<<<grid_stride_blocks(btn, 256, 4096), 256, 0, stream>>>(dB, dC, dB_part, dC_part,
                                                                         n_parts, btn);
        CUDA_CHECK_LAUNCH();
    }
    if (dA || dD) {
        scan_sum_dAD_kernel<<<grid_stride_blocks((size_t)channels * (N + 1), 256, 4096), 256, 0, stream>>>(
            dA, dD, dA_part, dD_part, Bsz, channels, N);
        CUDA_CHECK_LAUNCH();
    }
}
