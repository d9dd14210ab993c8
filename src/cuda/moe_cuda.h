/* moe_cuda.h — the routing, dispatch and combine kernels of the mixture-of-experts FFN
 * (layers/moe.c) on the GPU. The per-expert SwiGLU FFNs are not here: moe.c runs them
 * through matmul_*_cuda and swiglu_*_cuda on each expert's contiguous block of slots.
 *
 * Names and layouts follow moe.c: N tokens, E experts, top-k, S = N·k slots; a slot is a
 * (token n, rank j) pair; slots are grouped by expert, and slot_of[n·k + j] is the slot of
 * (n, j), slot_token[s] the token of slot s. All tensor and index pointers are DEVICE
 * pointers; each launcher queues its work on `stream` and returns without waiting.
 * Every per-token sum runs over a token's k slots in rank order, in one thread or one
 * warp with a fixed shuffle tree: no atomics, the same bits on every run. */
#ifndef BRAID_MOE_CUDA_H
#define BRAID_MOE_CUDA_H
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Per token n (one thread): probs[n,:] holds the router logits on entry and their
 * softmax on exit; lse[n] = log Σ_e exp(logits); expert[n,0..k) = the k largest p in
 * descending order, ties to the lower expert index (strict '>' in a repeated arg-max,
 * exactly as the CPU); weight[n,j] = p of expert[n,j], divided by their sum if
 * renormalize. Same float operations in the same order as moe.c's moe_route_forward. */
void moe_route_forward_cuda(float *probs, float *lse, int *expert, float *weight, int N, int E,
                            int k, int renormalize, cudaStream_t stream);

/* sums[e] = Σ_n probs[n,e] for e < E and sums[E] = Σ_n lse[n]², in double (the inputs of
 * the load-balancing and z losses). One block per sum, a fixed reduction order. */
void moe_route_sums_cuda(double *sums, const float *probs, const float *lse, int N, int E,
                         cudaStream_t stream);

/* xg[s,:] = x[slot_token[s],:]   xg (S,d), x (N,d); a row whose slot_token is −1 (the padding
 * after an expert's slots, moe.c) is zero. */
void moe_gather_rows_cuda(float *xg, const float *x, const int *slot_token, int S, int d,
                          cudaStream_t stream);
/* The same gather written as bfloat16 bits (uint16_t), the bf16 operand of the experts' gate
 * and up products: xg16[s,:] = x16[slot_token[s],:] where x16 (N,d), the bf16 copy of x its
 * producer wrote (matmul_bf16_copy_of_cuda), is given, else bf16(x[slot_token[s],:]) rounded
 * to nearest even; a padding row is zero. The bits matmul's conversion of moe_gather_rows_cuda's
 * xg gives, so the products read them unchanged. */
void moe_gather_rows_bf16_cuda(uint16_t *xg16, const float *x, const uint16_t *x16, const int *slot_token, int S,
                               int d, cudaStream_t stream);

/* y[n,:] = Σ_j weight[n,j] · eo[slot_of[n,j],:], j = 0..k−1 in order; y is WRITTEN. */
void moe_combine_cuda(float *y, const float *eo, const float *weight, const int *slot_of, int N,
                      int k, int d, cudaStream_t stream);

/* The combine's backward, one warp per (n, j), s = slot_of[n,j]:
 *   dweight[n,j] = dy[n,:] · eo[s,:]     (WRITTEN)
 *   deo[s,:]     = weight[n,j] · dy[n,:] (WRITTEN)
 * eo is only read: it is the forward's saved expert output (moe.c's MoeSaved), which a
 * second backward of the same forward reads again, so deo must not alias it. Every slot
 * belongs to exactly one (n, j), so no two warps touch the same row; rows of deo that no
 * pair maps to (the CUDA layer's padding rows) are left as they were.
 * The _bf16 variant writes deo as bfloat16 bits (uint16_t), rounded to nearest even from
 * the same float w·dy: the bits the matmul's conversion of the float32 deo gives, so the
 * bf16 down projection reads it as its dout (ops_cuda.h, "bf16 operands") unchanged.
 * dweight is the same in both. */
void moe_combine_backward_cuda(float *dweight, float *deo, const float *eo, const float *dy,
                               const float *weight, const int *slot_of, int N, int k, int d,
                               cudaStream_t stream);
void moe_combine_backward_bf16_cuda(float *dweight, uint16_t *deo16, const float *eo, const float *dy,
                                    const float *weight, const int *slot_of, int N, int k, int d,
                                    cudaStream_t stream);

/* dx[n,:] += Σ_j dxg[slot_of[n,j],:], j in order (the gather's backward, per token). */
void moe_scatter_add_rows_cuda(float *dx, const float *dxg, const int *slot_of, int N, int k,
                               int d, cudaStream_t stream);

/* Router backward per token (one thread), moe.c's moe_route_backward: dlogits (N,E) is
 * WRITTEN from dweight (N,k), probs, lse, expert, weight and the expert counts
 * offset[e+1] − offset[e] (offset: E+1 device ints). aux_scale = g·coef·E/N² and
 * z_scale = g·2·coef_z/N, with g = Ctx.aux_grad_scale, computed by the caller. */
void moe_route_backward_cuda(float *dlogits, const float *dweight, const float *probs,
                             const float *lse, const int *expert, const float *weight,
                             const int *offset, int N, int E, int k, int renormalize,
                             float aux_scale, float z_scale, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
