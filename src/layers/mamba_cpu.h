/* mamba_cpu.h — the CPU kernels of the Mamba-1 layer: a depthwise causal conv1d and
 * the chunked selective scan. They are the reference a CUDA version is tested against,
 * so each takes plain contiguous row-major buffers and has no hidden state.
 *
 * Shapes (Bsz = batch, T = time, C = channels = d_inner, N = d_state):
 *   sequences x, u, delta, y:  (Bsz, T, C)
 *   B, C matrices of the scan: (Bsz, T, N)   (input-dependent, shared by all channels)
 *   A: (C, N)  (the actual A = −exp(A_log), not A_log),  D: (C)
 *   chunk_states: (Bsz, n_chunks, C, N), n_chunks = ceil(T / chunk)
 * Every *_backward ACCUMULATES (+=) into its gradients; a NULL gradient is skipped. */
#ifndef BRAID_MAMBA_CPU_H
#define BRAID_MAMBA_CPU_H
#include <stddef.h>

/* Depthwise causal convolution, kernel K, zero padding before t = 0:
 *   out[b,t,c] = bias[c] + Σ_{j=0..K-1} weight[c,j] · x[b, t−K+1+j, c]
 * (PyTorch Conv1d(C, C, K, groups=C, padding=K−1), truncated to the first T outputs).
 * weight is (C, K) (the (C, 1, K) PyTorch tensor), bias (C) or NULL. out is written. */
void causal_conv1d_forward(float *out, const float *x, const float *weight, const float *bias,
                           int Bsz, int T, int C, int K);
/* dx[b,t−K+1+j,c] += weight[c,j]·dout[b,t,c];  dweight[c,j] += Σ_{b,t} dout[b,t,c]·x[b,t−K+1+j,c];
 * dbias[c] += Σ_{b,t} dout[b,t,c]. */
void causal_conv1d_backward(float *dx, float *dweight, float *dbias, const float *dout,
                            const float *x, const float *weight, int Bsz, int T, int C, int K);

/* Number of chunks the scan splits T into. */
static inline int selective_scan_n_chunks(int T, int chunk) { return (T + chunk - 1) / chunk; }

/* Selective scan, per (batch b, channel c), h an N-vector, h_{−1} = 0:
 *   h_t = exp(δ_t A_c) ⊙ h_{t−1} + (δ_t u_t) B_t
 *   y_t = h_t · C_t + D_c u_t
 * y is written. chunk_states[b,k,c,:] is written with the state entering chunk k (the
 * state after step k·chunk − 1; zero for k = 0): all that backward needs to recompute
 * the states of a chunk. Computed in float32. */
void selective_scan_forward(float *y, float *chunk_states, const float *u, const float *delta,
                            const float *A, const float *B, const float *C, const float *D,
                            int Bsz, int T, int channels, int N, int chunk);

/* Floats of scratch selective_scan_backward needs to run on n_threads threads. */
size_t selective_scan_backward_scratch_floats(int Bsz, int T, int N, int chunk, int n_threads);

/* Gradients of the scan given dy (Bsz,T,C), walking chunks from last to first and
 * recomputing each chunk's states from chunk_states. With dh_t the gradient reaching h_t:
 *   dh_t = dy_t C_t + exp(δ_{t+1} A) ⊙ dh_{t+1}
 *   dC_t += Σ_c dy_{t,c} h_{t,c}           dB_t += Σ_c dh_{t,c} δ_{t,c} u_{t,c}
 *   dδ_t += Σ_n dh_t (A exp(δ_t A) h_{t−1} + u_t B_t)
 *   dA   += Σ_t dh_t δ_t exp(δ_t A) h_{t−1}
 *   du_t += Σ_n dh_t δ_t B_t + D dy_t         dD += Σ_t dy_t u_t
 * scratch holds scratch_floats floats; the kernel uses as many OpenMP threads as it
 * has threads and scratch for (at least 1 thread's worth is required). */
void selective_scan_backward(float *du, float *ddelta, float *dA, float *dB, float *dC, float *dD,
                             const float *dy, const float *u, const float *delta, const float *A,
                             const float *B, const float *C, const float *D,
                             const float *chunk_states, int Bsz, int T, int channels, int N,
                             int chunk, float *scratch, size_t scratch_floats);

#endif
