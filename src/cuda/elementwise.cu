/* elementwise.cu — the residual-stream glue of the CUDA backend:
 *   add_inplace_cuda:  y += x          (the blocks' residual adds)
 * A grid-stride loop (float4 pieces where aligned: grid.cuh); memory-bound. (Gradient
 * clipping has no kernel of its own: AdamW applies the factor as it reads each gradient.) */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"

template <int W>
__global__ void add_inplace_kernel(float *y, const float *x, size_t n) {
    GRID_STRIDE(i, n / W) {
        Lanes<W> a = load_lanes<W>(y + W * i);
        const Lanes<W> b = load_lanes<W>(x + W * i);
#pragma unroll
        for (int e = 0; e < W; e++) a[e] += b[e];
        store_lanes<W>(y + W * i, a);
    }
}

extern "C" void add_inplace_cuda(float *y, const float *x, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(add_inplace_kernel, n, stream, aligned16(n, y, x), y, x, n);
}
