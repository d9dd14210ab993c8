/* attention_cpu.c — causal grouped-query softmax attention on the CPU, flash-style.
 *
 * q[B,T,H,hd], k,v[B,T,Hkv,hd]; query head h reads kv head g = h / (H/Hkv).
 * For each row (b,h,t), over the visible keys j ∈ [start_t, t]
 * (start_t = 0, or max(0, t−w+1) with a sliding window w > 0):
 *   s_j   = scale · q_t·k_j,            scale = 1/sqrt(hd)
 *   lse_t = log Σ_j exp(s_j)            (max-subtracted)
 *   P_j   = exp(s_j − lse_t)
 *   out_t = Σ_j P_j v_j
 * Backward recomputes P from lse (no T×T matrix is ever stored: memory is linear in T):
 *   D_t   = dout_t·out_t
 *   dS_j  = P_j (dout_t·v_j − D_t)
 *   dq_t += scale Σ_j dS_j k_j;   dk_j += scale dS_j q_t;   dv_j += P_j dout_t
 * The only per-row buffer is one row of scores (a VLA of at most min(T, w) floats).
 *
 * Parallelism: forward over (b, h); backward over (b, kv head), because all query heads
 * of a group accumulate into the same dk/dv rows — one thread owns a group, so there are
 * no races and no atomics. Dot products over hd use `omp simd reduction` so the compiler
 * may vectorise them without -ffast-math. Small problems (tests, decode-sized calls) run
 * serially: a parallel region costs more than they do, and on a loaded machine each
 * region's barrier can wait a whole scheduler time slice. */
#include <math.h>
#include "../core/common.h"
#include "../core/ops.h"

static inline float dot_hd(const float *a, const float *b, int hd) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int d = 0; d < hd; d++) s += a[d] * b[d];
    return s;
}

/* Multiply-adds of one pass over all visible (query, key) pairs, for the `if` clauses. */
static double attention_work(int B, int T, int H, int hd, int window) {
    double keys_per_row = window > 0 ? imin(T, window) : 0.5 * (T + 1);
    return (double)B * H * T * keys_per_row * hd;
}
#define ATTENTION_PARALLEL_MIN_WORK 1e5

static inline int first_visible_key(int t, int window) {
    return window > 0 ? imax(0, t - window + 1) : 0;
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       int B, int T, int H, int Hkv, int hd, int window) {
    BRAID_CHECK(H % Hkv == 0, "attention: %d heads not a multiple of %d kv heads", H, Hkv);
    const int group = H / Hkv;
    const int max_keys = window > 0 ? imin(T, window) : T;
    const float scale = 1.0f / sqrtf((float)hd);
    const int parallel = attention_work(B, T, H, hd, window) >= ATTENTION_PARALLEL_MIN_WORK;
    #pragma omp parallel for collapse(2) schedule(static) if (parallel)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const int g = h / group;
            float scores[max_keys];
            float acc[hd];
            for (int t = 0; t < T; t++) {
                const float *qt = q + (((size_t)b * T + t) * H + h) * hd;
                const int start = first_visible_key(t, window);
                const int n_keys = t - start + 1;
                float m = -INFINITY;
                for (int j = 0; j < n_keys; j++) {
                    const float *kj = k + (((size_t)b * T + start + j) * Hkv + g) * hd;
                    float s = scale * dot_hd(qt, kj, hd);
                    scores[j] = s;
                    m = fmaxf(m, s);
                }
                float sum = 0.0f;
                for (int j = 0; j < n_keys; j++) {
                    scores[j] = expf(scores[j] - m);
                    sum += scores[j];
                }
                for (int d = 0; d < hd; d++) acc[d] = 0.0f;
                for (int j = 0; j < n_keys; j++) {
                    const float *vj = v + (((size_t)b * T + start + j) * Hkv + g) * hd;
                    const float p = scores[j];
                    for (int d = 0; d < hd; d++) acc[d] += p * vj[d];
                }
                float *ot = out + (((size_t)b * T + t) * H + h) * hd;
                const float inv_sum = 1.0f / sum;
                for (int d = 0; d < hd; d++) ot[d] = acc[d] * inv_sum;
                lse[((size_t)b * H + h) * T + t] = m + logf(sum);
            }
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                        const float *k, const float *v, const float *out, const float *lse,
                        int B, int T, int H, int Hkv, int hd, int window) {
    BRAID_CHECK(H % Hkv == 0, "attention: %d heads not a multiple of %d kv heads", H, Hkv);
    const int group = H / Hkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const int parallel = attention_work(B, T, H, hd, window) >= ATTENTION_PARALLEL_MIN_WORK;
    #pragma omp parallel for collapse(2) schedule(static) if (parallel)
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < Hkv; g++) {
            float dq_acc[hd];
            for (int h = g * group; h < (g + 1) * group; h++) {
                for (int t = 0; t < T; t++) {
                    const size_t row = ((size_t)b * T + t) * H + h;
                    const float *qt = q + row * hd, *dot = dout + row * hd, *ot = out + row * hd;
                    const float row_lse = lse[((size_t)b * H + h) * T + t];
                    const float D = dot_hd(dot, ot, hd);
                    const int start = first_visible_key(t, window);
                    for (int d = 0; d < hd; d++) dq_acc[d] = 0.0f;
                    for (int j = start; j <= t; j++) {
                        const size_t kv_row = ((size_t)b * T + j) * Hkv + g;
                        const float *kj = k + kv_row * hd, *vj = v + kv_row * hd;
                        float *dkj = dk + kv_row * hd, *dvj = dv + kv_row * hd;
                        const float p = expf(scale * dot_hd(qt, kj, hd) - row_lse);
                        const float ds = p * (dot_hd(dot, vj, hd) - D);
                        const float ds_scaled = scale * ds;
                        for (int d = 0; d < hd; d++) {
                            dq_acc[d] += ds * kj[d];
                            dkj[d] += ds_scaled * qt[d];
                            dvj[d] += p * dot[d];
                        }
                    }
                    float *dqt = dq + row * hd;
                    for (int d = 0; d < hd; d++) dqt[d] += scale * dq_acc[d];
                }
            }
        }
    }
}
