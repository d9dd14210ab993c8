/* mamba_glue.cu — the elementwise steps of the Mamba-1 layer between its matmuls, conv
 * and scan (layers/mamba.c, the CUDA path): the loops the CPU layer writes inline.
 *
 * Each is one grid-stride loop, memory-bound (float4 pieces where aligned: grid.cuh). The
 * activations use the same formulas as core/ops.h's silu_f / sigmoid_f / softplus_f, with
 * expf, log1pf and expm1f rather than the fast intrinsics (__expf and friends are a few
 * ulp off over the whole range and much worse near 0 for expm1), so the CUDA layer
 * matches the CPU layer to float rounding and the tests can hold it to 1e-4. */
#include "cuda_check.h"
#include "mamba_cuda.h"
#include "grid.cuh"
#include "activations.cuh"

#include <cuda_bf16.h>

/* softplus(a) = log(1 + e^a); above 20 it is a to float precision (and e^a would
 * overflow soon after), the same cut as the CPU's softplus_f. */
__device__ __forceinline__ float glue_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* The layer's big elementwise steps run W elements a thread and step (float4 where the
 * arrays are aligned, grid.cuh); a step is f applied to the lanes of its inputs. */

/* δ = softplus(a + b_dt), in place on dt_proj's product a (rows × cols, cols = di): the
 * bias add folded in (one pass over δ instead of the matmul's bias kernel and this one) */
template <int W>
__global__ void mamba_bias_softplus_kernel(float *x, const float *bias, size_t rows, int cols) {
    const int cw = cols / W;
    GRID_STRIDE(i, rows * cw) {
        Lanes<W> a = load_lanes<W>(x + W * i);
        const float *b = bias + W * (i % cw);   /* a parameter: any alignment, and cached */
#pragma unroll
        for (int e = 0; e < W; e++) a[e] = glue_softplus(a[e] + b[e]);
        store_lanes<W>(x + W * i, a);
    }
}

/* A = −exp(A_log) (channels × N: small, scalar) */
__global__ void mamba_neg_exp_kernel(float *A, const float *A_log, size_t n) {
    GRID_STRIDE(i, n) A[i] = -expf(A_log[i]);
}

/* gated = y ⊙ silu(z); Out float, or __nv_bfloat16 where gated is out_proj's bf16 operand */
template <int W, typename Out>
__global__ void mamba_gate_forward_kernel(Out *gated, const float *y, const float *z, size_t n) {
    GRID_STRIDE(i, n / W) {
        const Lanes<W> yy = load_lanes<W>(y + W * i), zz = load_lanes<W>(z + W * i);
        Lanes<W> g;
#pragma unroll
        for (int e = 0; e < W; e++) g[e] = yy[e] * device_silu(zz[e]);
        store_lanes<W>(gated + W * i, g);
    }
}

/* With g = dgated on entry:  dz = g ⊙ y ⊙ silu'(z) (written);  g ← g ⊙ silu(z), the
 * gradient reaching the scan's y. Both from the one read of g, z. DZ float, or
 * __nv_bfloat16 where dz is in_proj's bf16 output gradient; dz's rows ld apart. */
template <int W, typename DZ>
__global__ void mamba_gate_backward_kernel(DZ *dz, float *dgated, const float *y, const float *z,
                                           size_t n, int cols, int ld) {
    GRID_STRIDE(i, n / W) {
        Lanes<W> g = load_lanes<W>(dgated + W * i), d;
        const Lanes<W> yy = load_lanes<W>(y + W * i), zz = load_lanes<W>(z + W * i);
#pragma unroll
        for (int e = 0; e < W; e++) {
            d[e] = g[e] * yy[e] * device_silu_grad(zz[e]);
            g[e] = g[e] * device_silu(zz[e]);
        }
        store_lanes<W>(dz + row_strided(W * i, cols, ld), d);
        store_lanes<W>(dgated + W * i, g);
    }
}

/* Both of the above in bf16, for a backward whose out_proj multiplies in bf16 (layers/mamba.c):
 * out_proj's dweight wants gated = y ⊙ silu(z) as its bf16 operand, and its dinp dgated is
 * what the gate's backward reads, so one pass writes gated and dz (bf16) and turns dgated
 * into the scan's dy, from one read of dgated, y, z (20 bytes an element) where the
 * forward kernel then the backward one read y and z twice (28 bytes, two launches):
 *   gated = y ⊙ silu(z),   dz = g ⊙ y ⊙ silu'(z),   g ← g ⊙ silu(z)   (g = dgated on entry)
 * The expressions are those of the two kernels above, so the bits are theirs (test_cuda_mamba
 * compares them bit for bit). gated, dz, dgated must not overlap; dz's rows ld apart. */
template <int W>
__global__ void mamba_gate_backward_and_forward_kernel(__nv_bfloat16 *gated, __nv_bfloat16 *dz, float *dgated,
                                                       const float *y, const float *z, size_t n, int cols, int ld) {
    GRID_STRIDE(i, n / W) {
        Lanes<W> g = load_lanes<W>(dgated + W * i), d, gt;
        const Lanes<W> yy = load_lanes<W>(y + W * i), zz = load_lanes<W>(z + W * i);
#pragma unroll
        for (int e = 0; e < W; e++) {
            const float s = device_silu(zz[e]);
            gt[e] = yy[e] * s;
            d[e] = g[e] * yy[e] * device_silu_grad(zz[e]);
            g[e] = g[e] * s;
        }
        store_lanes<W>(gated + W * i, gt);
        store_lanes<W>(dz + row_strided(W * i, cols, ld), d);
        store_lanes<W>(dgated + W * i, g);
    }
}

/* A = −exp(A_log) ⇒ ∂A/∂A_log = A:  dA_log += dA ⊙ A (small, scalar) */
__global__ void mamba_dA_log_kernel(float *dA_log, const float *dA, const float *A, size_t n) {
    GRID_STRIDE(i, n) dA_log[i] += dA[i] * A[i];
}

/* (The softplus' and silu' of the backward have no kernels here: the scan writes dδ
 * through the softplus, −expm1(−δ), and the conv's backward takes du through silu'(conv),
 * as the values pass: scan.cu, conv1d.cu.) */

/* x_proj's product [δr | B | C] (rows × (R + 2N), one row each) and its three arrays
 * (rows × R, rows × N, rows × N): the CUDA layer multiplies once with the whole W_x and
 * splits, and joins the three gradients for one backward product, so u is read once per
 * product instead of three times. JOIN: the arrays into xdbl; else xdbl into the arrays. */
template <bool JOIN>
__global__ void mamba_x_proj_columns_kernel(float *xdbl, float *dtr, float *Bm, float *Cm, size_t rows, int R,
                                            int N) {
    const int W = R + 2 * N;
    GRID_STRIDE(i, rows * W) {
        const size_t r = i / W;
        const int c = (int)(i % W);
        float *at = c < R ? dtr + r * R + c : c < R + N ? Bm + r * N + (c - R) : Cm + r * N + (c - R - N);
        if (JOIN) xdbl[i] = *at;
        else *at = xdbl[i];
    }
}

/* (u = silu(conv) comes out of the conv's forward: conv1d.cu, causal_conv1d_silu_forward_cuda) */

extern "C" void mamba_bias_softplus_cuda(float *x, const float *bias, size_t rows, int cols, cudaStream_t stream) {
    const size_t n = rows * (size_t)cols;
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(mamba_bias_softplus_kernel, n, stream, cols % 4 == 0 && aligned16(n, x), x, bias, rows,
                       cols);
}

extern "C" void mamba_neg_exp_cuda(float *A, const float *A_log, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    mamba_neg_exp_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(A, A_log, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_gate_forward_cuda(float *gated, const float *y, const float *z, size_t n,
                                        cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(mamba_gate_forward_kernel, n, stream, aligned16(n, gated, y, z), gated, y, z, n);
}

extern "C" void mamba_gate_backward_cuda(float *dz, float *dgated, const float *y, const float *z, size_t rows,
                                         int cols, int dz_ld, cudaStream_t stream) {
    const size_t n = rows * (size_t)cols;
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(mamba_gate_backward_kernel, n, stream,
                       lanes_fit_rows(cols, dz_ld) && aligned16(n, dz, dgated, y, z), dz, dgated, y, z, n, cols,
                       dz_ld);
}

extern "C" void mamba_gate_forward_bf16_cuda(uint16_t *gated, const float *y, const float *z, size_t n,
                                             cudaStream_t stream) {
    if (n == 0) return;
    __nv_bfloat16 *g = (__nv_bfloat16 *)gated;
    LAUNCH_ELEMENTWISE(mamba_gate_forward_kernel, n, stream, aligned16(n, g, y, z), g, y, z, n);
}

extern "C" void mamba_gate_backward_bf16_cuda(uint16_t *dz, float *dgated, const float *y, const float *z,
                                              size_t n, cudaStream_t stream) {
    if (n == 0) return;
    __nv_bfloat16 *d = (__nv_bfloat16 *)dz;
    /* only ever flat: row = ld = 0 takes row_strided's flat branch */
    LAUNCH_ELEMENTWISE(mamba_gate_backward_kernel, n, stream, aligned16(n, d, dgated, y, z), d, dgated, y, z, n, 0,
                       0);
}

extern "C" void mamba_gate_backward_and_forward_bf16_cuda(uint16_t *gated, uint16_t *dz, float *dgated,
                                                          const float *y, const float *z, size_t rows, int cols,
                                                          int dz_ld, cudaStream_t stream) {
    const size_t n = rows * (size_t)cols;
    if (n == 0) return;
    __nv_bfloat16 *g = (__nv_bfloat16 *)gated, *d = (__nv_bfloat16 *)dz;
    LAUNCH_ELEMENTWISE(mamba_gate_backward_and_forward_kernel, n, stream,
                       lanes_fit_rows(cols, dz_ld) && aligned16(n, g, d, dgated, y, z), g, d, dgated, y, z, n, cols,
                       dz_ld);
}

extern "C" void mamba_dA_log_accumulate_cuda(float *dA_log, const float *dA, const float *A, size_t n,
                                             cudaStream_t stream) {
    if (n == 0) return;
    mamba_dA_log_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(dA_log, dA, A, n);
    CUDA_CHECK_LAUNCH();
}


extern "C" void mamba_x_proj_split_cuda(float *dtr, float *Bm, float *Cm, const float *xdbl, size_t rows, int R,
                                        int N, cudaStream_t stream) {
    const size_t n = rows * (size_t)(R + 2 * N);
    if (n == 0) return;
    mamba_x_proj_columns_kernel<false><<<grid_stride_blocks(n), 256, 0, stream>>>((float *)xdbl, dtr, Bm, Cm, rows,
                                                                                  R, N);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_x_proj_join_cuda(float *xdbl, const float *dtr, const float *Bm, const float *Cm, size_t rows,
                                       int R, int N, cudaStream_t stream) {
    const size_t n = rows * (size_t)(R + 2 * N);
    if (n == 0) return;
    mamba_x_proj_columns_kernel<true><<<grid_stride_blocks(n), 256, 0, stream>>>(
        xdbl, (float *)dtr, (float *)Bm, (float *)Cm, rows, R, N);
    CUDA_CHECK_LAUNCH();
}
