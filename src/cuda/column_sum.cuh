/* column_sum.cuh — deterministic sums over rows of per-column terms, for the parameter
 * gradients that are column sums (matmul's bias, RMSNorm's weight, conv1d's taps and bias):
 *
 *   for v < V, c < C:   finish(c, v, Σ_{n<N} term_v(n, c))
 *
 * term(n, c, acc) adds row n's V terms of column c into acc[0..V−1]; finish(c, v, sum)
 * stores or accumulates the total (e.g. dbias[c] += sum).
 *
 * Pass 1: grid (⌈C/32⌉ column blocks, S row slices), blocks of 32 × 8 threads. Thread
 * (x, y) of block (bx, s) sums the rows n ≡ y (mod 8) of slice s for column 32·bx + x, so a
 * warp reads 32 adjacent floats of a row (one 128-byte line); the 8 row groups are added
 * through shared memory in order, into partial[s][v][c]. Pass 2: one thread per (v, c)
 * adds the S partials in slice order and calls finish. No atomics: the same bits on
 * every run, for a given S (which depends on N, C and the GPU's SM count).
 *
 * Why two passes: the kernels this replaced ran one block per 32 columns over all N rows,
 * so d_model 256 gave 8 blocks on a 132-SM GPU; RMSNorm's weight gradient over 16384 rows
 * took 268 µs (~120 GB/s), conv1d's tap gradient over 512 channels 642 µs (H100, the small
 * sweep's model; docs/performance.md). S gives about four blocks per SM. */
#ifndef BRAID_COLUMN_SUM_CUH
#define BRAID_COLUMN_SUM_CUH

#include <cuda_runtime.h>

#include "cuda_check.h"
#include "grid.cuh"

#define COLUMN_SUM_COLS 32   /* columns per block: one warp's lanes */
#define COLUMN_SUM_GROUPS 8  /* row groups per block: blockDim.y */

/* The partials' device buffer (grow-only; not thread-safe, like attention's: calls on one
 * stream run in order, and cudaFree before a regrow synchronises the device) and the
 * number of row slices for N rows of C columns on this GPU, from column_sum.cu. */
float *column_sum_partials(size_t floats);
int column_sum_slices(int N, int C);

/* The finish of a one-value sum that accumulates into a gradient: out[c] += sum */
struct ColumnAccumulate {
    float *out;
    __device__ void operator()(int c, int, float sum) const { out[c] += sum; }
};

template <int V, class Term>
__global__ void __launch_bounds__(COLUMN_SUM_COLS * COLUMN_SUM_GROUPS)
column_partial_kernel(float *partial, Term term, int N, int C, int rows_per_slice) {
    __shared__ float group_sum[V][COLUMN_SUM_GROUPS][COLUMN_SUM_COLS + 1];
    const int c = blockIdx.x * COLUMN_SUM_COLS + threadIdx.x;
    const int n0 = blockIdx.y * rows_per_slice, n1 = min(N, n0 + rows_per_slice);
    float acc[V];
#pragma unroll
    for (int v = 0; v < V; v++) acc[v] = 0.0f;
    if (c < C) {
#pragma unroll 4
        for (int n = n0 + threadIdx.y; n < n1; n += COLUMN_SUM_GROUPS) term(n, c, acc);
    }
#pragma unroll
    for (int v = 0; v < V; v++) group_sum[v][threadIdx.y][threadIdx.x] = acc[v];
    __syncthreads();
    for (int v = threadIdx.y; v < V; v += COLUMN_SUM_GROUPS) {
        float sum = 0.0f;
#pragma unroll
        for (int g = 0; g < COLUMN_SUM_GROUPS; g++) sum += group_sum[v][g][threadIdx.x];
        if (c < C) partial[((size_t)blockIdx.y * V + v) * C + c] = sum;
    }
}

template <int V, class Finish>
__global__ void column_finish_kernel(const float *partial, Finish finish, int C, int slices) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)V * C;
         i += (size_t)gridDim.x * blockDim.x) {
        const int v = (int)(i / C), c = (int)(i % C);
        float sum = 0.0f;
        for (int s = 0; s < slices; s++) sum += partial[((size_t)s * V + v) * C + c];
        finish(c, v, sum);
    }
}

template <int V, class Term, class Finish>
static void column_sums(Term term, Finish finish, int N, int C, cudaStream_t stream) {
    if (N <= 0 || C <= 0) return;
    const int slices = column_sum_slices(N, C);
    const int rows_per_slice = (N + slices - 1) / slices;
    float *partial = column_sum_partials((size_t)slices * V * C);
    const dim3 grid((unsigned)((C + COLUMN_SUM_COLS - 1) / COLUMN_SUM_COLS), (unsigned)slices);
    column_partial_kernel<V><<<grid, dim3(COLUMN_SUM_COLS, COLUMN_SUM_GROUPS), 0, stream>>>(
        partial, term, N, C, rows_per_slice);
    CUDA_CHECK_LAUNCH();
    column_finish_kernel<V><<<grid_stride_blocks((size_t)V * C), 256, 0, stream>>>(partial, finish, C, slices);
    CUDA_CHECK_LAUNCH();
}

#endif
