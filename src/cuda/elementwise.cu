/* elementwise.cu — the residual-stream and optimizer glue of the CUDA backend:
 *   add_inplace_cuda:  y += x          (the blocks' residual adds)
 *   scale_cuda:        x *= s          (gradient clipping)
 * Grid-stride loops; memory-bound, one read and one write per element. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"

__global__ void add_inplace_kernel(float *y, const float *x, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

__global__ void scale_kernel(float *x, float s, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

extern "C" void add_inplace_cuda(float *y, const float *x, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    add_inplace_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(y, x, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void scale_cuda(float *x, float s, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    scale_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(x, s, n);
    CUDA_CHECK_LAUNCH();
}
