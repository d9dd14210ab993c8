/* gla_cuda.h — CUDA versions of the chunked gated-linear-attention kernel of
 * layers/gla_cpu.h, and the small elementwise kernels of the GLA layer (issue 8).
 *
 * The two chunk launchers have the CPU kernels' names plus _cuda and the same arguments,
 * layouts and semantics (gla_cpu.h: q, k, log_alpha (B,T,H,dk); v, o (B,T,H,dv);
 * chunk_states (B,H,ceil(T/chunk),dk,dv) holding the state ENTERING each chunk; forward
 * WRITES o, chunk_states and final_state (may be NULL); backward ACCUMULATES into grad_q,
 * grad_k, grad_v and grad_log_alpha, which may be NULL), except:
 *  - every tensor pointer is a DEVICE pointer and a cudaStream_t comes last; the launchers
 *    queue work and return without waiting;
 *  - forward needs no scratch (its `scratch` argument is ignored and may be NULL);
 *    backward takes a device scratch of gla_chunk_backward_cuda_scratch_floats(...)
 *    floats, which, unlike the CPU's, depends on T (per-block partial sums of dq, dk and
 *    dlog α, added up in a fixed order afterwards: the result is the same bits every run);
 *  - limits: per-head key width dk ≤ GLA_CUDA_MAX_DK (abort beyond); any dv, T, chunk.
 * The state is float32 throughout. Tested against the CPU kernels in tests/test_cuda_gla.c;
 * the design is described at the top of gla.cu. */
#ifndef BRAID_GLA_CUDA_H
#define BRAID_GLA_CUDA_H
#include <stddef.h>
#include <cuda_runtime_api.h>

/* Largest per-head key width the chunk kernels take: the backward's shared memory grows
 * with dk (about 0.6 KiB per key channel) and must stay under the 227 KiB of an H100. */
#define GLA_CUDA_MAX_DK 256

#ifdef __cplusplus
extern "C" {
#endif

/* S_t = diag(exp(log_alpha_t)) S_{t−1} + k_tᵀ v_t,  o_t = (scale · q_t) S_t, per (b, h). */
void gla_chunk_forward_cuda(float *o, float *chunk_states, float *final_state,
                            const float *q, const float *k, const float *v, const float *log_alpha,
                            int B, int T, int H, int dk, int dv, int chunk, float scale,
                            float *scratch, cudaStream_t stream);

/* Floats of device scratch gla_chunk_backward_cuda needs for these sizes (grows with B
 * and T, so the size for the largest (B, T) serves every smaller call). */
size_t gla_chunk_backward_cuda_scratch_floats(int B, int T, int H, int dk, int dv, int chunk);

/* The gradients of gla_chunk_forward, from forward's inputs and the chunk_states it wrote;
 * each chunk's inner states are recomputed from its saved start state. */
void gla_chunk_backward_cuda(float *grad_q, float *grad_k, float *grad_v, float *grad_log_alpha,
                             const float *grad_o,
                             const float *q, const float *k, const float *v, const float *log_alpha,
                             const float *chunk_states, int B, int T, int H, int dk, int dv,
                             int chunk, float scale, float *scratch, cudaStream_t stream);

/* The layer's decay, written into log_alpha:
 *   gated:      log_alpha[i] = logsigmoid(pre[i]) · inv_normalizer   (n elements)
 *   retention:  log_alpha[(n, h, c)] = log(1 − 2^(−5−h)) over N tokens, H heads, dk each */
void gla_log_decay_gated_cuda(float *log_alpha, const float *pre, size_t n, float inv_normalizer,
                              cudaStream_t stream);
void gla_log_decay_retention_cuda(float *log_alpha, size_t N, int H, int dk, cudaStream_t stream);
/* Backward of the gated decay, in place: grad holds ∂L/∂log α on entry and
 * ∂L/∂pre = ∂L/∂log α · σ(−pre) · inv_normalizer on return. */
void gla_log_decay_gated_backward_cuda(float *grad, const float *pre, size_t n, float inv_normalizer,
                                       cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
