/* mamba_glue.cu — the elementwise steps of the Mamba-1 layer between its matmuls, conv
 * and scan (layers/mamba.c, the CUDA path): the loops the CPU layer writes inline.
 *
 * Each is one grid-stride loop, memory-bound. The activations use the same formulas as
 * core/ops.h's silu_f / sigmoid_f / softplus_f, with expf, log1pf and expm1f rather than
 * the fast intrinsics (__expf and friends are a few ulp off over the whole range and
 * much worse near 0 for expm1), so the CUDA layer matches the CPU layer to float rounding
 * and the tests can hold it to 1e-4. */
#include "cuda_check.h"
#include "mamba_cuda.h"
#include "grid.cuh"

__device__ __forceinline__ float glue_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float glue_silu(float x) { return x / (1.0f + expf(-x)); }
/* d/da silu(a) = σ(a)(1 + a(1 − σ(a))) */
__device__ __forceinline__ float glue_silu_grad(float x) {
    const float s = glue_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}
/* softplus(a) = log(1 + e^a); above 20 it is a to float precision (and e^a would
 * overflow soon after), the same cut as the CPU's softplus_f. */
__device__ __forceinline__ float glue_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

#define GRID_STRIDE(i, n)                                                                  \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                \
         i += (size_t)gridDim.x * blockDim.x)

/* u = silu(conv) */
__global__ void mamba_silu_kernel(float *out, const float *in, size_t n) {
    GRID_STRIDE(i, n) out[i] = glue_silu(in[i]);
}

/* δ = softplus(δ), in place on the dt_proj output */
__global__ void mamba_softplus_kernel(float *x, size_t n) {
    GRID_STRIDE(i, n) x[i] = glue_softplus(x[i]);
}

/* A = −exp(A_log) */
__global__ void mamba_neg_exp_kernel(float *A, const float *A_log, size_t n) {
    GRID_STRIDE(i, n) A[i] = -expf(A_log[i]);
}

/* gated = y ⊙ silu(z) */
__global__ void mamba_gate_forward_kernel(float *gated, const float *y, const float *z, size_t n) {
    GRID_STRIDE(i, n) gated[i] = y[i] * glue_silu(z[i]);
}

/* With g = dgated on entry:  dz = g ⊙ y ⊙ silu'(z) (written);  g ← g ⊙ silu(z), the
 * gradient reaching the scan's y. Both from the one read of g, z. */
__global__ void mamba_gate_backward_kernel(float *dz, float *dgated, const float *y, const float *z,
                                           size_t n) {
    GRID_STRIDE(i, n) {
        const float g = dgated[i], zz = z[i];
        dz[i] = g * y[i] * glue_silu_grad(zz);
        dgated[i] = g * glue_silu(zz);
    }
}

/* A = −exp(A_log) ⇒ ∂A/∂A_log = A:  dA_log += dA ⊙ A */
__global__ void mamba_dA_log_kernel(float *dA_log, const float *dA, const float *A, size_t n) {
    GRID_STRIDE(i, n) dA_log[i] += dA[i] * A[i];
}

/* δ = softplus(a): ∂δ/∂a = σ(a) = 1 − exp(−δ) = −expm1(−δ); dδ ← dδ ⊙ σ(a) in place.
 * expm1f keeps the digits for small δ, where 1 − expf(−δ) would cancel. */
__global__ void mamba_softplus_backward_kernel(float *ddelta, const float *delta, size_t n) {
    GRID_STRIDE(i, n) ddelta[i] *= -expm1f(-delta[i]);
}

/* u = silu(conv): du ← du ⊙ silu'(conv) in place (it becomes dconv) */
__global__ void mamba_silu_backward_kernel(float *du, const float *conv, size_t n) {
    GRID_STRIDE(i, n) du[i] *= glue_silu_grad(conv[i]);
}

#undef GRID_STRIDE

/* Enough blocks to fill any current GPU several times over; the loop takes the rest. */
extern "C" void mamba_silu_cuda(float *out, const float *in, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    mamba_silu_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(out, in, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_softplus_cuda(float *x, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    mamba_softplus_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(x, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_neg_exp_cuda(float *A, const float *A_log, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    mamba_neg_exp_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(A, A_log, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_gate_forward_cuda(float *gated, const float *y, const float *z, size_t n,
                                        cudaStream_t stream) {
    if (n == 0) return;
    mamba_gate_forward_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(gated, y, z, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_gate_backward_cuda(float *dz, float *dgated, const float *y, const float *z,
                                         size_t n, cudaStream_t stream) {
    if (n == 0) return;
    mamba_gate_backward_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(dz, dgated, y, z, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_dA_log_accumulate_cuda(float *dA_log, const float *dA, const float *A, size_t n,
                                             cudaStream_t stream) {
    if (n == 0) return;
    mamba_dA_log_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(dA_log, dA, A, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_softplus_backward_cuda(float *ddelta, const float *delta, size_t n,
                                             cudaStream_t stream) {
    if (n == 0) return;
    mamba_softplus_backward_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(ddelta, delta, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void mamba_silu_backward_cuda(float *du, const float *conv, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    mamba_silu_backward_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(du, conv, n);
    CUDA_CHECK_LAUNCH();
}
