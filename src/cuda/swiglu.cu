/* swiglu.cu — the SwiGLU gate on the GPU: out = silu(g) ⊙ u, silu(g) = g·σ(g).
 * d/dg silu(g) = σ(g)·(1 + g·(1 − σ(g))). Backward WRITES dgate, dup (they belong to one
 * layer's intermediates, as in the CPU op), as rows of H values ld apart: the FFNs pass
 * dup = dgate + H, ld = 2H, so that [dgate | dup] is one [rows, 2H] array, the output
 * gradient of the gate and up projections taken as one product (ops_cuda.h). Elementwise, a
 * grid-stride loop, float4 where aligned (grid.cuh).
 * expf, not __expf: the fast intrinsic would miss the CPU op by more than rounding. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"
#include "activations.cuh"

#include <cuda_bf16.h>


/* out = silu(gate) ⊙ up, W elements a thread and step (grid.cuh); Out float, or
 * __nv_bfloat16 where out is a bf16 matmul operand (rounded as matmul.cu would) */
template <int W, typename Out>
__global__ void swiglu_forward_kernel(Out *out, const float *gate, const float *up, size_t n) {
    GRID_STRIDE(i, n / W) {
        const Lanes<W> g = load_lanes<W>(gate + W * i), u = load_lanes<W>(up + W * i);
        Lanes<W> o;
#pragma unroll
        for (int e = 0; e < W; e++) o[e] = g[e] * device_sigmoid(g[e]) * u[e];
        store_lanes<W>(out + W * i, o);
    }
}

template <int W, typename Out>
__global__ void swiglu_backward_kernel(Out *dgate, Out *dup, const float *dout, const float *gate,
                                       const float *up, size_t n, size_t H, size_t ld) {
    GRID_STRIDE(i, n / W) {
        const Lanes<W> g = load_lanes<W>(gate + W * i), u = load_lanes<W>(up + W * i), dy = load_lanes<W>(dout + W * i);
        Lanes<W> dg, du;
#pragma unroll
        for (int e = 0; e < W; e++) {
            const float s = device_sigmoid(g[e]);
            du[e] = dy[e] * g[e] * s;
            dg[e] = dy[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
        }
        const size_t at = row_strided(W * i, H, ld);
        store_lanes<W>(dup + at, du);
        store_lanes<W>(dgate + at, dg);
    }
}

/* The bf16 backward of a SwiGLU whose down projection multiplies in bf16 (layers/ffn_dense.c):
 * that product's dweight wants h = silu(g) ⊙ u as its bf16 operand, and its dinp dh is
 * what the gate's backward reads, so one pass writes all three from one read of dh, g, u
 * (18 bytes an element) where swiglu_forward then swiglu_backward read g and u twice
 * (26 bytes, two launches):
 *   h = g·σ(g)·u,   dup = dh·g·σ(g),   dgate = dh·u·σ(g)·(1 + g·(1 − σ(g)))
 * The expressions are those of the two kernels above, so the bits are theirs
 * (test_cuda_ops compares them bit for bit). h, dgate, dup must not overlap; h is flat,
 * dgate and dup strided as above. */
template <int W>
__global__ void swiglu_backward_and_forward_kernel(__nv_bfloat16 *h, __nv_bfloat16 *dgate, __nv_bfloat16 *dup,
                                                   const float *dout, const float *gate, const float *up, size_t n,
                                                   size_t H, size_t ld) {
    GRID_STRIDE(i, n / W) {
        const Lanes<W> g = load_lanes<W>(gate + W * i), u = load_lanes<W>(up + W * i), dy = load_lanes<W>(dout + W * i);
        Lanes<W> hv, dg, du;
#pragma unroll
        for (int e = 0; e < W; e++) {
            const float s = device_sigmoid(g[e]);
            hv[e] = g[e] * s * u[e];
            du[e] = dy[e] * g[e] * s;
            dg[e] = dy[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
        }
        const size_t at = row_strided(W * i, H, ld);
        store_lanes<W>(h + W * i, hv);
        store_lanes<W>(dup + at, du);
        store_lanes<W>(dgate + at, dg);
    }
}

/* The strided outputs' shape: n elements in rows of H, the rows ld ≥ H apart. */
static void check_rows(const char *who, size_t n, int H, int ld) {
    if (H > 0 && ld >= H && n % (size_t)H == 0) return;
    fprintf(stderr, "%s: %zu elements in rows of H = %d, ld = %d apart: H must divide them and ld >= H\n", who, n,
            H, ld);
    abort();
}

extern "C" void swiglu_forward_cuda(float *out, const float *gate, const float *up, size_t n,
                                    cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(swiglu_forward_kernel, n, stream, aligned16(n, out, gate, up), out, gate, up, n);
}

extern "C" void swiglu_backward_cuda(float *dgate, float *dup, const float *dout, const float *gate,
                                     const float *up, size_t n, int H, int ld, cudaStream_t stream) {
    if (n == 0) return;
    check_rows("swiglu_backward_cuda", n, H, ld);
    LAUNCH_ELEMENTWISE(swiglu_backward_kernel, n, stream,
                       aligned16(n, dgate, dup, dout, gate, up) && lanes_fit_rows(H, ld), dgate, dup, dout, gate, up,
                       n, (size_t)H, (size_t)ld);
}

/* The same, writing bf16 (ops_cuda.h: the down projection's input, the gate and up
 * projections' output gradients, when those products multiply in bf16) */
extern "C" void swiglu_forward_bf16_cuda(uint16_t *out, const float *gate, const float *up, size_t n,
                                         cudaStream_t stream) {
    if (n == 0) return;
    __nv_bfloat16 *o = (__nv_bfloat16 *)out;
    LAUNCH_ELEMENTWISE(swiglu_forward_kernel, n, stream, aligned16(n, o, gate, up), o, gate, up, n);
}

extern "C" void swiglu_backward_bf16_cuda(uint16_t *dgate, uint16_t *dup, const float *dout, const float *gate,
                                          const float *up, size_t n, int H, int ld, cudaStream_t stream) {
    if (n == 0) return;
    check_rows("swiglu_backward_bf16_cuda", n, H, ld);
    __nv_bfloat16 *dg = (__nv_bfloat16 *)dgate, *du = (__nv_bfloat16 *)dup;
    LAUNCH_ELEMENTWISE(swiglu_backward_kernel, n, stream, aligned16(n, dg, du, dout, gate, up) && lanes_fit_rows(H, ld),
                       dg, du, dout, gate, up, n, (size_t)H, (size_t)ld);
}

extern "C" void swiglu_backward_and_forward_bf16_cuda(uint16_t *out, uint16_t *dgate, uint16_t *dup,
                                                      const float *dout, const float *gate, const float *up,
                                                      size_t n, int H, int ld, cudaStream_t stream) {
    if (n == 0) return;
    check_rows("swiglu_backward_and_forward_bf16_cuda", n, H, ld);
    __nv_bfloat16 *h16 = (__nv_bfloat16 *)out, *dg = (__nv_bfloat16 *)dgate, *du = (__nv_bfloat16 *)dup;
    LAUNCH_ELEMENTWISE(swiglu_backward_and_forward_kernel, n, stream,
                       aligned16(n, h16, dg, du, dout, gate, up) && lanes_fit_rows(H, ld), h16, dg, du, dout, gate, up,
                       n, (size_t)H, (size_t)ld);
}
