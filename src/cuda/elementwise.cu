/* elementwise.cu — the residual-stream and optimizer glue of the CUDA backend:
 *   add_inplace_cuda:  y += x          (the blocks' residual adds)
 *   scale_cuda:        x *= s          (gradient clipping)
 * Grid-stride loops (float4 pieces where aligned: grid.cuh); memory-bound, one read and
 * one write per element. */
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

template <int W>
__global__ void scale_kernel(float *x, float s, size_t n) {
    GRID_STRIDE(i, n / W) {
        Lanes<W> a = load_lanes<W>(x + W * i);
#pragma unroll
        for (int e = 0; e < W; e++) a[e] *= s;
        store_lanes<W>(x + W * i, a);
    }
}

extern "C" void add_inplace_cuda(float *y, const float *x, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(add_inplace_kernel, n, stream, aligned16(n, y, x), y, x, n);
}

extern "C" void scale_cuda(float *x, float s, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(scale_kernel, n, stream, aligned16(n, x), x, s, n);
}
