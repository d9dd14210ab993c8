/* conv1d.cu — Mamba's causal depthwise conv1d on the GPU (the CPU reference is
 * causal_conv1d_forward/backward in layers/mamba_cpu.c):
 *   out[b,t,c] = bias[c] + Σ_{j=0..K−1} w[c,j] · x[b, t−K+1+j, c]     (zero before t = 0)
 *   dx[b,s,c]  += Σ_j w[c,j] · dout[b, s+K−1−j, c]                     (t < T only)
 *   dw[c,j]    += Σ_{b,t} dout[b,t,c] · x[b,t−K+1+j,c],   dbias[c] += Σ_{b,t} dout[b,t,c]
 * x, out, dout, dx are (Bsz,T,C); w (C,K).
 * Forward and dx: one thread per (b,t,c), consecutive threads on consecutive channels, so
 * every load and store is coalesced; the K taps are re-read from L1/L2.
 * dw, dbias: a sum over the Bsz·T rows per channel (column_sum.cuh: each thread sums its
 * rows' K ≤ 8 taps and the bias in registers, the partials of row slices are added in a
 * fixed order: no atomics, the same bits on every run). */
#include <stdio.h>
#include <stdlib.h>

#include "cuda_check.h"
#include "mamba_cuda.h"
#include "grid.cuh"
#include "column_sum.cuh"

#define CONV_MAX_K 8

__global__ void causal_conv1d_forward_kernel(float *out, const float *x, const float *weight,
                                             const float *bias, int T, int C, int K, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(i % C);
        const int t = (int)((i / C) % T);
        float acc = bias ? bias[c] : 0.0f;
        /* tap j reads time t−K+1+j, i.e. j·C floats after the row t−K+1 */
        for (int j = max(0, K - 1 - t); j < K; j++)
            acc += weight[(size_t)c * K + j] * x[i - (size_t)(K - 1 - j) * C];
        out[i] = acc;
    }
}

__global__ void causal_conv1d_dx_kernel(float *dx, const float *dout, const float *weight, int T,
                                        int C, int K, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(i % C);
        const int s = (int)((i / C) % T);
        float acc = 0.0f;
        /* input time s feeds output time s+K−1−j through tap j */
        for (int j = 0; j < K; j++) {
            const int t = s + K - 1 - j;
            if (t < T) acc += weight[(size_t)c * K + j] * dout[i + (size_t)(K - 1 - j) * C];
        }
        dx[i] += acc;
    }
}

/* Row n = (b, t) of the tap and bias gradients, through column_sum.cuh: acc[j] (j < K) for
 * tap j, acc[CONV_MAX_K] for the bias (taps K … CONV_MAX_K−1 stay zero and are dropped). */
struct ConvWeightGradTerm {
    const float *dout, *x;
    int T, C, K;
    __device__ void operator()(int n, int c, float (&acc)[CONV_MAX_K + 1]) const {
        const int t = n % T;
        const size_t i = (size_t)n * C + c;
        const float g = dout[i];
        acc[CONV_MAX_K] += g;
#pragma unroll
        for (int j = 0; j < CONV_MAX_K; j++)
            if (j < K && t - K + 1 + j >= 0) acc[j] += g * x[i - (size_t)(K - 1 - j) * C];
    }
};

struct ConvWeightGradFinish {
    float *dweight, *dbias;
    int K;
    __device__ void operator()(int c, int v, float sum) const {
        if (v < K) {
            if (dweight) dweight[(size_t)c * K + v] += sum;
        } else if (v == CONV_MAX_K && dbias) {
            dbias[c] += sum;
        }
    }
};

static void check_kernel_size(int K, const char *who) {
    if (K < 1 || K > CONV_MAX_K) {
        fprintf(stderr, "%s: kernel size %d unsupported (1..%d)\n", who, K, CONV_MAX_K);
        abort();
    }
}

extern "C" void causal_conv1d_forward_cuda(float *out, const float *x, const float *weight,
                                           const float *bias, int Bsz, int T, int C, int K,
                                           cudaStream_t stream) {
    const size_t n = (size_t)Bsz * T * C;
    if (n == 0) return;
    check_kernel_size(K, "causal_conv1d_forward_cuda");
    causal_conv1d_forward_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(out, x, weight, bias, T, C, K, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void causal_conv1d_backward_cuda(float *dx, float *dweight, float *dbias, const float *dout,
                                            const float *x, const float *weight, int Bsz, int T,
                                            int C, int K, cudaStream_t stream) {
    const size_t n = (size_t)Bsz * T * C;
    if (n == 0) return;
    check_kernel_size(K, "causal_conv1d_backward_cuda");
    if (dx) {
        causal_conv1d_dx_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(dx, dout, weight, T, C, K, n);
        CUDA_CHECK_LAUNCH();
    }
    if (dweight || dbias) {
        column_sums<CONV_MAX_K + 1>(ConvWeightGradTerm{dout, x, T, C, K}, ConvWeightGradFinish{dweight, dbias, K},
                                    Bsz * T, C, stream);
    }
}
