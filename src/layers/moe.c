/* moe.c — mixture-of-experts SwiGLU FFN (Switch / Mixtral / Jamba style), CPU.
 *
 * x is (N, d) with N = B·T tokens; E experts, top-k routing, expert hidden size H.
 *   logits = x W_rᵀ                      router.weight (E, d), no bias
 *   p      = softmax(logits)             per token, (N, E)
 *   topk   = the k largest p_e (ties → lower expert index), in descending order
 *   w_e    = p_e, or p_e / Σ_topk p if renormalize (Mixtral)
 *   y      = Σ_{e∈topk} w_e · FFN_e(x),  FFN_e(x) = (silu(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ
 *   aux    = coef · E · Σ_e f_e · P_e    f_e = #tokens routed to e / N, P_e = mean_n p_{n,e}
 *   z      = coef_z · mean_n (logsumexp(logits_n))²
 * layer->aux_loss = aux + z; backward adds its gradient weighted by ctx->aux_grad_scale. f_e is a
 * count, so the load-balancing gradient flows through P_e only.
 *
 * Dispatch: each (token, rank) pair is a "slot"; slots are sorted by expert (counting
 * sort, tokens ascending inside an expert), so each expert runs one matmul on a
 * contiguous (count_e, d) block of gathered rows. The combine step is a loop over
 * tokens that sums its k slots in rank order: no atomics, and the result does not
 * depend on the thread count. No capacity limit: no token is ever dropped.
 *
 * Memory: forward keeps the routing (probabilities, logsumexp, expert ids, weights,
 * slot maps), the gate/up pre-activations and the expert outputs eo of every slot (worst
 * case N·k slots). eo is what ∂L/∂w_e reads; recomputing it cost a down matmul per expert
 * (~0.9 ms of a 46 ms jamba-small H100 step) against N·k·d floats of arena. Backward
 * re-gathers x rows and recomputes silu(gate)⊙up (elementwise: cheap) instead of storing
 * them, saving N·k·(H + d) floats. Backward only reads what forward saved, so a second
 * backward of the same forward gives the same gradients.
 *
 * CUDA (layer->device == DEVICE_CUDA): the same saved and scratch layouts, in device
 * memory, except that each expert's block is padded with zero rows to a multiple of 64
 * (MOE_CUDA_ROW_ALIGN, moe_pad_slots), and the same steps; routing, gather, combine and
 * their backward are the kernels of cuda/moe_cuda.h, the expert FFNs matmul_*_cuda /
 * swiglu_*_cuda on each expert's block. The expert counts must be on the host to size
 * those matmuls, so forward copies the chosen expert ids back (its one synchronisation),
 * sorts the slots on the host exactly as the CPU path does, pads them, and uploads the
 * slot maps and offsets. The host copies live in
 * layer->priv (MoeCudaHost, pinned memory); backward reuses that forward's offsets, so it
 * does not wait on the device at all. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"
#include "../core/common.h"
#include "../core/ops.h"
#include "../models/config.h"
#ifdef BRAID_HAVE_CUDA
#include "../cuda/moe_cuda.h"
#include "../cuda/ops_cuda.h"
#endif

/* ------------------------------------------------------------------------------------
 * Shapes and buffer layouts */

typedef struct MoeDims {
    int N, d, E, k, H;   /* tokens, d_model, experts, top_k, expert hidden */
    int renormalize;
    float aux_coef, z_coef;
    int align;           /* each expert's block of slot rows starts at a multiple of it */
} MoeDims;

/* On CUDA each expert's block of slot rows is padded with zero rows to a multiple of 64
 * (moe_pad_slots): the per-expert products then take row counts that are multiples of 64,
 * which bf16's cuBLAS path requires (without it 7 of 8 expert products fell back to TF32),
 * and about 100 distinct counts instead of one per call: each new shape's first call is
 * slow (cuBLAS heuristics, kernels loaded lazily; bench.c). The padding rows cost ≤ 63 per
 * expert of work and are never read back. The CPU keeps its blocks unpadded (align 1). */
#define MOE_CUDA_ROW_ALIGN 64

static MoeDims moe_dims(const Layer *layer, int B, int T) {
    const MoeConfig *mc = &layer->cfg->model.moe;
    return (MoeDims){.N = B * T, .d = layer->d_model, .E = mc->experts, .k = mc->top_k,
                     .H = config_moe_hidden(layer->cfg), .renormalize = mc->renormalize,
                     .aux_coef = mc->aux_loss_coef, .z_coef = mc->z_loss_coef,
                     .align = layer->device == DEVICE_CUDA ? MOE_CUDA_ROW_ALIGN : 1};
}

/* Rows of the slot-indexed buffers: S slots, plus up to align − 1 padding rows an expert. */
static size_t padded_slot_rows(size_t S, int E, int align) { return S + (size_t)E * (align - 1); }
static size_t moe_slot_rows(MoeDims m) { return padded_slot_rows((size_t)m.N * m.k, m.E, m.align); }

/* What forward keeps for backward, carved from layer->saved. Integer arrays share the
 * float arena (4-byte elements, only ever accessed as int). S = N·k slots. slot_of,
 * slot_token and offset are adjacent, in that order: the CUDA path uploads all three from
 * the host in one copy. */
typedef struct MoeSaved {
    float *probs;       /* (N, E) softmax of the router logits */
    float *lse;         /* (N)    logsumexp of the router logits (z-loss) */
    int   *expert;      /* (N, k) chosen experts, descending p */
    float *weight;      /* (N, k) their combine weights w */
    int   *slot_of;     /* (N, k) slot index of (token n, rank j) */
    int   *slot_token;  /* (R)    token of each slot, slots grouped by expert (−1: a padding row) */
    int   *offset;      /* (E+1)  expert e has offset[e+1] − offset[e] slots; on the CPU they are
                         *        slots offset[e] .. offset[e+1]−1 (on CUDA: moe_pad_slots) */
    float *gate_pre;    /* (R, H) x W_gateᵀ per slot */
    float *up_pre;      /* (R, H) x W_upᵀ per slot */
    float *eo;          /* (R, d) expert outputs FFN_e(x) per slot (on CUDA the padding rows
                         *        are zero: products of zero rows); read by ∂L/∂w */
} MoeSaved;

/* S = N·k slots; R = moe_slot_rows (S on the CPU) rows in the slot-indexed buffers */
static size_t moe_saved_layout(MoeSaved *s, float *base, MoeDims m) {
    size_t N = (size_t)m.N, S = (size_t)m.N * m.k, R = moe_slot_rows(m), o = 0;
    size_t at[8];
    at[0] = layout_take(&o, N * m.E);
    at[1] = layout_take(&o, N);
    at[2] = layout_take(&o, S);
    at[3] = layout_take(&o, S);
    at[4] = layout_take(&o, S + R + (size_t)m.E + 1);   /* slot_of, slot_token, offset: adjacent */
    at[5] = layout_take(&o, R * m.H);
    at[6] = layout_take(&o, R * m.H);
    at[7] = layout_take(&o, R * m.d);
    if (s) {
        s->probs = base + at[0];
        s->lse = base + at[1];
        s->expert = (int *)(base + at[2]);
        s->weight = base + at[3];
        s->slot_of = (int *)(base + at[4]);
        s->slot_token = s->slot_of + S;
        s->offset = s->slot_token + R;
        s->gate_pre = base + at[5];
        s->up_pre = base + at[6];
        s->eo = base + at[7];
    }
    return o;
}

/* Temporaries in ctx->scratch. Forward uses xg, act, cursor, sums; backward all but
 * cursor and sums. On CUDA the cursor is a host array (MoeCudaHost) and its slot here
 * goes unused (E floats): one layout for both devices keeps the sizes in one place.
 * act and dup are adjacent regions: the CUDA backward writes ∂L/∂gate_pre and ∂L/∂up_pre side
 * by side as one (R, 2H) array from act's start on, over both (moe_backward_cuda).
 * In bf16 (moe_forward_cuda, moe_backward_cuda) the same regions hold bf16 arrays of half the
 * floats: xg16 at xg's start, deo16 at deo's, the (R, 2H) gradients in act, h16 at dup's
 * (moe_bf16_operands). */
typedef struct MoeScratch {   /* R rows as in MoeSaved */
    float *xg;          /* (R, d) gathered input rows */
    float *act;         /* (R, H) silu(gate)⊙up; in backward then ∂L/∂gate_pre */
    float *dup;         /* (R, H) ∂L/∂up_pre */
    float *deo;         /* (R, d) backward: ∂L/∂eo, then (once the down products are done) ∂L/∂xg */
    float *dact;        /* (R, H) ∂L/∂act */
    float *dlogits;     /* (N, E) */
    float *dweight;     /* (N, k) ∂L/∂w */
    int   *cursor;      /* (E)    fill position per expert while grouping */
    double *sums;       /* (E+1)  Σ_n p_{n,e} per expert, then Σ_n lse_n² (the aux losses);
                           8-byte aligned like every region (layout_take) */
} MoeScratch;

static size_t moe_scratch_layout(MoeScratch *s, float *base, MoeDims m) {
    size_t N = (size_t)m.N, S = (size_t)m.N * m.k, R = moe_slot_rows(m), o = 0;
    size_t at[9];
    at[0] = layout_take(&o, R * m.d);
    at[1] = layout_take(&o, R * m.H);
    at[2] = layout_take(&o, R * m.H);
    at[3] = layout_take(&o, R * m.d);
    at[4] = layout_take(&o, R * m.H);
    at[5] = layout_take(&o, N * m.E);
    at[6] = layout_take(&o, S);
    at[7] = layout_take(&o, (size_t)m.E);
    at[8] = layout_take(&o, 2 * ((size_t)m.E + 1));
    if (s) {
        s->xg = base + at[0];
        s->act = base + at[1];
        s->dup = base + at[2];
        s->deo = base + at[3];
        s->dact = base + at[4];
        s->dlogits = base + at[5];
        s->dweight = base + at[6];
        s->cursor = (int *)(base + at[7]);
        s->sums = (double *)(base + at[8]);
    }
    return o;
}

/* Below these sizes the per-token loops run on one thread: a fork/join costs more than
 * the work, and on a loaded machine (threads descheduled at the barrier) far more —
 * a finite-difference check runs thousands of tiny forwards. */
#define MOE_PARALLEL_MIN_TOKENS 512      /* routing: ~E·k work per token */
#define MOE_PARALLEL_MIN_FLOATS 32768    /* gather / combine / scatter: rows of d floats */

/* Parameter order (declare_params): router, then gate, up, down of expert 0, 1, ... */
static inline int moe_param_gate(int e) { return 1 + 3 * e; }
static inline int moe_param_up(int e) { return 2 + 3 * e; }
static inline int moe_param_down(int e) { return 3 + 3 * e; }

/* ------------------------------------------------------------------------------------
 * Routing */

/* In place: probs[N,E] holds the logits on entry and p = softmax(logits) on exit;
 * lse[n] = log Σ_e exp(logits[n,e]). Then top-k by repeated arg-max over the experts
 * not yet taken (strict '>' so ties go to the lower index), in descending order:
 *   expert[n,j] = e_j,  weight[n,j] = p_{e_j}  (/ Σ_j p_{e_j} if renormalize). */
static void moe_route_forward(float *probs, float *lse, int *expert, float *weight,
                              int N, int E, int k, int renormalize) {
    #pragma omp parallel for schedule(static) if (N >= MOE_PARALLEL_MIN_TOKENS)
    for (int n = 0; n < N; n++) {
        float *p = probs + (size_t)n * E;
        float maxv = p[0];
        for (int e = 1; e < E; e++) maxv = fmaxf(maxv, p[e]);
        float sum = 0.0f;
        for (int e = 0; e < E; e++) { p[e] = expf(p[e] - maxv); sum += p[e]; }
        for (int e = 0; e < E; e++) p[e] /= sum;
        lse[n] = maxv + logf(sum);

        int *chosen = expert + (size_t)n * k;
        float *w = weight + (size_t)n * k;
        float total = 0.0f;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= chosen[i] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            chosen[j] = best;
            w[j] = p[best];
            total += p[best];
        }
        if (renormalize)
            for (int j = 0; j < k; j++) w[j] /= total;
    }
}

/* Counting sort of the N·k slots by expert (tokens ascending within an expert):
 * offset[e] = Σ_{e'<e} count_e', slot_token[s] = token of slot s, slot_of[n,j] = slot of
 * (n, j). Sequential: O(N·k), and the fixed order keeps everything deterministic. */
static void moe_group_slots(int *offset, int *slot_of, int *slot_token, int *cursor,
                            const int *expert, int N, int E, int k) {
    for (int e = 0; e <= E; e++) offset[e] = 0;
    for (int i = 0; i < N * k; i++) offset[expert[i] + 1]++;
    for (int e = 0; e < E; e++) offset[e + 1] += offset[e];
    for (int e = 0; e < E; e++) cursor[e] = offset[e];
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            int s = cursor[expert[n * k + j]]++;
            slot_of[n * k + j] = s;
            slot_token[s] = n;
        }
}

/* xg[s,:] = x[slot_token[s],:]   xg (S,d), x (N,d) */
static void moe_gather_rows(float *xg, const float *x, const int *slot_token, int S, int d) {
    #pragma omp parallel for schedule(static) if ((size_t)S * d >= MOE_PARALLEL_MIN_FLOATS)
    for (int s = 0; s < S; s++)
        memcpy(xg + (size_t)s * d, x + (size_t)slot_token[s] * d, (size_t)d * sizeof(float));
}

/* aux = coef·E·Σ_e f_e·P_e with f_e = count_e / N, P_e = mean_n p_{n,e};
 * z = coef_z · mean_n lse_n². Returns aux + z from sums[e] = Σ_n p_{n,e} (read only if
 * coef ≠ 0) and sums[E] = Σ_n lse_n² (read only if coef_z ≠ 0), both summed in double.
 * Shared by both devices, so the formula exists once. */
static double moe_aux_from_sums(const double *sums, const int *offset, MoeDims m) {
    double aux = 0.0;
    if (m.aux_coef != 0.0f) {
        for (int e = 0; e < m.E; e++) {
            double f = (double)(offset[e + 1] - offset[e]) / m.N;
            aux += f * (sums[e] / m.N);
        }
        aux *= (double)m.aux_coef * m.E;
    }
    double z = 0.0;
    if (m.z_coef != 0.0f) z = sums[m.E] * ((double)m.z_coef / m.N);
    return aux + z;
}

/* The CPU's sums (sequential, double) into sums (E+1), then aux + z. */
static double moe_aux_loss(double *sums, const float *probs, const float *lse, const int *offset,
                           MoeDims m) {
    if (m.aux_coef != 0.0f)
        for (int e = 0; e < m.E; e++) {
            double P = 0.0;
            for (int n = 0; n < m.N; n++) P += probs[(size_t)n * m.E + e];
            sums[e] = P;
        }
    if (m.z_coef != 0.0f) {
        double z = 0.0;
        for (int n = 0; n < m.N; n++) z += (double)lse[n] * lse[n];
        sums[m.E] = z;
    }
    return moe_aux_from_sums(sums, offset, m);
}

/* The per-slot weights of the aux and z gradients in moe_route_backward, computed in
 * float in one place so that both devices get the same numbers. */
static void moe_route_backward_scales(MoeDims m, float aux_weight, float *aux_scale,
                                      float *z_scale) {
    *aux_scale = aux_weight * m.aux_coef * (float)m.E / ((float)m.N * (float)m.N);
    *z_scale = aux_weight * 2.0f * m.z_coef / (float)m.N;
}

/* Router backward, per token n (S_n = Σ_j p_{e_j}, the renormalization sum):
 *   ∂L/∂p_{e_j} = dw_j                            (no renormalization)
 *               = (dw_j − Σ_i dw_i·w_i) / S_n     (w_j = p_{e_j} / S_n)
 *   ∂L/∂p_e    += coef·E·f_e / N                  (load balancing, f_e held constant)
 *   ∂L/∂l_e     = p_e (∂L/∂p_e − Σ_e' p_e' ∂L/∂p_e')        (softmax)
 *               + 2·coef_z·lse_n / N · p_e                   (z-loss: ∂lse/∂l = p)
 * The aux and z terms are weighted by aux_weight (Ctx.aux_grad_scale: the weight of the
 * aux loss in the objective, e.g. 1/grad_accum). dlogits (N,E) is WRITTEN. */
static void moe_route_backward(float *dlogits, const float *dweight, const float *probs,
                               const float *lse, const int *expert, const float *weight,
                               const int *offset, MoeDims m, float aux_weight) {
    const int E = m.E, k = m.k;
    float aux_scale, z_scale;
    moe_route_backward_scales(m, aux_weight, &aux_scale, &z_scale);
    #pragma omp parallel for schedule(static) if (m.N >= MOE_PARALLEL_MIN_TOKENS)
    for (int n = 0; n < m.N; n++) {
        const float *p = probs + (size_t)n * E;
        const int *chosen = expert + (size_t)n * k;
        const float *w = weight + (size_t)n * k, *dw = dweight + (size_t)n * k;
        float *dl = dlogits + (size_t)n * E;
        /* dl holds ∂L/∂p first, then is turned into ∂L/∂logits */
        for (int e = 0; e < E; e++) dl[e] = aux_scale * (float)(offset[e + 1] - offset[e]);
        if (m.renormalize) {
            float total = 0.0f, dw_dot_w = 0.0f;
            for (int j = 0; j < k; j++) { total += p[chosen[j]]; dw_dot_w += dw[j] * w[j]; }
            for (int j = 0; j < k; j++) dl[chosen[j]] += (dw[j] - dw_dot_w) / total;
        } else {
            for (int j = 0; j < k; j++) dl[chosen[j]] += dw[j];
        }
        float p_dot_dp = 0.0f;
        for (int e = 0; e < E; e++) p_dot_dp += p[e] * dl[e];
        for (int e = 0; e < E; e++) dl[e] = p[e] * (dl[e] - p_dot_dp) + z_scale * lse[n] * p[e];
    }
}

/* ------------------------------------------------------------------------------------
 * The layer */

static int moe_validate(const struct Config *cfg, char *err, size_t err_len) {
    const MoeConfig *mc = &cfg->model.moe;
    if (mc->experts < 1) {
        snprintf(err, err_len, "model.moe.experts must be at least 1 (got %d)", mc->experts);
        return -1;
    }
    if (mc->top_k < 1 || mc->top_k > mc->experts) {
        snprintf(err, err_len, "model.moe.top_k must be in [1, experts = %d] (got %d)",
                 mc->experts, mc->top_k);
        return -1;
    }
    if (mc->aux_loss_coef < 0.0f || mc->z_loss_coef < 0.0f) {
        snprintf(err, err_len, "model.moe.aux_loss_coef and z_loss_coef must be >= 0 (got %g, %g)",
                 mc->aux_loss_coef, mc->z_loss_coef);
        return -1;
    }
    return 0;
}

#ifdef BRAID_HAVE_CUDA
/* Host side of the CUDA path (layer->priv). `pinned` is page-locked so that the copies
 * of one forward are plain DMA and a single stream synchronisation covers them:
 *   [expert: capacity ints][slot_of: S][slot_token: R][offset: E+1]
 * with S = N·k of the last forward (≤ capacity) and R its slot rows (moe_slot_rows); the
 * last three mirror the adjacent saved arrays of the same names and go up in one copy.
 * `offset`, `start` and `N` describe the last forward: backward sizes its matmuls from
 * them. */
typedef struct MoeCudaHost {
    int *pinned;
    size_t capacity;     /* slots the pinned block has room for */
    double *sums;        /* pinned (E+1): the aux-loss sums coming back */
    int *cursor;         /* (E) counting-sort fill positions */
    int *start;          /* (E+1) first row of expert e's padded block; start[E]: rows in use */
    int *unpadded;       /* (capacity) slot_token before padding */
    const int *offset;   /* inside pinned: the last forward's expert offsets, NULL before one */
    int N;               /* tokens of the last forward */
} MoeCudaHost;

/* From the CPU's grouping (offset, slot_of, unpadded[s] = token of slot s) to the CUDA
 * layout: expert e's slots move to rows start[e] .., start[e+1] − start[e] = its count
 * rounded up to `align`, the rows after its slots are padding (slot_token −1: the gather
 * writes them zero, so the products leave them zero and no gradient flows through them);
 * slot_of[n·k + j] is remapped in place. */
static void moe_pad_slots(int *start, int *slot_of, int *slot_token, const int *unpadded,
                          const int *offset, const int *expert, int S, int E, int align) {
    start[0] = 0;
    for (int e = 0; e < E; e++) {
        const int count = offset[e + 1] - offset[e], rows = (count + align - 1) / align * align;
        start[e + 1] = start[e] + rows;
        for (int i = 0; i < rows; i++) slot_token[start[e] + i] = i < count ? unpadded[offset[e] + i] : -1;
    }
    for (int i = 0; i < S; i++) slot_of[i] += start[expert[i]] - offset[expert[i]];
}

/* layer->priv, created if missing, with room for S slots. Growing frees the old block,
 * so it first waits for the stream: the previous forward's upload may still read it. */
static MoeCudaHost *moe_cuda_host(Layer *layer, size_t S) {
    const int E = layer->cfg->model.moe.experts;
    MoeCudaHost *hs = layer->priv;
    if (!hs) {
        hs = braid_calloc(1, sizeof *hs, "moe CUDA host state");
        CUDA_CHECK(cudaMallocHost((void **)&hs->sums, ((size_t)E + 1) * sizeof(double)));
        hs->cursor = braid_calloc((size_t)E, sizeof(int), "moe CUDA cursor");
        hs->start = braid_calloc((size_t)E + 1, sizeof(int), "moe CUDA expert starts");
        layer->priv = hs;
    }
    if (S > hs->capacity || !hs->pinned) {
        CUDA_CHECK(cudaStreamSynchronize(0));
        if (hs->pinned) CUDA_CHECK(cudaFreeHost(hs->pinned));
        braid_free(hs->unpadded);
        hs->pinned = NULL;
        hs->offset = NULL;
        hs->N = 0;
        /* [expert: S][slot_of: S][slot_token: slot rows][offset: E+1] */
        const size_t ints = 2 * S + padded_slot_rows(S, E, MOE_CUDA_ROW_ALIGN) + (size_t)E + 1;
        CUDA_CHECK(cudaMallocHost((void **)&hs->pinned, ints * sizeof(int)));
        hs->unpadded = braid_calloc(S ? S : 1, sizeof(int), "moe CUDA slot tokens");
        hs->capacity = S;
    }
    return hs;
}

static void moe_cuda_host_free(Layer *layer) {
    MoeCudaHost *hs = layer->priv;
    if (!hs) return;
    CUDA_CHECK(cudaStreamSynchronize(0));   /* no copy may still be reading pinned memory */
    if (hs->pinned) CUDA_CHECK(cudaFreeHost(hs->pinned));
    CUDA_CHECK(cudaFreeHost(hs->sums));
    braid_free(hs->cursor);
    braid_free(hs->start);
    braid_free(hs->unpadded);
    braid_free(hs);
    layer->priv = NULL;
}
#endif

/* Per-expert load (fraction of routed slots), read by the metrics code. On CUDA also the
 * host state of MoeCudaHost (its slot buffers grow with the first forward). */
static void moe_init(Layer *layer) {
    int E = layer->cfg->model.moe.experts;
    layer->stats = braid_calloc((size_t)E, sizeof(float), "moe expert_load stats");
    layer->stats_count = E;
    layer->stats_name = "expert_load";
#ifdef BRAID_HAVE_CUDA
    if (layer->device == DEVICE_CUDA) moe_cuda_host(layer, 0);
#endif
}

static void moe_destroy(Layer *layer) {
    braid_free(layer->stats);
    layer->stats = NULL;
    layer->stats_count = 0;
#ifdef BRAID_HAVE_CUDA
    moe_cuda_host_free(layer);
#endif
}

/* expert_load[e] = count_e / S, the same float operations on both devices. */
static void moe_set_stats(Layer *layer, const int *offset, int E, int S) {
    for (int e = 0; e < E; e++)
        layer->stats[e] = (float)(offset[e + 1] - offset[e]) / (float)S;
}

/* router normal(std); gate/up normal(std); down normal(std / sqrt(2·n_layers)), the
 * GPT-2 scaling of projections that write into the residual stream. */
static void moe_declare_params(Layer *layer, ParamList *list) {
    const ModelConfig *mc = &layer->cfg->model;
    int d = layer->d_model, E = mc->moe.experts, H = config_moe_hidden(layer->cfg);
    float std = mc->init_std;
    float down_std = std / sqrtf(2.0f * (float)(mc->n_layers > 0 ? mc->n_layers : 1));
    char name[PARAM_NAME_MAX];
    param_list_add(list, layer->prefix, "router.weight", 2, (int[]){E, d}, INIT_NORMAL, std, 0);
    for (int e = 0; e < E; e++) {
        snprintf(name, sizeof name, "experts.%d.gate_proj.weight", e);
        param_list_add(list, layer->prefix, name, 2, (int[]){H, d}, INIT_NORMAL, std, 0);
        snprintf(name, sizeof name, "experts.%d.up_proj.weight", e);
        param_list_add(list, layer->prefix, name, 2, (int[]){H, d}, INIT_NORMAL, std, 0);
        snprintf(name, sizeof name, "experts.%d.down_proj.weight", e);
        param_list_add(list, layer->prefix, name, 2, (int[]){d, H}, INIT_NORMAL, down_std, 0);
    }
}

static size_t moe_saved_floats(const Layer *layer, int B, int T) {
    return moe_saved_layout(NULL, NULL, moe_dims(layer, B, T));
}

static size_t moe_scratch_floats(const Layer *layer, int B, int T) {
    return moe_scratch_layout(NULL, NULL, moe_dims(layer, B, T));
}

/* y[N,d] = Σ_{e∈topk(n)} w_e FFN_e(x[n]); sets layer->aux_loss and layer->stats. */
static void moe_forward(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx) {
    MoeDims m = moe_dims(layer, B, T);
    const int N = m.N, d = m.d, E = m.E, k = m.k, H = m.H, S = N * k;
    MoeSaved sv;
    MoeScratch sc;
    moe_saved_layout(&sv, layer->saved, m);
    BRAID_CHECK(moe_scratch_layout(&sc, ctx->scratch, m) <= ctx->scratch_floats,
                "moe forward: scratch too small for B=%d T=%d", B, T);

    /* route: logits straight into probs, softmax and top-k in place */
    matmul_forward(sv.probs, x, layer->params[0], NULL, N, d, E, 0);
    moe_route_forward(sv.probs, sv.lse, sv.expert, sv.weight, N, E, k, m.renormalize);
    moe_group_slots(sv.offset, sv.slot_of, sv.slot_token, sc.cursor, sv.expert, N, E, k);
    moe_gather_rows(sc.xg, x, sv.slot_token, S, d);

    /* each expert on its contiguous block of slots */
    for (int e = 0; e < E; e++) {
        int o = sv.offset[e], count = sv.offset[e + 1] - o;
        if (count == 0) continue;
        const float *xg = sc.xg + (size_t)o * d;
        float *gate = sv.gate_pre + (size_t)o * H, *up = sv.up_pre + (size_t)o * H;
        float *act = sc.act + (size_t)o * H;
        matmul_forward(gate, xg, layer->params[moe_param_gate(e)], NULL, count, d, H, 0);
        matmul_forward(up, xg, layer->params[moe_param_up(e)], NULL, count, d, H, 0);
        swiglu_forward(act, gate, up, (size_t)count * H);
        matmul_forward(sv.eo + (size_t)o * d, act, layer->params[moe_param_down(e)], NULL,
                       count, H, d, 0);
    }

    /* combine: y[n] = Σ_j w[n,j] eo[slot_of[n,j]], ranks in order (deterministic) */
    #pragma omp parallel for schedule(static) if ((size_t)S * d >= MOE_PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        float *yn = y + (size_t)n * d;
        for (int i = 0; i < d; i++) yn[i] = 0.0f;
        for (int j = 0; j < k; j++) {
            float w = sv.weight[n * k + j];
            const float *eo = sv.eo + (size_t)sv.slot_of[n * k + j] * d;
            for (int i = 0; i < d; i++) yn[i] += w * eo[i];
        }
    }

    layer->aux_loss = moe_aux_loss(sc.sums, sv.probs, sv.lse, sv.offset, m);
    moe_set_stats(layer, sv.offset, E, S);
}

/* Backward, with act = silu(gate_pre)⊙up_pre recomputed and eo saved by forward:
 *   dw[n,j]    = dy[n] · eo[s]                    s = slot_of[n,j]
 *   deo[s]     = w[n,j] dy[n]
 *   dact, dW_down  from deo (matmul_backward);  dgate, dup = swiglu_backward(dact)
 *   dxg, dW_gate, dW_up from dgate, dup;        dx[n] += Σ_j dxg[slot_of[n,j]]
 *   dlogits from dw, aux and z (moe_route_backward);  dx, dW_r += from dlogits */
static void moe_backward(Layer *layer, float *dx, const float *dy, const float *x, int B, int T,
                         Ctx *ctx) {
    MoeDims m = moe_dims(layer, B, T);
    const int N = m.N, d = m.d, E = m.E, k = m.k, H = m.H, S = N * k;
    MoeSaved sv;
    MoeScratch sc;
    moe_saved_layout(&sv, layer->saved, m);
    BRAID_CHECK(moe_scratch_layout(&sc, ctx->scratch, m) <= ctx->scratch_floats,
                "moe backward: scratch too small for B=%d T=%d", B, T);

    moe_gather_rows(sc.xg, x, sv.slot_token, S, d);
    swiglu_forward(sc.act, sv.gate_pre, sv.up_pre, (size_t)S * H);

    /* dw from the saved expert outputs (read only), deo = w·dy */
    #pragma omp parallel for schedule(static) if ((size_t)S * d >= MOE_PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        const float *dyn = dy + (size_t)n * d;
        for (int j = 0; j < k; j++) {
            const size_t row = (size_t)sv.slot_of[n * k + j] * d;
            const float *eo = sv.eo + row;
            float *deo = sc.deo + row;
            float w = sv.weight[n * k + j], dot = 0.0f;
            for (int i = 0; i < d; i++) { dot += dyn[i] * eo[i]; deo[i] = w * dyn[i]; }
            sc.dweight[n * k + j] = dot;
        }
    }

    /* down projection, then the SwiGLU gate (act's buffer becomes dgate) */
    memset(sc.dact, 0, (size_t)S * H * sizeof(float));
    for (int e = 0; e < E; e++) {
        int o = sv.offset[e], count = sv.offset[e + 1] - o;
        if (count == 0) continue;
        matmul_backward(sc.dact + (size_t)o * H, layer->grads[moe_param_down(e)], NULL,
                        sc.deo + (size_t)o * d, sc.act + (size_t)o * H,
                        layer->params[moe_param_down(e)], count, H, d);
    }
    float *dgate = sc.act;
    swiglu_backward(dgate, sc.dup, sc.dact, sv.gate_pre, sv.up_pre, (size_t)S * H);

    /* gate and up projections; deo's buffer becomes dxg */
    float *dxg = sc.deo;
    memset(dxg, 0, (size_t)S * d * sizeof(float));
    for (int e = 0; e < E; e++) {
        int o = sv.offset[e], count = sv.offset[e + 1] - o;
        if (count == 0) continue;
        const float *xg = sc.xg + (size_t)o * d;
        matmul_backward(dxg + (size_t)o * d, layer->grads[moe_param_gate(e)], NULL,
                        dgate + (size_t)o * H, xg, layer->params[moe_param_gate(e)], count, d, H);
        matmul_backward(dxg + (size_t)o * d, layer->grads[moe_param_up(e)], NULL,
                        sc.dup + (size_t)o * H, xg, layer->params[moe_param_up(e)], count, d, H);
    }

    /* scatter back to tokens, ranks in order (deterministic, no atomics) */
    #pragma omp parallel for schedule(static) if ((size_t)S * d >= MOE_PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        float *dxn = dx + (size_t)n * d;
        for (int j = 0; j < k; j++) {
            const float *g = dxg + (size_t)sv.slot_of[n * k + j] * d;
            for (int i = 0; i < d; i++) dxn[i] += g[i];
        }
    }

    /* router */
    moe_route_backward(sc.dlogits, sc.dweight, sv.probs, sv.lse, sv.expert, sv.weight, sv.offset, m,
                       ctx->aux_grad_scale);
    matmul_backward(dx, layer->grads[0], NULL, sc.dlogits, x, layer->params[0], N, d, E);
}

#ifdef BRAID_HAVE_CUDA
/* Whether every expert with rows multiplies in bf16, its gate and up products (d → H) and its
 * down product (H → d) alike, and so takes its gathered input rows, its SwiGLU activations
 * (and their gradients) and ∂L/∂eo as bf16 written by the kernels that make them (ops_cuda.h,
 * "bf16 operands"); the blocks of one layer all take one path. Both shapes are asked:
 * matmul_bf16_operands_cuda is symmetric in C and OC today, but the backward's gate and up
 * product (d → 2H, which multiplies in bf16 wherever d → H does) reads the bf16 gradients
 * that the down decision makes, so one flag must cover both. Each (R, H) or (R, d) bf16
 * array is half the floats of its scratch region, and a block's offset o·H, o·2H or o·d (o a
 * multiple of 64) is a multiple of 64 values, 128 bytes.
 * Where the bf16 arrays live:
 *   forward:  xg16 at xg's start; act16 = h at act's start
 *   backward: xg16 at xg's start; deo16 at deo's start; h16 at dup's start; the (R, 2H)
 *             [dgate | dup]16 filling act; dact float32 in dact.
 * h16 and [dgate | dup]16 are written together (swiglu_backward_and_forward_bf16_cuda) and
 * must not overlap; deo16 is read by the down products before anything is written over it
 * (dxg, by the gate and up product, issued after them on the same stream). */
static int moe_bf16_operands(const int *start, int E, int d, int H) {
    for (int e = 0; e < E; e++) {
        const int count = start[e + 1] - start[e];
        if (count && !(matmul_bf16_operands_cuda(count, d, H) && matmul_bf16_operands_cuda(count, H, d))) return 0;
    }
    return 1;
}

/* act = silu(gate_pre) ⊙ up_pre over the rows in use (the experts' blocks tile them, so
 * one elementwise pass covers them), then each expert's down projection into the saved eo
 * (in bf16 operands, moe_bf16_operands: act written as bf16). */
static void moe_experts_down_cuda(Layer *layer, MoeDims m, const MoeSaved *sv, const MoeScratch *sc,
                                  const int *start, int rows) {
    const int E = m.E, d = m.d, H = m.H;
    const int bf16 = moe_bf16_operands(start, E, d, H);
    uint16_t *act16 = (uint16_t *)sc->act;
    if (bf16) swiglu_forward_bf16_cuda(act16, sv->gate_pre, sv->up_pre, (size_t)rows * H, 0);
    else swiglu_forward_cuda(sc->act, sv->gate_pre, sv->up_pre, (size_t)rows * H, 0);
    for (int e = 0; e < E; e++) {
        const int o = start[e], count = start[e + 1] - o;
        if (count == 0) continue;
        float *eo = sv->eo + (size_t)o * d;
        const float *w_down = layer->params[moe_param_down(e)];
        if (bf16) matmul_forward_bf16_input_cuda(eo, act16 + (size_t)o * H, w_down, count, H, d, 0, 0);
        else matmul_forward_cuda(eo, sc->act + (size_t)o * H, w_down, NULL, count, H, d, 0, 0);
    }
}

/* The combine's backward writes deo only on rows that hold a slot; the padding rows after
 * each expert's slots (moe_pad_slots) are zeroed here, so the down products read zeros
 * there and add nothing to dW_down or, through dact, to dW_gate and dW_up (a stale NaN row
 * would: NaN · 0 is NaN). At most align − 1 rows an expert. */
static void moe_zero_padding_rows_cuda(void *buf, size_t row_bytes, const int *start, const int *offset, int E) {
    for (int e = 0; e < E; e++) {
        const int used = start[e] + offset[e + 1] - offset[e], pad = start[e + 1] - used;
        if (pad > 0) CUDA_CHECK(cudaMemsetAsync((char *)buf + (size_t)used * row_bytes, 0, (size_t)pad * row_bytes, 0));
    }
}

/* moe_forward on the device (see the file comment). Pointers named h_* are host memory
 * (MoeCudaHost); everything in sv, sc, x, y and the params is device memory. */
static void moe_forward_cuda(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx) {
    MoeDims m = moe_dims(layer, B, T);
    const int N = m.N, d = m.d, E = m.E, k = m.k, H = m.H, S = N * k;
    MoeSaved sv;
    MoeScratch sc;
    moe_saved_layout(&sv, layer->saved, m);
    BRAID_CHECK(moe_scratch_layout(&sc, ctx->scratch, m) <= ctx->scratch_floats,
                "moe forward (cuda): scratch too small for B=%d T=%d", B, T);
    const size_t R = moe_slot_rows(m);
    BRAID_CHECK(sv.slot_token == sv.slot_of + S && sv.offset == sv.slot_token + R,
                "moe forward (cuda): slot maps not adjacent in the saved layout");
    MoeCudaHost *hs = moe_cuda_host(layer, (size_t)S);
    int *h_expert = hs->pinned;
    int *h_slot_of = hs->pinned + hs->capacity, *h_slot_token = h_slot_of + S;
    int *h_offset = h_slot_token + R;
    const int *start = hs->start;
    hs->offset = NULL;   /* until this forward has rebuilt them */

    /* route: logits straight into probs, softmax and top-k in place */
    matmul_forward_cuda(sv.probs, x, layer->params[0], NULL, N, d, E, 0, 0);
    moe_route_forward_cuda(sv.probs, sv.lse, sv.expert, sv.weight, N, E, k, m.renormalize, 0);
    const int want_sums = m.aux_coef != 0.0f || m.z_coef != 0.0f;
    if (want_sums) moe_route_sums_cuda(sc.sums, sv.probs, sv.lse, N, E, 0);

    /* the one wait: expert ids (and the aux sums) to the host */
    CUDA_CHECK(cudaMemcpyAsync(h_expert, sv.expert, (size_t)S * sizeof(int),
                               cudaMemcpyDeviceToHost, 0));
    if (want_sums)
        CUDA_CHECK(cudaMemcpyAsync(hs->sums, sc.sums, ((size_t)E + 1) * sizeof(double),
                                   cudaMemcpyDeviceToHost, 0));
    CUDA_CHECK(cudaStreamSynchronize(0));
    for (int i = 0; i < S; i++)   /* an id outside [0, E) would make the sort write wild */
        BRAID_CHECK(h_expert[i] >= 0 && h_expert[i] < E,
                    "moe forward (cuda): token %d rank %d routed to expert %d of %d", i / k, i % k,
                    h_expert[i], E);
    moe_group_slots(h_offset, h_slot_of, hs->unpadded, hs->cursor, h_expert, N, E, k);
    moe_pad_slots(hs->start, h_slot_of, h_slot_token, hs->unpadded, h_offset, h_expert, S, E, m.align);
    /* slot_of, slot_token, offset in one copy. The pinned source is next rewritten by this
     * layer's next forward, after its cudaStreamSynchronize: the copy is done by then. */
    CUDA_CHECK(cudaMemcpyAsync(sv.slot_of, h_slot_of, ((size_t)S + R + (size_t)E + 1) * sizeof(int),
                               cudaMemcpyHostToDevice, 0));
    hs->offset = h_offset;
    hs->N = N;

    /* each expert on its padded block of rows start[e] ..; an expert with no slots is skipped.
     * In bf16 the rows are gathered as bf16 (copied from x's offered bf16 copy where there is
     * one) and both products read them as they are: nothing converted */
    const int rows = start[E], bf16 = moe_bf16_operands(start, E, d, H);
    uint16_t *xg16 = (uint16_t *)sc.xg;
    if (bf16) moe_gather_rows_bf16_cuda(xg16, x, matmul_bf16_copy_of_cuda(x, (size_t)N * d), sv.slot_token, rows, d, 0);
    else moe_gather_rows_cuda(sc.xg, x, sv.slot_token, rows, d, 0);
    for (int e = 0; e < E; e++) {
        const int o = start[e], count = start[e + 1] - o;
        if (count == 0) continue;
        if (bf16) {
            const uint16_t *xg16_rows = xg16 + (size_t)o * d;
            matmul_forward_bf16_input_cuda(sv.gate_pre + (size_t)o * H, xg16_rows, layer->params[moe_param_gate(e)],
                                           count, d, H, 0, 0);
            matmul_forward_bf16_input_cuda(sv.up_pre + (size_t)o * H, xg16_rows, layer->params[moe_param_up(e)],
                                           count, d, H, 0, 0);
            continue;
        }
        const float *xg = sc.xg + (size_t)o * d;
        matmul_hold_input_cuda(xg, (size_t)count * d);   /* in bf16: converted once for both */
        matmul_forward_cuda(sv.gate_pre + (size_t)o * H, xg, layer->params[moe_param_gate(e)], NULL,
                            count, d, H, 0, 0);
        matmul_forward_cuda(sv.up_pre + (size_t)o * H, xg, layer->params[moe_param_up(e)], NULL,
                            count, d, H, 0, 0);
        matmul_release_input_cuda();
    }
    /* the experts' blocks tile all rows in use, so one elementwise pass covers them */
    moe_experts_down_cuda(layer, m, &sv, &sc, start, rows);
    moe_combine_cuda(y, sv.eo, sv.weight, sv.slot_of, N, k, d, 0);

    /* host values, from the host copies: counts exactly the CPU's, sums in double */
    layer->aux_loss = moe_aux_from_sums(hs->sums, h_offset, m);
    moe_set_stats(layer, h_offset, E, S);
}

/* moe_backward on the device: the same steps, the per-expert loops sized from the host
 * offsets of the forward that filled layer->saved (no wait for the device). */
static void moe_backward_cuda(Layer *layer, float *dx, const float *dy, const float *x, int B, int T,
                              Ctx *ctx) {
    MoeDims m = moe_dims(layer, B, T);
    const int N = m.N, d = m.d, E = m.E, k = m.k, H = m.H;
    MoeSaved sv;
    MoeScratch sc;
    moe_saved_layout(&sv, layer->saved, m);
    BRAID_CHECK(moe_scratch_layout(&sc, ctx->scratch, m) <= ctx->scratch_floats,
                "moe backward (cuda): scratch too small for B=%d T=%d", B, T);
    const MoeCudaHost *hs = layer->priv;
    BRAID_CHECK(hs && hs->offset && hs->N == N,
                "moe backward (cuda): no forward of %d tokens to differentiate", N);
    const int *start = hs->start, rows = start[E];   /* the forward's padded expert blocks */

    const int bf16 = moe_bf16_operands(start, E, d, H);
    uint16_t *xg16 = (uint16_t *)sc.xg;   /* in bf16: gathered as bf16, as in the forward */
    if (bf16) moe_gather_rows_bf16_cuda(xg16, x, matmul_bf16_copy_of_cuda(x, (size_t)N * d), sv.slot_token, rows, d, 0);
    else moe_gather_rows_cuda(sc.xg, x, sv.slot_token, rows, d, 0);
    moe_zero_padding_rows_cuda(sc.deo, (size_t)d * (bf16 ? sizeof(uint16_t) : sizeof(float)), start, hs->offset,
                               E);

    /* dw from the saved expert outputs (only read), deo = w·dy; then the down projection and
     * the SwiGLU gate. Each expert's rows of dact (and below of dxg) start from its own
     * product: written (β = 0), not zeroed and accumulated into; the blocks cover all rows.
     * The gate's backward writes ∂L/∂gate_pre and ∂L/∂up_pre side by side, row r of one
     * (rows, 2H) array being [dgate[r, :] | dup[r, :]], for the gate and up projections taken
     * as one product (as in the dense FFN, layers/ffn_dense.c: an expert's up weight follows
     * its gate weight, so they are one (2H, d) weight, and so are their gradients). Its
     * padding rows are zeros, as g, u and dact are there (products of zero rows). */
    const size_t two_H = 2 * (size_t)H;
    BRAID_CHECK(sc.act + (size_t)rows * two_H <= sc.deo,
                "moe backward (cuda): act and dup do not hold the (rows, 2H) gate and up gradients");
    float *dgate_up = sc.act;
    uint16_t *dgate_up16 = (uint16_t *)sc.act;
    if (bf16) {
        /* deo written as bf16 by the combine's backward; dact from it (the dinp product only),
         * then one SwiGLU pass over g, u writes h16 (for dW_down) and [dgate | dup]16, then the
         * dW_down products read deo16 and h16: no float32 act, nothing converted */
        uint16_t *deo16 = (uint16_t *)sc.deo, *h16 = (uint16_t *)sc.dup;
        moe_combine_backward_bf16_cuda(sc.dweight, deo16, sv.eo, dy, sv.weight, sv.slot_of, N, k, d, 0);
        for (int e = 0; e < E; e++) {
            const int o = start[e], count = start[e + 1] - o;
            if (count == 0) continue;
            matmul_backward_bf16_operands_write_dinp_cuda(sc.dact + (size_t)o * H, NULL, NULL, deo16 + (size_t)o * d,
                                                          NULL, NULL, layer->params[moe_param_down(e)], count, H,
                                                          d, 0);
        }
        swiglu_backward_and_forward_bf16_cuda(h16, dgate_up16, dgate_up16 + H, sc.dact, sv.gate_pre, sv.up_pre,
                                              (size_t)rows * H, H, 2 * H, 0);
        for (int e = 0; e < E; e++) {
            const int o = start[e], count = start[e + 1] - o;
            if (count == 0) continue;
            matmul_backward_bf16_operands_cuda(NULL, layer->grads[moe_param_down(e)], NULL, deo16 + (size_t)o * d,
                                               NULL, h16 + (size_t)o * H, layer->params[moe_param_down(e)], count,
                                               H, d, 0);
        }
    } else {
        /* act recomputed in float32 for dW_down (elementwise; eo itself is saved); the down
         * products are its last readers, so the gradients may then be written over it */
        swiglu_forward_cuda(sc.act, sv.gate_pre, sv.up_pre, (size_t)rows * H, 0);
        moe_combine_backward_cuda(sc.dweight, sc.deo, sv.eo, dy, sv.weight, sv.slot_of, N, k, d, 0);
        for (int e = 0; e < E; e++) {
            const int o = start[e], count = start[e + 1] - o;
            if (count == 0) continue;
            matmul_backward_write_dinp_cuda(sc.dact + (size_t)o * H, layer->grads[moe_param_down(e)],
                                            sc.deo + (size_t)o * d, sc.act + (size_t)o * H,
                                            layer->params[moe_param_down(e)], count, H, d, 0);
        }
        swiglu_backward_cuda(dgate_up, dgate_up + H, sc.dact, sv.gate_pre, sv.up_pre, (size_t)rows * H, H, 2 * H, 0);
    }

    /* the gate and up projections, one product of 2H outputs an expert; deo's buffer becomes
     * dxg (every down product, the last reader of deo, is queued before on the same stream) */
    float *dxg = sc.deo;
    for (int e = 0; e < E; e++) {
        const int o = start[e], count = start[e + 1] - o;
        if (count == 0) continue;
        const float *w_gate = layer->params[moe_param_gate(e)];
        float *dw_gate = layer->grads[moe_param_gate(e)];
        BRAID_CHECK(layer->params[moe_param_up(e)] == w_gate + (size_t)H * d &&
                        layer->grads[moe_param_up(e)] == dw_gate + (size_t)H * d,
                    "moe backward (cuda): expert %d's up_proj.weight (or its gradient) does not directly follow "
                    "its gate_proj.weight, which the one product over both reads as one (2H, d) weight", e);
        if (bf16) {   /* every operand bf16 already: nothing to convert */
            matmul_backward_bf16_operands_write_dinp_cuda(dxg + (size_t)o * d, dw_gate, NULL,
                                                          dgate_up16 + (size_t)o * two_H, NULL, xg16 + (size_t)o * d,
                                                          w_gate, count, d, 2 * H, 0);
            continue;
        }
        matmul_backward_write_dinp_cuda(dxg + (size_t)o * d, dw_gate, dgate_up + (size_t)o * two_H,
                                        sc.xg + (size_t)o * d, w_gate, count, d, 2 * H, 0);
    }

    /* back to tokens, ranks in order (deterministic, no atomics) */
    moe_scatter_add_rows_cuda(dx, dxg, sv.slot_of, N, k, d, 0);

    /* router: the kernel reads the DEVICE copy of the offsets (sv.offset) */
    float aux_scale, z_scale;
    moe_route_backward_scales(m, ctx->aux_grad_scale, &aux_scale, &z_scale);
    moe_route_backward_cuda(sc.dlogits, sc.dweight, sv.probs, sv.lse, sv.expert, sv.weight,
                            sv.offset, N, E, k, m.renormalize, aux_scale, z_scale, 0);
    matmul_backward_cuda(dx, layer->grads[0], NULL, sc.dlogits, x, layer->params[0], N, d, E, 0);
}
#define MOE_CUDA .forward_cuda = moe_forward_cuda, .backward_cuda = moe_backward_cuda,
#else
#define MOE_CUDA
#endif

const LayerKind moe_kind = {
    .name = "moe", .symbol = 'E', .role = LAYER_FFN, .hf_module = "feed_forward", .implemented = 1,
    .validate = moe_validate,
    .init = moe_init,
    .declare_params = moe_declare_params,
    .saved_floats = moe_saved_floats,
    .scratch_floats = moe_scratch_floats,
    .forward = moe_forward,
    .backward = moe_backward,
    .destroy = moe_destroy,
    MOE_CUDA
};
