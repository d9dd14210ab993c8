/* ops_cuda.h — CUDA versions of the ops in core/ops.h (and of AdamW and the gradient
 * norm in train/adamw.h), first step of the CUDA backend (issue 8).
 *
 * Each launcher mirrors its CPU op: the name gains a _cuda suffix, the arguments and the
 * semantics are the same (row-major, weights PyTorch-style (out, in), *_backward
 * ACCUMULATES into dinp/dweight/dbias/dtable/dq/dk/dv, a NULL gradient pointer skips it),
 * except that
 *  - every tensor pointer is a DEVICE pointer (host pointers are named as such below);
 *  - the work is queued on `stream`, an extra last argument (0 = the default stream),
 *    and the launcher returns without waiting, except cross_entropy, which returns
 *    numbers to the host and so waits for its stream;
 *  - nothing allocates device memory inside an op: the two reductions that need room
 *    (cross-entropy, gradient norm) take a device scratch buffer from the caller.
 * The CPU op is the reference each one is tested against (tests/test_cuda_ops.c).
 * All arithmetic is float32 (reductions of sums over many elements in double where the
 * CPU op does so); TF32 is off. */
#ifndef BRAID_OPS_CUDA_H
#define BRAID_OPS_CUDA_H
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "../train/adamw.h"
#include "cuda_check.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Creates the cuBLAS handle the matmuls use; call once, after choosing the device,
 * before any matmul_*_cuda. ops_cuda_shutdown destroys it. */
void ops_cuda_init(void);
void ops_cuda_shutdown(void);
/* What every later matmul_*_cuda multiplies in: "fp32" (the default: exact float32),
 * "tf32" (tensor cores; inputs rounded to 10 mantissa bits) or "bf16" (tensor cores; both
 * operands converted to bfloat16 on the fly where every dimension is a multiple of 8 and
 * at least 64, TF32 elsewhere); float32 accumulation, output and storage
 * whichever (matmul.cu).
 * Returns -1 for any other name. Process-wide, like the handle. */
int matmul_set_precision_cuda(const char *precision);

/* out[N,OC] = inp[N,C] · weight[OC,C]ᵀ (+ bias[OC]); accumulate != 0 adds into out. */
void matmul_forward_cuda(float *out, const float *inp, const float *weight, const float *bias,
                         int N, int C, int OC, int accumulate, cudaStream_t stream);
/* dinp[N,C] += dout·weight;  dweight[OC,C] += doutᵀ·inp;  dbias[OC] += Σ_n dout. */
void matmul_backward_cuda(float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const float *weight, int N, int C, int OC,
                          cudaStream_t stream);

/* Fewer bf16 conversions (precision bf16; no-ops otherwise; matmul.cu "bf16 operands").
 * matmul_mirror_weights_cuda: one bf16 copy of the whole parameter buffer params[0..n), made
 * now; until matmul_forget_weights_cuda, a weight inside it is read from that copy instead
 * of being converted at each call. model_forward makes it; model_backward's end, AdamW,
 * every upload of parameters and model_free forget it, so it never outlives the values.
 * matmul_hold_input_cuda: inp[0..n) will not change until matmul_release_input_cuda, so
 * the products between them that read it as their input (forward or backward) share one
 * bf16 copy of it (q, k, v from x; gate and up; Mamba's two in_proj halves), and so do
 * the products that read it as their output gradient (a backward whose dinp and dweight
 * products are issued apart, with an op between them: the dense FFN's down projection,
 * Mamba's out_proj). One hold at a time; holding again before the release aborts. */
void matmul_mirror_weights_cuda(const float *params, size_t n, cudaStream_t stream);
void matmul_forget_weights_cuda(void);
void matmul_hold_input_cuda(const float *inp, size_t n);
void matmul_release_input_cuda(void);

/* bf16 operands written by the ops that produce them (precision bf16). Where
 * matmul_bf16_operands_cuda(N, C, OC) is true, the product out[N,OC] = inp[N,C]·weightᵀ and
 * its backward multiply in bf16, and a layer may have the op that makes inp, or dout, write
 * it as bf16 directly (uint16_t: the bits of a bfloat16; rounded to nearest even, the bits
 * the matmul's own conversion would give, so no product changes) instead of float32 that
 * the matmul then reads and converts: for a [N,H] activation that saves 10 of its 12 bytes
 * an element of memory traffic and a launch. It is false for precision fp32 and tf32, for
 * the shapes bf16 leaves to TF32, and when the environment has BRAID_BF16_PRODUCERS=0 (A/B
 * timings), read once: a layer's backward asks again what its forward decided.
 * matmul_set_bf16_producers_cuda(on): 1 / 0 turns the producers on / off, −1 goes back to
 * the environment's choice; between training steps only, never between a forward and its
 * backward (test_cuda_model's bit-identity check).
 * matmul_forward_bf16_input_cuda: matmul_forward_cuda with a bf16 input, no bias.
 * matmul_backward_bf16_operands_cuda: matmul_backward_cuda without dbias, reading dout_bf16
 * / inp_bf16 where they are not NULL instead of converting dout / inp (which may then be
 * NULL). Both abort where matmul_bf16_operands_cuda is false.
 * matmul_bf16_conversions_cuda: float-to-bf16 conversions made so far (the test's proof that
 * the producers' path was taken). */
int matmul_bf16_operands_cuda(int N, int C, int OC);
void matmul_set_bf16_producers_cuda(int on);
void matmul_forward_bf16_input_cuda(float *out, const uint16_t *inp, const float *weight, int N, int C, int OC,
                                    int accumulate, cudaStream_t stream);
void matmul_backward_bf16_operands_cuda(float *dinp, float *dweight, const float *dout, const uint16_t *dout_bf16,
                                        const float *inp, const uint16_t *inp_bf16, const float *weight, int N,
                                        int C, int OC, cudaStream_t stream);
size_t matmul_bf16_conversions_cuda(void);
/* matmul_backward_cuda (without dbias) and matmul_backward_bf16_operands_cuda with dinp
 * WRITTEN instead of accumulated (cuBLAS β = 0: dinp is neither read nor needs zeroing
 * first), for a layer whose dinp starts from this product: that saves a memset and a read
 * of N·C floats. dweight still accumulates. */
void matmul_backward_write_dinp_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                                     const float *weight, int N, int C, int OC, cudaStream_t stream);
void matmul_backward_bf16_operands_write_dinp_cuda(float *dinp, float *dweight, const float *dout,
                                                   const uint16_t *dout_bf16, const float *inp,
                                                   const uint16_t *inp_bf16, const float *weight, int N, int C,
                                                   int OC, cudaStream_t stream);
/* The op that wrote src[0..n) also wrote copy = bf16(src) (RMSNorm's output): until the
 * next call (src NULL: none), a product whose input is exactly src[0..n) — held or not —
 * reads copy instead of converting src. */
void matmul_bf16_copy_cuda(const float *src, size_t n, const uint16_t *copy);
/* The copy offered for exactly src[0..n) (matmul_bf16_copy_cuda), else NULL: for an op that
 * reads src to write a bf16 operand itself (the MoE layer's gather of its experts' rows),
 * which can then copy bits instead of rounding floats. */
const uint16_t *matmul_bf16_copy_of_cuda(const float *src, size_t n);
/* A second offer beside matmul_bf16_copy_cuda's, the same rules, for a gradient: the residual
 * stream's gradient as a layer's backward reads it (its output gradient, or a held array),
 * whose bf16 copy the RMSNorm backward that made it wrote (rmsnorm_backward_onto_cuda). */
void matmul_bf16_grad_copy_cuda(const float *src, size_t n, const uint16_t *copy);

/* out[n,:] = table[tokens[n],:];  dtable[tokens[n],:] += dout[n,:] (atomic: rows repeat). */
void embedding_forward_cuda(float *out, const int *tokens, const float *table, int N, int C,
                            cudaStream_t stream);
void embedding_backward_cuda(float *dtable, const float *dout, const int *tokens, int N, int C,
                             cudaStream_t stream);

/* y = x / sqrt(mean(x²) + eps) * w per row of C; rstd[N] (may be NULL) saved for backward. */
void rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight,
                          int N, int C, float eps, cudaStream_t stream);
/* The same, also writing out16 = bf16(out): a copy for the bf16 matmuls that read out
 * (matmul_bf16_copy_cuda). */
void rmsnorm_forward_bf16_copy_cuda(float *out, uint16_t *out16, float *rstd, const float *inp, const float *weight,
                                    int N, int C, float eps, cudaStream_t stream);
/* The residual stream's norm: x ← x + residual first (written back; the sum is the norm's
 * input, as the backward reads it), then the norm of x, out16 = bf16(out) where not NULL.
 * residual NULL: the plain norm of x (x not written). One pass instead of an add and a norm. */
void rmsnorm_residual_forward_cuda(float *out, uint16_t *out16, float *rstd, float *x, const float *residual,
                                   const float *weight, int N, int C, float eps, cudaStream_t stream);
/* dinp += the input gradient; dweight += its gradient (either may be NULL). */
void rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                           const float *weight, const float *rstd, int N, int C,
                           cudaStream_t stream);
/* The same with dinp WRITTEN as dbase + the input gradient (dbase NULL: from zero; dbase ==
 * dinp: rmsnorm_backward_cuda): the residual stream's gradient passes through the norm
 * without a copy into dinp first. dinp16, where not NULL, gets bf16(dinp): the copy the next
 * layer's backward reads as its bf16 output gradient (matmul_bf16_grad_copy_cuda). */
void rmsnorm_backward_onto_cuda(float *dinp, const float *dbase, uint16_t *dinp16, float *dweight, const float *dout,
                                const float *inp, const float *weight, const float *rstd, int N, int C,
                                cudaStream_t stream);

/* out = silu(gate) ⊙ up; backward WRITES dgate, dup (as the CPU op does). gate, up, dout
 * (and out) are flat [n/H, H]; dgate and dup are rows of H values ld ≥ H apart: element i
 * goes to dgate[(i / H)·ld + i % H], and the same in dup (ld == H: flat, as the CPU op).
 * The FFNs' backward passes dup = dgate + H, ld = 2H: one [rows, 2H] array whose row r is
 * [dgate[r, 0..H) | dup[r, 0..H)]: the output gradient of the gate and up projections taken
 * as ONE product with OC = 2H, their weights ([H, C] each, consecutive in the parameter
 * buffer) being one [2H, C] weight (layers/ffn_dense.c, layers/moe.c). Float4 pieces need H
 * and ld multiples of 4 where ld ≠ H; else the scalar path. */
void swiglu_forward_cuda(float *out, const float *gate, const float *up, size_t n,
                         cudaStream_t stream);
void swiglu_backward_cuda(float *dgate, float *dup, const float *dout, const float *gate,
                          const float *up, size_t n, int H, int ld, cudaStream_t stream);
/* The same writing bf16 out / dgate, dup: operands of bf16 matmuls (matmul_bf16_operands_cuda). */
void swiglu_forward_bf16_cuda(uint16_t *out, const float *gate, const float *up, size_t n, cudaStream_t stream);
void swiglu_backward_bf16_cuda(uint16_t *dgate, uint16_t *dup, const float *dout, const float *gate,
                               const float *up, size_t n, int H, int ld, cudaStream_t stream);
/* Both at once, from one read of dout, gate, up: out (h, flat), dgate and dup (rows ld apart,
 * as above) WRITTEN as bf16, the bits the two above write. For a backward whose down
 * projection's dweight reads h in bf16 (layers/ffn_dense.c, layers/moe.c); the three outputs
 * must not overlap. */
void swiglu_backward_and_forward_bf16_cuda(uint16_t *out, uint16_t *dgate, uint16_t *dup, const float *dout,
                                           const float *gate, const float *up, size_t n, int H, int ld,
                                           cudaStream_t stream);

/* Bytes of device scratch cross_entropy_forward_backward_cuda needs for N rows. */
size_t cross_entropy_cuda_scratch_bytes(int N);
/* As cross_entropy_forward_backward: returns Σ loss over targets ≠ −100 and sets the host
 * ints *n_valid, *n_correct when non-NULL; dlogits (may be NULL) is WRITTEN with
 * grad_scale·(softmax − onehot), 0 on ignored rows. scratch: device memory of
 * cross_entropy_cuda_scratch_bytes(N). Waits for `stream` (the sum comes back to the
 * host); aborts naming the row if a target lies outside [0, V), as the CPU op does. */
double cross_entropy_forward_backward_cuda(float *dlogits, const float *logits,
                                           const int *targets, int N, int V, float grad_scale,
                                           int *n_valid, int *n_correct, void *scratch,
                                           cudaStream_t stream);
/* The same with dlogits (required) WRITTEN as bf16: the LM head's output gradient when its
 * backward multiplies in bf16 (matmul_bf16_operands_cuda). */
double cross_entropy_forward_backward_bf16_cuda(uint16_t *dlogits, const float *logits, const int *targets, int N,
                                                int V, float grad_scale, int *n_valid, int *n_correct,
                                                void *scratch, cudaStream_t stream);

/* Rotary embedding in place on x[B,T,H,hd], pairs (i, i+hd/2); backward rotates by −θ. */
void rope_forward_cuda(float *x, int B, int T, int H, int hd, float base, cudaStream_t stream);
void rope_backward_cuda(float *dx, int B, int T, int H, int hd, float base, cudaStream_t stream);

/* Causal grouped-query attention, flash-style: q[B,T,H,hd], k,v[B,T,Hkv,hd], out[B,T,H,hd],
 * lse[B,H,T]; window <= 0 full causal, else keys max(0,t−w+1)..t; scale 1/sqrt(hd);
 * hd ≤ 128. No T×T matrix exists anywhere, on chip or off. */
void attention_forward_cuda(float *out, float *lse, const float *q, const float *k,
                            const float *v, int B, int T, int H, int Hkv, int hd, int window,
                            cudaStream_t stream);
/* train.matmul_precision for the attention kernels: "fp32" (the default) multiplies the tiles
 * in float32 on the CUDA cores; "tf32" on the TF32 tensor cores (operands rounded to 10
 * mantissa bits), "bf16" on the bf16 ones (operands converted to bfloat16); accumulation
 * and softmax stay float32. Process-wide, like matmul_set_precision_cuda; -1 for an
 * unknown name. */
int attention_set_precision_cuda(const char *precision);
/* dq, dk, dv ACCUMULATED; recomputes the probabilities from lse (FlashAttention-2). */
void attention_backward_cuda(float *dq, float *dk, float *dv, const float *dout, const float *q,
                             const float *k, const float *v, const float *out, const float *lse,
                             int B, int T, int H, int Hkv, int hd, int window,
                             cudaStream_t stream);

/* AdamW over the model's parameter buffer, the same math as adamw_update. `list` and `s`
 * are HOST structs: list gives each tensor's range and its no_decay flag, and runs of
 * neighbouring tensors with the same decay become one launch. step is 1-based. */
void adamw_update_cuda(float *params, const float *grads, float *m, float *v,
                       const ParamList *list, const AdamWSettings *s, long step,
                       cudaStream_t stream);

/* Device doubles of scratch global_grad_norm_cuda needs. */
#define GLOBAL_GRAD_NORM_CUDA_PARTIALS 1024
/* *norm (a device double) = sqrt(Σ grads²), squares summed in double: each of up to
 * GLOBAL_GRAD_NORM_CUDA_PARTIALS blocks writes a partial sum into `partials` (device), a
 * second pass adds them in a fixed order (deterministic). The result stays on the device,
 * so a training step need not wait for it; copy it back when it is wanted. */
void global_grad_norm_cuda(double *norm, const float *grads, size_t n, double *partials,
                           cudaStream_t stream);

/* y[i] += x[i] over n floats (elementwise.cu). */
void add_inplace_cuda(float *y, const float *x, size_t n, cudaStream_t stream);

/* Zeroes n floats of device memory on the default stream (host code's memset). */
#define CUDA_ZERO(ptr, n) CUDA_CHECK(cudaMemsetAsync((ptr), 0, (size_t)(n) * sizeof(float), 0))

#ifdef __cplusplus
}
#endif
#endif
