/* embedding.cu — token embedding lookup on the GPU.
 * out[n,:] = table[tokens[n],:]        table (V, C)
 * dtable[tokens[n],:] += dout[n,:]
 * One block per token row, threads over C. In backward two rows with the same token add
 * into the same table row, so the adds are atomic: the order of those float adds, and so
 * the last bits of dtable, may differ from run to run (a sort-by-token backward would be
 * deterministic; not needed at this step). */
#include "cuda_check.h"
#include "ops_cuda.h"

__global__ void embedding_forward_kernel(float *out, const int *tokens, const float *table, int C) {
    const size_t n = blockIdx.x;
    const float *row = table + (size_t)tokens[n] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = row[c];
}

__global__ void embedding_backward_kernel(float *dtable, const float *dout, const int *tokens, int C) {
    const size_t n = blockIdx.x;
    float *row = dtable + (size_t)tokens[n] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(&row[c], dout[n * C + c]);
}

static int embedding_threads(int C) { return C >= 256 ? 256 : (C + 31) / 32 * 32; }

extern "C" void embedding_forward_cuda(float *out, const int *tokens, const float *table, int N,
                                       int C, cudaStream_t stream) {
    if (N <= 0) return;
    embedding_forward_kernel<<<N, embedding_threads(C), 0, stream>>>(out, tokens, table, C);
    CUDA_CHECK_LAUNCH();
}

extern "C" void embedding_backward_cuda(float *dtable, const float *dout, const int *tokens, int N,
                                        int C, cudaStream_t stream) {
    if (N <= 0) return;
    embedding_backward_kernel<<<N, embedding_threads(C), 0, stream>>>(dtable, dout, tokens, C);
    CUDA_CHECK_LAUNCH();
}
