/* gla_cpu.c — chunked gated linear attention, forward and backward (see gla_cpu.h).
 *
 * Per (batch, head), tokens are cut into chunks of length c (the last may be shorter).
 * Within a chunk starting from state S0, with b_t = Σ_{s ≤ t in chunk} log α_s (per key
 * channel, so b_t ≤ 0 and decreasing):
 *     o_t   = scale · [ (q_t ⊙ e^{b_t}) S0  +  Σ_{j ≤ t} A_tj v_j ]
 *     A_tj  = Σ_c q_tc k_jc e^{b_tc − b_jc}
 *     S_end = diag(e^{b_last}) S0 + Σ_j (k_j ⊙ e^{b_last − b_j})ᵀ v_j
 * Every exponent is ≤ 0, so nothing overflows however strong the decay. We take
 * e^{b_t − b_j} directly for each (t, j, c) instead of the usual q ⊙ e^{b}, k ⊙ e^{−b}
 * factorisation (which overflows for strong decay); that costs O(T·c·dk), still
 * linear in T. Only the chunk-start states are kept for backward.
 *
 * Backward, per chunk from last to first, with dS = ∂L/∂S_end (zero after the last
 * chunk) and g_t = scale · ∂L/∂o_t:
 *     dA_tj = g_t · v_j                                          (j ≤ t)
 *     dq_t  = e^{b_t} ⊙ (S0 g_tᵀ) + Σ_{j≤t} dA_tj k_j ⊙ e^{b_t − b_j}
 *     dk_j  = Σ_{t≥j} dA_tj q_t ⊙ e^{b_t − b_j} + e^{b_last − b_j} ⊙ (dS v_jᵀ)
 *     dv_j  = Σ_{t≥j} scale·A_tj ∂L/∂o_t + (k_j ⊙ e^{b_last − b_j}) dS
 *     ∂L/∂b_t = q_t ⊙ dq_t − k_t ⊙ dk_t  (+ rowsum(dS ⊙ S_end) at t = last)
 *         because every term carrying e^{+b_t} also carries q_t, every e^{−b_j} a k_j,
 *         and every term of S_end a factor e^{b_last};
 *     ∂L/∂log α_s = Σ_{t ≥ s in chunk} ∂L/∂b_t                   (b is a cumulative sum)
 *     dS0   = diag(e^{b_last}) dS + Σ_t (q_t ⊙ e^{b_t})ᵀ g_t    (carried to the previous chunk)
 * S_end of a chunk is the next chunk's saved start state, so nothing is recomputed
 * across chunks. */
#include <math.h>
#include <string.h>

#include "gla_cpu.h"
#include "../core/common.h"

int gla_chunk_count(int T, int chunk) { return (T + chunk - 1) / chunk; }

/* Threads only pay when a call has real work: for tiny shapes (tests, decoding) the
 * fork/join costs more than the loop, and on a loaded machine each barrier can cost a
 * time slice. About the multiply-adds of the intra-chunk part. */
static int worth_threads(int B, int T, int H, int dk, int dv, int chunk) {
    return (double)B * H * T * imin(chunk, T) * (dk + dv) > 65536.0;
}

/* Per (batch, head) scratch of backward: cum b (c·dk), A and dA (c·c each), this chunk's
 * dq and dk (c·dk each, kept apart from the accumulated outputs because ∂L/∂b needs
 * exactly this call's values), dS (dk·dv), a dk-vector. Forward needs less. */
static size_t scratch_per_head(int dk, int dv, int chunk) {
    return 3 * (size_t)chunk * dk + 2 * (size_t)chunk * chunk + (size_t)dk * dv + (size_t)dk;
}

size_t gla_chunk_scratch_floats(int B, int H, int dk, int dv, int chunk) {
    return (size_t)B * H * scratch_per_head(dk, dv, chunk);
}

/* cum[i, c] = Σ_{s ≤ i} log_alpha[t0 + s, c] for i < L; token stride `stride`. */
static void chunk_cumulative_decay(float *cum, const float *log_alpha, int L, int dk, size_t stride) {
    for (int c = 0; c < dk; c++) cum[c] = log_alpha[c];
    for (int i = 1; i < L; i++)
        for (int c = 0; c < dk; c++) cum[i * dk + c] = cum[(i - 1) * dk + c] + log_alpha[i * stride + c];
}

void gla_chunk_forward(float *o, float *chunk_states, float *final_state,
                       const float *q, const float *k, const float *v, const float *log_alpha,
                       int B, int T, int H, int dk, int dv, int chunk, float scale, float *scratch) {
    const int n_chunks = gla_chunk_count(T, chunk);
    const size_t sk = (size_t)H * dk, sv = (size_t)H * dv;   /* token strides */
    const size_t state = (size_t)dk * dv;

    #pragma omp parallel for schedule(static) if (worth_threads(B, T, H, dk, dv, chunk))
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const size_t base_k = (size_t)b * T * sk + (size_t)h * dk;
        const size_t base_v = (size_t)b * T * sv + (size_t)h * dv;
        float *states = chunk_states + (size_t)bh * n_chunks * state;
        float *cum = scratch + (size_t)bh * scratch_per_head(dk, dv, chunk);   /* (c, dk) */
        float *qdecay = cum + (size_t)chunk * dk;                               /* (dk) */
        memset(states, 0, state * sizeof(float));

        for (int n = 0; n < n_chunks; n++) {
            const int t0 = n * chunk, L = imin(chunk, T - t0);
            const float *S0 = states + (size_t)n * state;
            const float *qc = q + base_k + t0 * sk, *kc = k + base_k + t0 * sk;
            const float *vc = v + base_v + t0 * sv;
            chunk_cumulative_decay(cum, log_alpha + base_k + t0 * sk, L, dk, sk);

            for (int i = 0; i < L; i++) {
                const float *qi = qc + i * sk, *bi = cum + i * dk;
                float *oi = o + base_v + (size_t)(t0 + i) * sv;
                /* inter-chunk: (q_i ⊙ e^{b_i}) S0 */
                for (int c = 0; c < dk; c++) qdecay[c] = qi[c] * expf(bi[c]);
                for (int e = 0; e < dv; e++) oi[e] = 0.0f;
                for (int c = 0; c < dk; c++) {
                    const float *Srow = S0 + (size_t)c * dv;
                    for (int e = 0; e < dv; e++) oi[e] += qdecay[c] * Srow[e];
                }
                /* intra-chunk: Σ_{j ≤ i} A_ij v_j */
                for (int j = 0; j <= i; j++) {
                    const float *kj = kc + j * sk, *bj = cum + j * dk, *vj = vc + j * sv;
                    float a = 0.0f;
                    for (int c = 0; c < dk; c++) a += qi[c] * kj[c] * expf(bi[c] - bj[c]);
                    for (int e = 0; e < dv; e++) oi[e] += a * vj[e];
                }
                for (int e = 0; e < dv; e++) oi[e] *= scale;
            }

            /* S_end, the next chunk's start (or the final state) */
            float *S1 = n + 1 < n_chunks ? states + (size_t)(n + 1) * state
                      : final_state ? final_state + (size_t)bh * state : NULL;
            if (!S1) continue;
            const float *blast = cum + (L - 1) * dk;
            for (int c = 0; c < dk; c++) {
                const float decay = expf(blast[c]);
                for (int e = 0; e < dv; e++) S1[c * dv + e] = decay * S0[c * dv + e];
            }
            for (int j = 0; j < L; j++) {
                const float *kj = kc + j * sk, *bj = cum + j * dk, *vj = vc + j * sv;
                for (int c = 0; c < dk; c++) {
                    const float w = kj[c] * expf(blast[c] - bj[c]);
                    for (int e = 0; e < dv; e++) S1[c * dv + e] += w * vj[e];
                }
            }
        }
    }
}

void gla_chunk_backward(float *grad_q, float *grad_k, float *grad_v, float *grad_log_alpha,
                        const float *grad_o,
                        const float *q, const float *k, const float *v, const float *log_alpha,
                        const float *chunk_states, int B, int T, int H, int dk, int dv, int chunk,
                        float scale, float *scratch) {
    const int n_chunks = gla_chunk_count(T, chunk);
    const size_t sk = (size_t)H * dk, sv = (size_t)H * dv;
    const size_t state = (size_t)dk * dv;

    #pragma omp parallel for schedule(static) if (worth_threads(B, T, H, dk, dv, chunk))
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const size_t base_k = (size_t)b * T * sk + (size_t)h * dk;
        const size_t base_v = (size_t)b * T * sv + (size_t)h * dv;
        const float *states = chunk_states + (size_t)bh * n_chunks * state;
        float *cum = scratch + (size_t)bh * scratch_per_head(dk, dv, chunk);  /* (c, dk) */
        float *A = cum + (size_t)chunk * dk;                                   /* (c, c) */
        float *dA = A + (size_t)chunk * chunk;                                 /* (c, c) */
        float *dq_chunk = dA + (size_t)chunk * chunk;                          /* (c, dk) */
        float *dk_chunk = dq_chunk + (size_t)chunk * dk;                       /* (c, dk) */
        float *dS = dk_chunk + (size_t)chunk * dk;                             /* (dk, dv) */
        float *row = dS + state;                                               /* (dk) */
        memset(dS, 0, state * sizeof(float));

        for (int n = n_chunks - 1; n >= 0; n--) {
            const int t0 = n * chunk, L = imin(chunk, T - t0);
            const int has_next = n + 1 < n_chunks;   /* else dS = 0: S_end feeds nothing */
            const float *S0 = states + (size_t)n * state;
            const float *S1 = has_next ? states + (size_t)(n + 1) * state : NULL;
            const float *qc = q + base_k + t0 * sk, *kc = k + base_k + t0 * sk;
            const float *vc = v + base_v + t0 * sv, *gc = grad_o + base_v + t0 * sv;
            float *gvc = grad_v + base_v + t0 * sv;
            chunk_cumulative_decay(cum, log_alpha + base_k + t0 * sk, L, dk, sk);
            const float *blast = cum + (L - 1) * dk;
            memset(dq_chunk, 0, (size_t)L * dk * sizeof(float));
            memset(dk_chunk, 0, (size_t)L * dk * sizeof(float));

            /* dA_tj = scale · ∂L/∂o_t · v_j */
            for (int t = 0; t < L; t++)
                for (int j = 0; j <= t; j++) {
                    float s = 0.0f;
                    for (int e = 0; e < dv; e++) s += gc[t * sv + e] * vc[j * sv + e];
                    dA[t * chunk + j] = scale * s;
                }
            /* one pass over (t, j ≤ t, c) computes each e^{b_t − b_j} once for A, dq, dk */
            for (int t = 0; t < L; t++) {
                const float *qt = qc + t * sk, *bt = cum + t * dk;
                float *dqt = dq_chunk + t * dk;
                for (int j = 0; j <= t; j++) {
                    const float *kj = kc + j * sk, *bj = cum + j * dk;
                    float *dkj = dk_chunk + j * dk;
                    const float g = dA[t * chunk + j];
                    float a = 0.0f;
                    for (int c = 0; c < dk; c++) {
                        const float decay = expf(bt[c] - bj[c]);
                        a += qt[c] * kj[c] * decay;
                        dqt[c] += g * kj[c] * decay;
                        dkj[c] += g * qt[c] * decay;
                    }
                    A[t * chunk + j] = a;
                }
            }
            /* dv_j += scale · Σ_{t ≥ j} A_tj ∂L/∂o_t */
            for (int j = 0; j < L; j++)
                for (int t = j; t < L; t++) {
                    const float a = scale * A[t * chunk + j];
                    for (int e = 0; e < dv; e++) gvc[j * sv + e] += a * gc[t * sv + e];
                }
            /* inter-chunk: dq_t += e^{b_t} ⊙ scale · (S0 ∂L/∂o_tᵀ) */
            for (int t = 0; t < L; t++)
                for (int c = 0; c < dk; c++) {
                    float s = 0.0f;
                    for (int e = 0; e < dv; e++) s += S0[c * dv + e] * gc[t * sv + e];
                    dq_chunk[t * dk + c] += scale * expf(cum[t * dk + c]) * s;
                }
            /* through S_end: dk_j += e^{b_last − b_j} ⊙ (dS v_jᵀ);  dv_j += (k_j ⊙ e^{..}) dS */
            if (has_next)
                for (int j = 0; j < L; j++) {
                    const float *kj = kc + j * sk, *vj = vc + j * sv, *bj = cum + j * dk;
                    float *gvj = gvc + j * sv;
                    for (int c = 0; c < dk; c++) {
                        const float decay = expf(blast[c] - bj[c]);
                        const float *dSrow = dS + (size_t)c * dv;
                        float s = 0.0f;
                        for (int e = 0; e < dv; e++) s += dSrow[e] * vj[e];
                        dk_chunk[j * dk + c] += decay * s;
                        const float w = kj[c] * decay;
                        for (int e = 0; e < dv; e++) gvj[e] += w * dSrow[e];
                    }
                }
            /* ∂L/∂log α: reverse cumulative sum of ∂L/∂b over the chunk */
            if (grad_log_alpha) {
                float *dlog = grad_log_alpha + base_k + t0 * sk;
                for (int c = 0; c < dk; c++) {
                    float s = 0.0f;
                    if (has_next)
                        for (int e = 0; e < dv; e++) s += dS[c * dv + e] * S1[c * dv + e];
                    row[c] = s;
                }
                for (int t = L - 1; t >= 0; t--)
                    for (int c = 0; c < dk; c++) {
                        row[c] += qc[t * sk + c] * dq_chunk[t * dk + c]
                                - kc[t * sk + c] * dk_chunk[t * dk + c];
                        dlog[t * sk + c] += row[c];
                    }
            }
            /* carry the state gradient to the previous chunk:
             * dS0 = diag(e^{b_last}) dS + Σ_t (q_t ⊙ e^{b_t})ᵀ scale·∂L/∂o_t */
            for (int c = 0; c < dk; c++) {
                const float decay = expf(blast[c]);
                for (int e = 0; e < dv; e++) dS[c * dv + e] *= decay;
            }
            for (int t = 0; t < L; t++)
                for (int c = 0; c < dk; c++) {
                    const float w = scale * qc[t * sk + c] * expf(cum[t * dk + c]);
                    for (int e = 0; e < dv; e++) dS[c * dv + e] += w * gc[t * sv + e];
                }
            /* this chunk's dq, dk into the accumulated outputs */
            for (int t = 0; t < L; t++)
                for (int c = 0; c < dk; c++) {
                    grad_q[base_k + (t0 + t) * sk + c] += dq_chunk[t * dk + c];
                    grad_k[base_k + (t0 + t) * sk + c] += dk_chunk[t * dk + c];
                }
        }
    }
}
