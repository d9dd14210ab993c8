/* mamba_cuda.h — CUDA versions of the Mamba-1 kernels in layers/mamba_cpu.h: the causal
 * depthwise conv1d and the chunked selective scan (issue 8, second step).
 *
 * Each launcher has the CPU kernel's name plus _cuda and the same arguments, layouts and
 * semantics (see mamba_cpu.h: sequences (Bsz,T,C), B/C of the scan (Bsz,T,N), A (C,N) the
 * actual negative A, chunk_states (Bsz, ceil(T/chunk), C, N) holding the state ENTERING
 * each chunk; every *_backward ACCUMULATES into its gradients and skips a NULL one), except:
 *  - every tensor pointer is a DEVICE pointer, and a cudaStream_t comes last; the launchers
 *    queue work and return without waiting;
 *  - selective_scan_backward_cuda takes a device scratch of
 *    selective_scan_backward_cuda_scratch_floats(...) floats (per-block partial sums of dB,
 *    dC, dA and dD, added up in a fixed order: the result is the same bits on every run);
 *    its size depends on the channel count, not on a thread count as the CPU's does;
 *  - causal_conv1d_backward_cuda takes dx's row stride too (dx_ld, after C): the Mamba
 *    layer's dx1 lies beside dz in each row of one array (below);
 *  - limits: d_state N ≤ 32 for the scan, kernel K ≤ 8 for the conv (both abort beyond).
 * Tested against the CPU kernels in tests/test_cuda_scan.c; design in docs/gpu-scan.md.
 * The layer's elementwise steps (mamba_glue.cu) are declared at the end; the whole layer
 * is tested against its CPU path in tests/test_cuda_mamba.c. */
#ifndef BRAID_MAMBA_CUDA_H
#define BRAID_MAMBA_CUDA_H
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[b,t,c] = bias[c] + Σ_j weight[c,j] x[b,t−K+1+j,c]; weight (C,K), bias (C) or NULL. */
void causal_conv1d_forward_cuda(float *out, const float *x, const float *weight, const float *bias,
                                int Bsz, int T, int C, int K, cudaStream_t stream);
/* The same, and Mamba's u = silu(out) (silu_f's formula) into u, and into u16 as bf16 (x_proj's
 * operand, ops_cuda.h) unless NULL: from the registers holding out, not a pass reading it. */
void causal_conv1d_silu_forward_cuda(float *out, float *u, uint16_t *u16, const float *x, const float *weight,
                                     const float *bias, int Bsz, int T, int C, int K, cudaStream_t stream);
/* dx += (gather of weight·dout); dweight[c,j] += Σ_{b,t} dout·x; dbias[c] += Σ_{b,t} dout.
 * The (b,t) sums have a fixed order (no atomics). silu_in, when not NULL, is the conv's
 * output a before Mamba's u = silu(a), and dout is du: the conv then takes du ⊙ silu'(a)
 * as its output gradient (the silu's backward, done as the rows are loaded).
 * dx's rows lie dx_ld ≥ C elements apart, element (b,t,c) at dx[(b·T + t)·dx_ld + c]
 * (dx_ld = C: the others' layout): Mamba's dx1 is the first half of each row of in_proj's
 * (BT, 2di) output gradient, dx_ld = 2di; what lies between the rows is not touched. */
void causal_conv1d_backward_cuda(float *dx, float *dweight, float *dbias, const float *dout,
                                 const float *silu_in, const float *x, const float *weight, int Bsz, int T,
                                 int C, int dx_ld, int K, cudaStream_t stream);
/* The same with dx WRITTEN as bf16 (not accumulated): in_proj's x1-half output gradient when
 * that product multiplies in bf16 (ops_cuda.h, matmul_bf16_operands_cuda); dx required. */
void causal_conv1d_backward_bf16_cuda(uint16_t *dx, float *dweight, float *dbias, const float *dout,
                                      const float *silu_in, const float *x, const float *weight, int Bsz,
                                      int T, int C, int dx_ld, int K, cudaStream_t stream);

/* h_t = exp(δ_t A) ⊙ h_{t−1} + (δ_t u_t) B_t,  y_t = h_t·C_t + D u_t  (D may be NULL).
 * Writes y and chunk_states. */
void selective_scan_forward_cuda(float *y, float *chunk_states, const float *u, const float *delta,
                                 const float *A, const float *B, const float *C, const float *D,
                                 int Bsz, int T, int channels, int N, int chunk, cudaStream_t stream);

/* Floats of device scratch selective_scan_backward_cuda (and _write_cuda) needs. */
size_t selective_scan_backward_cuda_scratch_floats(int Bsz, int T, int channels, int N);

/* The gradients of mamba_cpu.h's selective_scan_backward, recomputing each chunk's states
 * from chunk_states; accumulates into du, ddelta, dA, dB, dC, dD (each may be NULL). */
void selective_scan_backward_cuda(float *du, float *ddelta, float *dA, float *dB, float *dC,
                                  float *dD, const float *dy, const float *u, const float *delta,
                                  const float *A, const float *B, const float *C, const float *D,
                                  const float *chunk_states, int Bsz, int T, int channels, int N,
                                  int chunk, float *scratch, size_t scratch_floats,
                                  cudaStream_t stream);
/* The same, but du and ddelta are WRITTEN (every element, neither read nor needing zeroing
 * first); dA, dB, dC, dD still accumulate. The Mamba layer's du and dδ start from the
 * scan's, and zeroing them first and reading them back in the kernel cost ~10% of the
 * backward (docs/performance.md, "The scan's backward, part by part").
 * delta_softplus: δ is softplus(a) and ddelta gets da = dδ·σ(a) = dδ·(1 − e^{−δ}) instead
 * of dδ (the layer's next step, done as the values leave, not in a pass of its own). */
void selective_scan_backward_write_cuda(float *du, float *ddelta, float *dA, float *dB, float *dC,
                                        float *dD, const float *dy, const float *u, const float *delta,
                                        const float *A, const float *B, const float *C, const float *D,
                                        const float *chunk_states, int Bsz, int T, int channels, int N,
                                        int chunk, float *scratch, size_t scratch_floats,
                                        int delta_softplus, cudaStream_t stream);

/* ---- the layer's elementwise glue (mamba_glue.cu), the loops of layers/mamba.c ----
 * n elements each; the same formulas as core/ops.h's silu_f/softplus_f (expf, log1pf,
 * expm1f: no fast intrinsics). In place where the CPU loop is in place. */

/* (u = silu(conv) comes out of the conv itself: causal_conv1d_silu_forward_cuda) */
/* x[r][c] = softplus(x[r][c] + bias[c])   (δ from dt_proj's product and its bias; rows × cols) */
void mamba_bias_softplus_cuda(float *x, const float *bias, size_t rows, int cols, cudaStream_t stream);
/* x_proj's [δr | B | C] rows (xdbl, rows × (R+2N)) into the three arrays, and back (join) */
void mamba_x_proj_split_cuda(float *dtr, float *Bm, float *Cm, const float *xdbl, size_t rows, int R, int N,
                             cudaStream_t stream);
void mamba_x_proj_join_cuda(float *xdbl, const float *dtr, const float *Bm, const float *Cm, size_t rows, int R,
                            int N, cudaStream_t stream);
/* A = −exp(A_log) */
void mamba_neg_exp_cuda(float *A, const float *A_log, size_t n, cudaStream_t stream);
/* gated = y ⊙ silu(z) */
void mamba_gate_forward_cuda(float *gated, const float *y, const float *z, size_t n,
                             cudaStream_t stream);
/* dz = dgated ⊙ y ⊙ silu'(z) (WRITTEN), then dgated ⊙= silu(z) (the scan's dy); rows × cols
 * elements, dz's rows dz_ld ≥ cols apart (element (r,c) at dz[r·dz_ld + c]; dz_ld = cols: flat
 * like the others): in_proj's (BT, 2di) output gradient holds dz in the second half of each
 * row, dz_ld = 2di, and what lies between the rows is not touched. */
void mamba_gate_backward_cuda(float *dz, float *dgated, const float *y, const float *z, size_t rows, int cols,
                              int dz_ld, cudaStream_t stream);
/* The same writing gated / dz as bf16: out_proj's input and in_proj's z-half output
 * gradient when those products multiply in bf16 (ops_cuda.h, matmul_bf16_operands_cuda). */
void mamba_gate_forward_bf16_cuda(uint16_t *gated, const float *y, const float *z, size_t n, cudaStream_t stream);
void mamba_gate_backward_bf16_cuda(uint16_t *dz, float *dgated, const float *y, const float *z, size_t n,
                                   cudaStream_t stream);
/* Both at once, from one read of dgated, y, z: gated and dz WRITTEN as bf16 and dgated
 * turned into the scan's dy in place, the bits the two above give. For a backward whose
 * out_proj's dweight reads gated in bf16; gated, dz, dgated must not overlap. rows × cols
 * elements, dz's rows dz_ld apart as in mamba_gate_backward_cuda (gated's flat). */
void mamba_gate_backward_and_forward_bf16_cuda(uint16_t *gated, uint16_t *dz, float *dgated, const float *y,
                                               const float *z, size_t rows, int cols, int dz_ld,
                                               cudaStream_t stream);
/* dA_log += dA ⊙ A   (A = −exp(A_log), so ∂A/∂A_log = A; ACCUMULATES) */
void mamba_dA_log_accumulate_cuda(float *dA_log, const float *dA, const float *A, size_t n,
                                  cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
