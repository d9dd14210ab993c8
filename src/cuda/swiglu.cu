/* swiglu.cu — the SwiGLU gate on the GPU: out = silu(g) ⊙ u, silu(g) = g·σ(g).
 * d/dg silu(g) = σ(g)·(1 + g·(1 − σ(g))). Backward WRITES dgate, dup (they belong to one
 * layer's intermediates, as in the CPU op). Elementwise, a grid-stride loop, float4 where
 * aligned (grid.cuh).
 * expf, not __expf: the fast intrinsic would miss the CPU op by more than rounding. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"

__device__ __forceinline__ float sigmoid_device(float x) { return 1.0f / (1.0f + expf(-x)); }

/* out = silu(gate) ⊙ up, W elements a thread and step (grid.cuh) */
template <int W>
__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n) {
    GRID_STRIDE(i, n / W) {
        const Lanes<W> g = load_lanes<W>(gate + W * i), u = load_lanes<W>(up + W * i);
        Lanes<W> o;
#pragma unroll
        for (int e = 0; e < W; e++) o[e] = g[e] * sigmoid_device(g[e]) * u[e];
        store_lanes<W>(out + W * i, o);
    }
}

template <int W>
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                       const float *up, size_t n) {
    GRID_STRIDE(i, n / W) {
        const Lanes<W> g = load_lanes<W>(gate + W * i), u = load_lanes<W>(up + W * i), dy = load_lanes<W>(dout + W * i);
        Lanes<W> dg, du;
#pragma unroll
        for (int e = 0; e < W; e++) {
            const float s = sigmoid_device(g[e]);
            du[e] = dy[e] * g[e] * s;
            dg[e] = dy[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
        }
        store_lanes<W>(dup + W * i, du);
        store_lanes<W>(dgate + W * i, dg);
    }
}

extern "C" void swiglu_forward_cuda(float *out, const float *gate, const float *up, size_t n,
                                    cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(swiglu_forward_kernel, n, stream, aligned16(n, out, gate, up), out, gate, up, n);
}

extern "C" void swiglu_backward_cuda(float *dgate, float *dup, const float *dout, const float *gate,
                                     const float *up, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(swiglu_backward_kernel, n, stream, aligned16(n, dgate, dup, dout, gate, up), dgate, dup,
                       dout, gate, up, n);
}
