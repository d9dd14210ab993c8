/* rmsnorm.cu — RMSNorm over the last dimension, on the GPU.
 *
 * forward:  r = 1/sqrt(mean(x²) + eps);  y = x · r · w
 * backward: with g = dy ⊙ w,
 *           dx += r · (g − x · r² · mean(g ⊙ x))
 *           dw += Σ_rows dy ⊙ x · r
 * One warp per row (rows are d_model long: a few hundred to a few thousand floats, which
 * one warp streams at full width), eight rows per block. dw is a column sum
 * (column_sum.cuh: partial sums over row slices added in a fixed order, no atomics). */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "reduce.cuh"
#include "column_sum.cuh"

#include <cuda_bf16.h>

#define ROWS_PER_BLOCK 8

/* out16, when not NULL, gets the same values in bf16 (the matmuls' operand: ops_cuda.h) */
__global__ void rmsnorm_forward_kernel(float *out, __nv_bfloat16 *out16, float *rstd, const float *inp,
                                       const float *weight, int N, int C, float eps) {
    const int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *x = inp + (size_t)n * C;
    float *y = out + (size_t)n * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) ss += x[c] * x[c];
    ss = warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / C + eps);
    if (rstd && lane == 0) rstd[n] = r;
    __nv_bfloat16 *y16 = out16 ? out16 + (size_t)n * C : NULL;
    for (int c = lane; c < C; c += 32) {
        const float v = x[c] * r * weight[c];
        y[c] = v;
        if (y16) y16[c] = __float2bfloat16_rn(v);
    }
}

__global__ void rmsnorm_backward_input_kernel(float *dinp, const float *dout, const float *inp,
                                              const float *weight, const float *rstd, int N, int C) {
    const int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    const float r = rstd[n];
    float dot = 0.0f;
    for (int c = lane; c < C; c += 32) dot += dy[c] * weight[c] * x[c];
    dot = warp_sum(dot);
    const float k = dot / C * r * r;
    for (int c = lane; c < C; c += 32) dx[c] += r * (dy[c] * weight[c] - x[c] * k);
}

/* dweight[c] += Σ_n dout[n,c] · inp[n,c] · rstd[n], through column_sum.cuh */
struct RmsnormWeightTerm {
    const float *dout, *inp, *rstd;
    int C;
    __device__ void operator()(int n, int c, float (&acc)[1]) const {
        const size_t i = (size_t)n * C + c;
        acc[0] += dout[i] * inp[i] * rstd[n];
    }
};

static void launch_forward(float *out, __nv_bfloat16 *out16, float *rstd, const float *inp, const float *weight,
                           int N, int C, float eps, cudaStream_t stream) {
    if (N <= 0) return;
    const int blocks = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    rmsnorm_forward_kernel<<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(out, out16, rstd, inp, weight, N, C, eps);
    CUDA_CHECK_LAUNCH();
}

extern "C" void rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight,
                                     int N, int C, float eps, cudaStream_t stream) {
    launch_forward(out, NULL, rstd, inp, weight, N, C, eps, stream);
}

extern "C" void rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                                      const float *weight, const float *rstd, int N, int C,
                                      cudaStream_t stream) {
    if (N <= 0) return;
    if (dinp) {
        const int blocks = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
        rmsnorm_backward_input_kernel<<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(
            dinp, dout, inp, weight, rstd, N, C);
        CUDA_CHECK_LAUNCH();
    }
    if (dweight) {
        column_sums<1>(RmsnormWeightTerm{dout, inp, rstd, C}, ColumnAccumulate{dweight}, N, C, stream);
    }
}

extern "C" void rmsnorm_forward_bf16_copy_cuda(float *out, uint16_t *out16, float *rstd, const float *inp,
                                               const float *weight, int N, int C, float eps, cudaStream_t stream) {
    launch_forward(out, (__nv_bfloat16 *)out16, rstd, inp, weight, N, C, eps, stream);
}
