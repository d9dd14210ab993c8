/* ops.h — the numeric ops layers are built from, CPU reference implementations.
 *
 * Conventions (as in llm.c):
 *  - Row-major, contiguous. N = B*T rows where an op is per-token.
 *  - Weights are stored PyTorch-style, (out_features, in_features), so checkpoints
 *    match HF names and shapes and the Python reference uses F.linear directly.
 *  - *_backward ACCUMULATES (+=) into the gradients of inputs and parameters, so
 *    residual branches and shared weights compose. A NULL gradient pointer skips it.
 *  - No op allocates: buffers come from the caller (the model's arena).
 *
 * Every op here has a finite-difference gradient check in tests/test_ops.c.
 * The CUDA versions (issue 8) will dispatch on Ctx.device with the same signatures. */
#ifndef BRAID_OPS_H
#define BRAID_OPS_H
#include <stddef.h>

/* out[N,OC] = inp[N,C] · weight[OC,C]ᵀ (+ bias[OC]); bias may be NULL.
 * If accumulate != 0, adds into out instead of overwriting. */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int N, int C, int OC, int accumulate);
/* dinp[N,C] += dout·weight;  dweight[OC,C] += doutᵀ·inp;  dbias[OC] += Σ_n dout. */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, int N, int C, int OC);

/* out[n,:] = table[tokens[n],:];  table is (V, C). */
void embedding_forward(float *out, const int *tokens, const float *table, int N, int C);
void embedding_backward(float *dtable, const float *dout, const int *tokens, int N, int C);

/* y = x / sqrt(mean(x²) + eps) * w, per row of C. rstd[N] is saved for backward. */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                     int N, int C, float eps);
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                      const float *weight, const float *rstd, int N, int C);

/* Elementwise activations, n elements. Backward here WRITES dx (these act on
 * intermediates owned by one layer), unless named _accumulate. */
static inline float silu_f(float x) { return x / (1.0f + __builtin_expf(-x)); }
static inline float sigmoid_f(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }
static inline float softplus_f(float x) { return x > 20.0f ? x : __builtin_log1pf(__builtin_expf(x)); }

/* out = silu(gate) ⊙ up */
void swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, size_t n);

/* Mean cross-entropy over the targets that are not -100.
 * logits[N,V], targets[N]. Returns the SUM of losses over valid targets; *n_valid and
 * *n_correct (argmax == target) are set when non-NULL.
 * If dlogits is non-NULL it is WRITTEN with grad_scale * (softmax - onehot) on valid
 * rows and 0 on ignored rows (the caller picks grad_scale = 1/total_valid_tokens). */
double cross_entropy_forward_backward(float *dlogits, const float *logits, const int *targets,
                                      int N, int V, float grad_scale, int *n_valid, int *n_correct);

/* Rotary position embedding, in place, on x[B,T,H,hd], rotating pairs (i, i+hd/2)
 * by angle pos * base^(-2i/hd). rope_backward applies the inverse rotation to the
 * gradient (a rotation's transpose is its inverse). */
void rope_forward(float *x, int B, int T, int H, int hd, float base);
void rope_backward(float *dx, int B, int T, int H, int hd, float base);

/* Causal multi-head attention, flash-style (no T×T matrix kept).
 * q[B,T,H,hd], k,v[B,T,Hkv,hd] (H % Hkv == 0; head h reads kv head h / (H/Hkv)).
 * out[B,T,H,hd]; lse[B,H,T] = log Σ exp(scores) per row, kept for backward.
 * window <= 0: full causal; window w > 0: position t attends to max(0,t-w+1)..t.
 * scale = 1/sqrt(hd). */
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       int B, int T, int H, int Hkv, int hd, int window);
/* dq, dk, dv are ACCUMULATED. Recomputes probabilities from lse row by row. */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                        const float *k, const float *v, const float *out, const float *lse,
                        int B, int T, int H, int Hkv, int hd, int window);

#endif
