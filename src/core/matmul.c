/* matmul.c — linear layers through OpenBLAS.
 *
 * out[N,OC] = inp[N,C] · W[OC,C]ᵀ + b          (W stored PyTorch-style, out × in)
 * dinp     += dout · W                          [N,OC]·[OC,C]
 * dW       += doutᵀ · inp                       [OC,N]·[N,C]
 * db       += Σ_n dout[n,:]
 * Row-major sgemm on contiguous buffers; OpenBLAS threads itself (we call it from
 * outside our OpenMP regions). */
#include <cblas.h>
#include "ops.h"

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int N, int C, int OC, int accumulate) {
    if (bias && !accumulate) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] = bias[o];
        accumulate = 1;
    } else if (bias) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] += bias[o];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C,
                accumulate ? 1.0f : 0.0f, out, OC);
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, int N, int C, int OC) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C,
                    1.0f, dinp, C);
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C,
                    1.0f, dweight, C);
    if (dbias)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) dbias[o] += dout[(size_t)n * OC + o];
}
