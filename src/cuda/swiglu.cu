/* swiglu.cu — the SwiGLU gate on the GPU: out = silu(g) ⊙ u, silu(g) = g·σ(g).
 * d/dg silu(g) = σ(g)·(1 + g·(1 − σ(g))). Backward WRITES dgate, dup (they belong to one
 * layer's intermediates, as in the CPU op). Elementwise, a grid-stride loop.
 * expf, not __expf: the fast intrinsic would miss the CPU op by more than rounding. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"

__device__ __forceinline__ float sigmoid_device(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g * sigmoid_device(g) * up[i];
    }
}

__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                       const float *up, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i], s = sigmoid_device(g), dy = dout[i];
        dup[i] = dy * g * s;
        dgate[i] = dy * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

extern "C" void swiglu_forward_cuda(float *out, const float *gate, const float *up, size_t n,
                                    cudaStream_t stream) {
    if (n == 0) return;
    swiglu_forward_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(out, gate, up, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void swiglu_backward_cuda(float *dgate, float *dup, const float *dout, const float *gate,
                                     const float *up, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    swiglu_backward_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(dgate, dup, dout, gate, up, n);
    CUDA_CHECK_LAUNCH();
}
