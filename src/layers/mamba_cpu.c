/* mamba_cpu.c — CPU kernels of the Mamba-1 layer (see mamba_cpu.h for shapes):
 *
 *   causal conv1d   out[b,t,c] = bias[c] + Σ_j w[c,j] x[b,t−K+1+j,c]
 *   selective scan  h_t = exp(δ_t A) ⊙ h_{t−1} + (δ_t u_t) B_t,   y_t = h_t·C_t + D u_t
 *
 * The scan is chunked: forward keeps only the state entering each chunk, (Bsz, n_chunks,
 * C, N) floats, instead of all T·C·N states (at T = 4096, d_inner = 1024, N = 16 that
 * would be 256 MiB per sequence); backward walks the chunks from last to first and
 * recomputes one chunk's states (chunk·N floats per thread) from its saved start state.
 *
 * Threads: each channel's scan is independent, so forward runs in parallel over
 * (batch, channel). Backward runs in parallel over channels only, every thread looping
 * over the batch, so that dA, dD, du and dδ of a channel have one writer; dB and dC are
 * sums over channels, so each thread accumulates them into its own partial buffer
 * (from the caller's scratch) and the partials are added up at the end. */
#include "mamba_cpu.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "../core/common.h"

void causal_conv1d_forward(float *out, const float *x, const float *weight, const float *bias,
                           int Bsz, int T, int C, int K) {
    #pragma omp parallel for collapse(2) if ((size_t)Bsz * T * C * K > 32768)
    for (int b = 0; b < Bsz; b++) {
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) o[c] = bias ? bias[c] : 0.0f;
            /* tap j reads time t−K+1+j; taps before t = 0 read the zero padding */
            for (int j = imax(0, K - 1 - t); j < K; j++) {
                const float *xs = x + ((size_t)b * T + (t - K + 1 + j)) * C;
                for (int c = 0; c < C; c++) o[c] += weight[(size_t)c * K + j] * xs[c];
            }
        }
    }
}

void causal_conv1d_backward(float *dx, float *dweight, float *dbias, const float *dout,
                            const float *x, const float *weight, int Bsz, int T, int C, int K) {
    /* dx as a gather: input time s feeds output t = s+K−1−j through tap j */
    if (dx) {
        #pragma omp parallel for collapse(2) if ((size_t)Bsz * T * C * K > 32768)
        for (int b = 0; b < Bsz; b++) {
            for (int s = 0; s < T; s++) {
                float *dxs = dx + ((size_t)b * T + s) * C;
                for (int j = 0; j < K; j++) {
                    int t = s + K - 1 - j;
                    if (t >= T) continue;
                    const float *dot = dout + ((size_t)b * T + t) * C;
                    for (int c = 0; c < C; c++) dxs[c] += weight[(size_t)c * K + j] * dot[c];
                }
            }
        }
    }
    /* weight and bias gradients sum over (b, t): one writer per channel */
    if (dweight || dbias) {
        #pragma omp parallel for if ((size_t)Bsz * T * C * K > 32768)
        for (int c = 0; c < C; c++) {
            float db = 0.0f;
            for (int j = 0; j < K; j++) {
                float dw = 0.0f;
                for (int b = 0; b < Bsz; b++)
                    for (int t = imax(0, K - 1 - j); t < T; t++)
                        dw += dout[((size_t)b * T + t) * C + c] * x[((size_t)b * T + (t - K + 1 + j)) * C + c];
                if (dweight) dweight[(size_t)c * K + j] += dw;
            }
            if (dbias) {
                for (int b = 0; b < Bsz; b++)
                    for (int t = 0; t < T; t++) db += dout[((size_t)b * T + t) * C + c];
                dbias[c] += db;
            }
        }
    }
}

void selective_scan_forward(float *y, float *chunk_states, const float *u, const float *delta,
                            const float *A, const float *B, const float *C, const float *D,
                            int Bsz, int T, int channels, int N, int chunk) {
    int n_chunks = selective_scan_n_chunks(T, chunk);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < Bsz; b++) {
        for (int c = 0; c < channels; c++) {
            float h[N];   /* this channel's state, N floats on the stack */
            for (int n = 0; n < N; n++) h[n] = 0.0f;
            const float *Ac = A + (size_t)c * N;
            float Dc = D ? D[c] : 0.0f;
            for (int t = 0; t < T; t++) {
                if (t % chunk == 0) {
                    float *saved = chunk_states + (((size_t)b * n_chunks + t / chunk) * channels + c) * N;
                    memcpy(saved, h, (size_t)N * sizeof(float));
                }
                size_t idx = ((size_t)b * T + t) * channels + c;
                const float *Bt = B + ((size_t)b * T + t) * N;
                const float *Ct = C + ((size_t)b * T + t) * N;
                float dt = delta[idx], ut = u[idx], dtu = dt * ut;
                float yt = 0.0f;
                for (int n = 0; n < N; n++) {
                    h[n] = expf(dt * Ac[n]) * h[n] + dtu * Bt[n];
                    yt += h[n] * Ct[n];
                }
                y[idx] = yt + Dc * ut;
            }
        }
    }
}

/* Per thread: partial dB and dC (Bsz·T·N each), the recomputed states of one chunk and
 * their decays exp(δA) (L·N each, so the reverse pass needs no second exp), the gradient
 * carried into the previous step (N) and the dA accumulator (N). */
static size_t scan_backward_floats_per_thread(int Bsz, int T, int N, int chunk) {
    size_t L = (size_t)imin(chunk, T);
    return 2 * (size_t)Bsz * T * N + (2 * L + 2) * (size_t)N;
}

size_t selective_scan_backward_scratch_floats(int Bsz, int T, int N, int chunk, int n_threads) {
    return (size_t)n_threads * scan_backward_floats_per_thread(Bsz, T, N, chunk);
}

/* Gradients of one (batch b, channel c) scan; dB_part/dC_part are this thread's. */
static void scan_backward_channel(float *du, float *ddelta, float *dA_acc, float *dD_acc,
                                  float *dB_part, float *dC_part, float *states, float *decays,
                                  float *carry, const float *dy, const float *u, const float *delta,
                                  const float *Ac, const float *B, const float *C, float Dc,
                                  const float *chunk_states, int b, int c, int T, int channels,
                                  int N, int chunk) {
    int n_chunks = selective_scan_n_chunks(T, chunk);
    for (int n = 0; n < N; n++) carry[n] = 0.0f;   /* exp(δ_{t+1}A) ⊙ dh_{t+1}; 0 past the end */
    for (int k = n_chunks - 1; k >= 0; k--) {
        int t0 = k * chunk, L = imin(T, t0 + chunk) - t0;
        const float *h_start = chunk_states + (((size_t)b * n_chunks + k) * channels + c) * N;
        /* recompute this chunk's states: states[s] = h_{t0+s}, decays[s] = exp(δ_{t0+s} A) */
        const float *prev = h_start;
        for (int s = 0; s < L; s++) {
            size_t row = (size_t)b * T + t0 + s;
            float dt = delta[row * channels + c], dtu = dt * u[row * channels + c];
            const float *Bt = B + row * N;
            float *hs = states + (size_t)s * N, *decay = decays + (size_t)s * N;
            for (int n = 0; n < N; n++) {
                decay[n] = expf(dt * Ac[n]);
                hs[n] = decay[n] * prev[n] + dtu * Bt[n];
            }
            prev = hs;
        }
        /* reverse recurrence over the chunk */
        for (int s = L - 1; s >= 0; s--) {
            size_t row = (size_t)b * T + t0 + s, idx = row * channels + c;
            float dt = delta[idx], ut = u[idx], dyt = dy[idx];
            const float *h = states + (size_t)s * N, *decay = decays + (size_t)s * N;
            const float *h_prev = s > 0 ? states + (size_t)(s - 1) * N : h_start;
            const float *Bt = B + row * N, *Ct = C + row * N;
            float *dBt = dB_part + row * N, *dCt = dC_part + row * N;
            float d_dt = 0.0f, d_u = 0.0f;
            for (int n = 0; n < N; n++) {
                float dh = carry[n] + dyt * Ct[n];
                dCt[n] += dyt * h[n];
                dBt[n] += dh * dt * ut;
                d_dt += dh * (Ac[n] * decay[n] * h_prev[n] + ut * Bt[n]);
                dA_acc[n] += dh * dt * decay[n] * h_prev[n];
                d_u += dh * dt * Bt[n];
                carry[n] = decay[n] * dh;
            }
            if (du) du[idx] += d_u + Dc * dyt;
            if (ddelta) ddelta[idx] += d_dt;
            *dD_acc += dyt * ut;
        }
    }
}

void selective_scan_backward(float *du, float *ddelta, float *dA, float *dB, float *dC, float *dD,
                             const float *dy, const float *u, const float *delta, const float *A,
                             const float *B, const float *C, const float *D,
                             const float *chunk_states, int Bsz, int T, int channels, int N,
                             int chunk, float *scratch, size_t scratch_floats) {
    size_t per_thread = scan_backward_floats_per_thread(Bsz, T, N, chunk);
    size_t fit = scratch_floats / per_thread;
    BRAID_CHECK(fit >= 1, "selective_scan_backward: scratch of %zu floats, need at least %zu",
                scratch_floats, per_thread);
    int n_threads = (size_t)omp_get_max_threads() < fit ? omp_get_max_threads() : (int)fit;
    size_t btn = (size_t)Bsz * T * N;

    #pragma omp parallel num_threads(n_threads)
    {
        int team = omp_get_num_threads();
        float *mine = scratch + (size_t)omp_get_thread_num() * per_thread;
        float *dB_part = mine, *dC_part = mine + btn;
        float *states = mine + 2 * btn;
        float *decays = states + (size_t)imin(chunk, T) * N;
        float *carry = decays + (size_t)imin(chunk, T) * N;
        float *dA_acc = carry + N;
        memset(mine, 0, 2 * btn * sizeof(float));

        #pragma omp for schedule(static)
        for (int c = 0; c < channels; c++) {
            for (int n = 0; n < N; n++) dA_acc[n] = 0.0f;
            float dD_acc = 0.0f;
            for (int b = 0; b < Bsz; b++)
                scan_backward_channel(du, ddelta, dA_acc, &dD_acc, dB_part, dC_part, states, decays, carry,
                                      dy, u, delta, A + (size_t)c * N, B, C, D ? D[c] : 0.0f,
                                      chunk_states, b, c, T, channels, N, chunk);
            if (dA) for (int n = 0; n < N; n++) dA[(size_t)c * N + n] += dA_acc[n];
            if (dD) dD[c] += dD_acc;
        }
        /* (implicit barrier) add up the threads' partial dB and dC */
        #pragma omp for schedule(static)
        for (size_t j = 0; j < btn; j++) {
            float sum_B = 0.0f, sum_C = 0.0f;
            for (int p = 0; p < team; p++) {
                sum_B += scratch[(size_t)p * per_thread + j];
                sum_C += scratch[(size_t)p * per_thread + btn + j];
            }
            if (dB) dB[j] += sum_B;
            if (dC) dC[j] += sum_C;
        }
    }
}
