/* embedding.cu — token embedding lookup on the GPU.
 * out[n,:] = table[tokens[n],:]        table (V, C)
 * dtable[v,:] += Σ_{n : tokens[n] = v} dout[n,:]   (the sum in increasing n)
 * Forward: one block per token row, threads over C.
 * Backward: rows with the same token add into the same table row. Adding them with
 * atomics (as this file did until the eleventh session) leaves the order of the float adds,
 * and so the last bits of dtable, to the scheduler; here they add in a fixed order, so a
 * training step gives the same bits every run. The (token, n) pairs are sorted by token
 * with a stable radix sort (CUB, part of the CUDA toolkit: n stays increasing within a
 * token), then one block per run of equal tokens sums its rows in that order, threads over
 * C, and adds the sum into the table row: every table element is written by one thread,
 * once. */
#include <cub/cub.cuh>

#include "cuda_check.h"
#include "ops_cuda.h"

__global__ void embedding_forward_kernel(float *out, const int *tokens, const float *table, int C) {
    const size_t n = blockIdx.x;
    const float *row = table + (size_t)tokens[n] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = row[c];
}

__global__ void embedding_row_index_kernel(int *rows, int N) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N; i += gridDim.x * blockDim.x) rows[i] = i;
}

/* Block i: nothing unless sorted position i starts a run of equal tokens; then the run's
 * rows of dout, in sorted (= increasing n) order, summed per column into the table row. */
__global__ void embedding_backward_runs_kernel(float *dtable, const float *dout, const int *sorted_tokens,
                                               const int *sorted_rows, int N, int C) {
    const int i = blockIdx.x, token = sorted_tokens[i];
    if (i > 0 && sorted_tokens[i - 1] == token) return;   /* block-uniform */
    int end = i + 1;
    while (end < N && sorted_tokens[end] == token) end++;
    float *row = dtable + (size_t)token * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float sum = 0.0f;
        for (int k = i; k < end; k++) sum += dout[(size_t)sorted_rows[k] * C + c];
        row[c] += sum;
    }
}

static int embedding_threads(int C) { return C >= 256 ? 256 : (C + 31) / 32 * 32; }

extern "C" void embedding_forward_cuda(float *out, const int *tokens, const float *table, int N,
                                       int C, cudaStream_t stream) {
    if (N <= 0) return;
    embedding_forward_kernel<<<N, embedding_threads(C), 0, stream>>>(out, tokens, table, C);
    CUDA_CHECK_LAUNCH();
}

/* The sort's buffers (keys and values in and out, CUB's temporary storage) live in
 * file-static device buffers that only grow, like the other ops' scratch: calls on one
 * stream use them in turn. Not thread-safe. */
static void *sort_buffer[2];
static size_t sort_capacity[2];

extern "C" void embedding_backward_cuda(float *dtable, const float *dout, const int *tokens, int N,
                                        int C, cudaStream_t stream) {
    if (N <= 0) return;
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const int *)NULL, (int *)NULL,
                                               (const int *)NULL, (int *)NULL, N, 0, 32, stream));
    /* [rows in][sorted tokens][sorted rows], then CUB's temporary storage */
    int *ints = (int *)grow_device_buffer(&sort_buffer[0], &sort_capacity[0], 3 * (size_t)N * sizeof(int));
    /* (at least one byte: CUB reads a NULL buffer as a size query) */
    void *temp = grow_device_buffer(&sort_buffer[1], &sort_capacity[1], temp_bytes + 16);
    int *rows = ints, *sorted_tokens = ints + N, *sorted_rows = ints + 2 * (size_t)N;
    embedding_row_index_kernel<<<(N + 255) / 256 < 1024 ? (N + 255) / 256 : 1024, 256, 0, stream>>>(rows, N);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, sorted_tokens, rows, sorted_rows, N, 0,
                                               32, stream));
    embedding_backward_runs_kernel<<<N, embedding_threads(C), 0, stream>>>(dtable, dout, sorted_tokens,
                                                                          sorted_rows, N, C);
    CUDA_CHECK_LAUNCH();
}
