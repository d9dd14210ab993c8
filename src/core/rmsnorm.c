/* rmsnorm.c — RMSNorm over the last dimension.
 *
 * forward:  r = 1/sqrt(mean(x²) + eps);  y = x · r · w
 * backward: with g = dy ⊙ w,
 *           dx = r · (g − x · r² · mean(g ⊙ x))
 *           dw += Σ_rows dy ⊙ x · r */
#include <math.h>
#include "ops.h"

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                     int N, int C, float eps) {
    #pragma omp parallel for if (N > 256)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = 1.0f / sqrtf((float)(ss / C) + eps);
        if (rstd) rstd[n] = r;
        for (int c = 0; c < C; c++) y[c] = x[c] * r * weight[c];
    }
}

void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                      const float *weight, const float *rstd, int N, int C) {
    if (dinp) {
        #pragma omp parallel for if (N > 256)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float r = rstd[n];
            double dot = 0.0;
            for (int c = 0; c < C; c++) dot += (double)dy[c] * weight[c] * x[c];
            float k = (float)(dot / C) * r * r;
            for (int c = 0; c < C; c++) dx[c] += r * (dy[c] * weight[c] - x[c] * k);
        }
    }
    if (dweight) {
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float r = rstd[n];
            for (int c = 0; c < C; c++) dweight[c] += dy[c] * x[c] * r;
        }
    }
}
