/* gla_cpu.h — the chunked gated-linear-attention kernel (CPU reference).
 *
 * Per (batch b, head h), over t = 0..T-1, with S_{-1} = 0 (dk × dv):
 *     S_t = diag(exp(log_alpha_t)) S_{t-1} + k_tᵀ v_t
 *     o_t = (scale · q_t) S_t
 * log_alpha is given per (token, key channel), so one kernel serves GLA (data-dependent
 * gate), RetNet's retention (a constant per head) and plain linear attention (0).
 *
 * Layouts (row-major, exactly what the layer's projections produce, no transposes):
 *     q, k, log_alpha, grad_q, grad_k, grad_log_alpha : (B, T, H, dk)
 *     v, o, grad_v, grad_o                            : (B, T, H, dv)
 *     chunk_states   : (B, H, n_chunks, dk, dv), n_chunks = ceil(T/chunk): the state
 *                      entering each chunk (S before its first token; chunk 0's is zero)
 *     final_state    : (B, H, dk, dv), S_{T-1}, for decoding; may be NULL
 * dk, dv here are the per-head key and value widths (DESIGN.md's names).
 *
 * The CUDA kernel (issue 8) is tested against these two functions. */
#ifndef BRAID_GLA_CPU_H
#define BRAID_GLA_CPU_H
#include <stddef.h>

/* Number of chunks of length `chunk` covering T (the last one may be shorter). */
int gla_chunk_count(int T, int chunk);
/* Floats of scratch gla_chunk_forward / gla_chunk_backward need (backward's, the larger). */
size_t gla_chunk_scratch_floats(int B, int H, int dk, int dv, int chunk);

/* o is WRITTEN. chunk_states is WRITTEN and must be kept for backward. */
void gla_chunk_forward(float *o, float *chunk_states, float *final_state,
                       const float *q, const float *k, const float *v, const float *log_alpha,
                       int B, int T, int H, int dk, int dv, int chunk, float scale, float *scratch);

/* grad_q, grad_k, grad_v, grad_log_alpha are ACCUMULATED (+=); grad_log_alpha may be NULL
 * (a constant decay). Takes forward's inputs plus the chunk_states it wrote; recomputes
 * everything else within each chunk, and carries ∂L/∂S backward through the chunks. */
void gla_chunk_backward(float *grad_q, float *grad_k, float *grad_v, float *grad_log_alpha,
                        const float *grad_o,
                        const float *q, const float *k, const float *v, const float *log_alpha,
                        const float *chunk_states, int B, int T, int H, int dk, int dv, int chunk,
                        float scale, float *scratch);

#endif
