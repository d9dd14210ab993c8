/* gla.c — gated linear attention mixer (Yang et al. 2024), as flash-linear-attention's
 * GatedLinearAttention layer (no short convolution, swish output gate, fused gated norm).
 *
 * x is (B, T, d); H heads; Dk = expand_k·d keys, Dv = expand_v·d values in total, per head
 * dk = Dk/H, dv = Dv/H; r = gate_rank; g_n = gate_normalizer.
 *     q = x W_qᵀ, k = x W_kᵀ  (B,T,Dk);   v = x W_vᵀ, g = x W_gᵀ  (B,T,Dv)
 *     log α = logsigmoid((x W_α1ᵀ) W_α2ᵀ + b_α) / g_n      (B,T,Dk), per token and key channel
 *     per head: S_t = diag(α_t) S_{t−1} + k_tᵀ v_t,  o_t = (q_t · dk^−0.5) S_t    (gla_cpu.c)
 *     y = (RMSNorm_head(o) ⊙ silu(g)) W_oᵀ      RMSNorm over each head's dv, weight shared by heads
 * Modes (model.gla.mode):
 *     "gla"        as above;
 *     "retention"  RetNet's fixed decay, no gate parameters: head h of H has
 *                  α_h = 1 − 2^(−5−h) on every key channel (torchscale/fla MultiScaleRetention's
 *                  1 − 2^(−5 − arange(H)): head 0 remembers ~32 tokens, each next head twice as long);
 *     "linear"     α = 1 (plain causal linear attention), no gate parameters.
 * Parameter names follow fla (q_proj, k_proj, v_proj, g_proj, gk_proj.0, gk_proj.1, o_proj)
 * except the norm, which fla calls g_norm_swish_gate and we call g_norm.
 * Inits: projections normal(init_std), o_proj's std divided by sqrt(2·n_layers) (GPT-2's
 * residual scaling, as fla's _init_weights with rescale_prenorm_residual); gk_proj.1.bias
 * zeros (as fla: every Linear bias is zeroed), so α starts near sigmoid(0)^(1/16) ≈ 0.96;
 * g_norm ones.
 *
 * Forward saves q, k, v, g, log α, the gate's pre-activations, o, the norm's rstd and
 * the kernel's chunk-start states; backward recomputes the normed output and z from them.
 *
 * CUDA (layer->device == DEVICE_CUDA): gla_forward_cuda / gla_backward_cuda compute the
 * same thing with the same saved layout: the projections through cuBLAS, the chunk
 * kernel of cuda/gla.cu, the per-head norm as rmsnorm_cuda over (B·T·H) rows of dv, the
 * swish gate as swiglu_cuda. Their scratch differs (see gla_scratch_floats). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"
#include "gla_cpu.h"
#include "../core/common.h"
#include "../core/ops.h"
#include "../models/config.h"
#ifdef BRAID_HAVE_CUDA
#include "../cuda/gla_cuda.h"
#include "../cuda/ops_cuda.h"
#endif

typedef enum { GLA_MODE_GATED, GLA_MODE_RETENTION, GLA_MODE_LINEAR } GlaMode;

/* Settings resolved once from the config, and the indices of the declared parameters. */
typedef struct GlaLayer {
    GlaMode mode;
    int H, Dk, Dv, dk, dv, rank, chunk;
    float gate_normalizer, eps, scale;
    int p_q, p_k, p_v, p_g, p_gate_down, p_gate_up, p_gate_bias, p_o, p_norm;   /* -1: absent */
} GlaLayer;

/* Pointers into layer->saved for one (B, T). */
typedef struct GlaSaved {
    float *q, *k, *log_alpha;          /* (B,T,Dk) */
    float *v, *g, *o;                  /* (B,T,Dv) */
    float *gate_low;                   /* (B,T,r)  gla mode only */
    float *gate_pre;                   /* (B,T,Dk) gla mode only: before logsigmoid */
    float *rstd;                       /* (B,T,H) */
    float *states;                     /* (B,H,n_chunks,dk,dv) */
    size_t total;
} GlaSaved;

static int parse_mode(const char *mode, GlaMode *out) {
    if (strcmp(mode, "gla") == 0) *out = GLA_MODE_GATED;
    else if (strcmp(mode, "retention") == 0) *out = GLA_MODE_RETENTION;
    else if (strcmp(mode, "linear") == 0) *out = GLA_MODE_LINEAR;
    else return -1;
    return 0;
}

/* expand·d as an integer, or -1 if it is not one. */
static int expanded_width(float expand, int d) {
    float w = expand * (float)d;
    int r = (int)lroundf(w);
    return (r >= 1 && fabsf(w - (float)r) < 1e-3f) ? r : -1;
}

static int gla_validate(const Config *cfg, char *err, size_t err_len) {
    const GlaConfig *g = &cfg->model.gla;
    const int d = cfg->model.d_model;
    GlaMode mode;
    int Dk = expanded_width(g->expand_k, d), Dv = expanded_width(g->expand_v, d);
    if (parse_mode(g->mode, &mode)) {
        snprintf(err, err_len, "gla.mode is '%s'; expected gla, retention or linear", g->mode);
        return -1;
    }
    if (g->n_heads < 1) { snprintf(err, err_len, "gla.n_heads is %d; must be >= 1", g->n_heads); return -1; }
    if (Dk < 0 || Dk % g->n_heads) {
        snprintf(err, err_len, "gla.expand_k (%g) × d_model (%d) must be a whole multiple of n_heads (%d)",
                 g->expand_k, d, g->n_heads);
        return -1;
    }
    if (Dv < 0 || Dv % g->n_heads) {
        snprintf(err, err_len, "gla.expand_v (%g) × d_model (%d) must be a whole multiple of n_heads (%d)",
                 g->expand_v, d, g->n_heads);
        return -1;
    }
    if (g->chunk < 1) { snprintf(err, err_len, "gla.chunk is %d; must be >= 1", g->chunk); return -1; }
    if (mode == GLA_MODE_GATED && g->gate_rank < 1) {
        snprintf(err, err_len, "gla.gate_rank is %d; must be >= 1", g->gate_rank);
        return -1;
    }
    if (mode == GLA_MODE_GATED && !(g->gate_normalizer > 0.0f)) {
        snprintf(err, err_len, "gla.gate_normalizer is %g; must be > 0", g->gate_normalizer);
        return -1;
    }
    return 0;
}

static void gla_init(Layer *layer) {
    char err[256];
    BRAID_CHECK(gla_validate(layer->cfg, err, sizeof err) == 0, "gla layer %s: %s", layer->prefix, err);
    const GlaConfig *g = &layer->cfg->model.gla;
    GlaLayer *p = braid_calloc(1, sizeof *p, "gla layer settings");
    parse_mode(g->mode, &p->mode);
    p->H = g->n_heads;
    p->Dk = expanded_width(g->expand_k, layer->d_model);
    p->Dv = expanded_width(g->expand_v, layer->d_model);
    p->dk = p->Dk / p->H;
    p->dv = p->Dv / p->H;
    p->rank = g->gate_rank;
    p->chunk = g->chunk;
    p->gate_normalizer = g->gate_normalizer;
    p->eps = layer->cfg->model.norm_eps;
    p->scale = 1.0f / sqrtf((float)p->dk);
    p->p_gate_down = p->p_gate_up = p->p_gate_bias = -1;
    layer->priv = p;
#ifdef BRAID_HAVE_CUDA
    /* said here, at model build, rather than by the kernel in the middle of a step */
    BRAID_CHECK(layer->device != DEVICE_CUDA || p->dk <= GLA_CUDA_MAX_DK,
                "gla layer %s: per-head key width %d (expand_k · d_model / n_heads) exceeds the "
                "CUDA kernel's limit of %d; raise gla.n_heads or lower gla.expand_k",
                layer->prefix, p->dk, GLA_CUDA_MAX_DK);
#endif
}

static void gla_destroy(Layer *layer) {
    braid_free(layer->priv);
    layer->priv = NULL;
}

static void gla_declare_params(Layer *layer, ParamList *list) {
    GlaLayer *p = layer->priv;
    const int d = layer->d_model;
    const float std = layer->cfg->model.init_std;
    const float o_std = std / sqrtf(2.0f * (float)imax(layer->cfg->model.n_layers, 1));
    const int first = list->count;
    p->p_q = param_list_add(list, layer->prefix, "q_proj.weight", 2, (int[]){p->Dk, d}, INIT_NORMAL, std, 0);
    p->p_k = param_list_add(list, layer->prefix, "k_proj.weight", 2, (int[]){p->Dk, d}, INIT_NORMAL, std, 0);
    p->p_v = param_list_add(list, layer->prefix, "v_proj.weight", 2, (int[]){p->Dv, d}, INIT_NORMAL, std, 0);
    p->p_g = param_list_add(list, layer->prefix, "g_proj.weight", 2, (int[]){p->Dv, d}, INIT_NORMAL, std, 0);
    if (p->mode == GLA_MODE_GATED) {
        p->p_gate_down = param_list_add(list, layer->prefix, "gk_proj.0.weight", 2, (int[]){p->rank, d},
                                        INIT_NORMAL, std, 0);
        p->p_gate_up = param_list_add(list, layer->prefix, "gk_proj.1.weight", 2, (int[]){p->Dk, p->rank},
                                      INIT_NORMAL, std, 0);
        p->p_gate_bias = param_list_add(list, layer->prefix, "gk_proj.1.bias", 1, (int[]){p->Dk},
                                        INIT_ZEROS, 0.0f, 1);
    }
    p->p_o = param_list_add(list, layer->prefix, "o_proj.weight", 2, (int[]){d, p->Dv}, INIT_NORMAL, o_std, 0);
    p->p_norm = param_list_add(list, layer->prefix, "g_norm.weight", 1, (int[]){p->dv}, INIT_ONES, 0.0f, 1);
    /* indices relative to this layer's first parameter (layer->params is in declare order) */
    p->p_q -= first; p->p_k -= first; p->p_v -= first; p->p_g -= first; p->p_o -= first; p->p_norm -= first;
    if (p->mode == GLA_MODE_GATED) { p->p_gate_down -= first; p->p_gate_up -= first; p->p_gate_bias -= first; }
}

static GlaSaved saved_layout(const GlaLayer *p, float *base, int B, int T) {
    const size_t N = (size_t)B * T;
    const int gated = p->mode == GLA_MODE_GATED;
    GlaSaved s;
    float *cur = base;
#define TAKE(field, n) do { s.field = cur; cur = cur ? cur + (n) : NULL; s.total += (n); } while (0)
    s.total = 0;
    TAKE(q, N * p->Dk);
    TAKE(k, N * p->Dk);
    TAKE(log_alpha, N * p->Dk);
    TAKE(v, N * p->Dv);
    TAKE(g, N * p->Dv);
    TAKE(o, N * p->Dv);
    TAKE(gate_low, gated ? N * p->rank : 0);
    TAKE(gate_pre, gated ? N * p->Dk : 0);
    TAKE(rstd, N * p->H);
    TAKE(states, (size_t)B * p->H * gla_chunk_count(T, p->chunk) * p->dk * p->dv);
#undef TAKE
    return s;
}

static size_t gla_saved_floats(const Layer *layer, int B, int T) {
    return saved_layout(layer->priv, NULL, B, T).total;
}

/* Backward's temporaries (the larger need): three (N,Dv) and three (N,Dk) buffers, one
 * (N,r), then the kernel's scratch. Forward uses the first (N,Dv) and the kernel's.
 * On CUDA: four (N,Dv) buffers (the swish gate's backward writes its two outputs apart
 * from its inputs), the same (N,Dk) and (N,r) ones, then the CUDA kernel's scratch,
 * which holds per-slice partial sums and so grows with T. */
static size_t gla_scratch_floats(const Layer *layer, int B, int T) {
    const GlaLayer *p = layer->priv;
    const size_t N = (size_t)B * T;
#ifdef BRAID_HAVE_CUDA
    if (layer->device == DEVICE_CUDA)
        return 4 * N * p->Dv + 3 * N * p->Dk + N * p->rank +
               gla_chunk_backward_cuda_scratch_floats(B, T, p->H, p->dk, p->dv, p->chunk);
#endif
    return 3 * N * p->Dv + 3 * N * p->Dk + N * p->rank +
           gla_chunk_scratch_floats(B, p->H, p->dk, p->dv, p->chunk);
}

/* log σ(x), without overflow for large |x|. */
static inline float log_sigmoid_f(float x) {
    return x < 0.0f ? x - log1pf(expf(x)) : -log1pf(expf(-x));
}

/* log α for every (token, key channel): from the low-rank gate, RetNet's constants, or 0. */
static void gla_log_decay_forward(const GlaLayer *p, GlaSaved *s, Layer *layer, const float *x,
                                  size_t N) {
    const int d = layer->d_model;
    const size_t n_all = N * p->Dk;
    if (p->mode == GLA_MODE_GATED) {
        matmul_forward(s->gate_low, x, layer->params[p->p_gate_down], NULL, (int)N, d, p->rank, 0);
        matmul_forward(s->gate_pre, s->gate_low, layer->params[p->p_gate_up],
                       layer->params[p->p_gate_bias], (int)N, p->rank, p->Dk, 0);
        const float inv = 1.0f / p->gate_normalizer;
        for (size_t i = 0; i < n_all; i++) s->log_alpha[i] = log_sigmoid_f(s->gate_pre[i]) * inv;
    } else if (p->mode == GLA_MODE_RETENTION) {
        for (size_t n = 0; n < N; n++)
            for (int h = 0; h < p->H; h++) {
                const float decay = (float)log1p(-ldexp(1.0, -5 - h));   /* log(1 − 2^(−5−h)) */
                for (int c = 0; c < p->dk; c++) s->log_alpha[n * p->Dk + (size_t)h * p->dk + c] = decay;
            }
    } else {
        memset(s->log_alpha, 0, n_all * sizeof(float));
    }
}

/* Backward's recompute: normed = RMSNorm_head(o) · w (from the saved rstd), z = normed ⊙ silu(g). */
static void gated_norm_recompute(float *normed, float *z, const GlaLayer *p, const GlaSaved *s,
                                 const float *w, size_t N) {
    const size_t rows = N * p->H;
    for (size_t row = 0; row < rows; row++) {
        const float r = s->rstd[row];
        for (int e = 0; e < p->dv; e++) {
            const size_t i = row * p->dv + e;
            normed[i] = s->o[i] * r * w[e];
            z[i] = normed[i] * silu_f(s->g[i]);
        }
    }
}

static void gla_forward(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx) {
    const GlaLayer *p = layer->priv;
    const int d = layer->d_model;
    const size_t N = (size_t)B * T;
    GlaSaved s = saved_layout(p, layer->saved, B, T);
    float *z = ctx->scratch;                                   /* (N, Dv) */
    float *kernel_scratch = ctx->scratch + 3 * N * p->Dv + 3 * N * p->Dk + N * p->rank;

    matmul_forward(s.q, x, layer->params[p->p_q], NULL, (int)N, d, p->Dk, 0);
    matmul_forward(s.k, x, layer->params[p->p_k], NULL, (int)N, d, p->Dk, 0);
    matmul_forward(s.v, x, layer->params[p->p_v], NULL, (int)N, d, p->Dv, 0);
    matmul_forward(s.g, x, layer->params[p->p_g], NULL, (int)N, d, p->Dv, 0);
    gla_log_decay_forward(p, &s, layer, x, N);

    gla_chunk_forward(s.o, s.states, NULL, s.q, s.k, s.v, s.log_alpha, B, T, p->H, p->dk, p->dv,
                      p->chunk, p->scale, kernel_scratch);

    /* rstd per (token, head); z = RMSNorm_head(o) ⊙ silu(g) */
    rmsnorm_forward(z, s.rstd, s.o, layer->params[p->p_norm], (int)(N * p->H), p->dv, p->eps);
    for (size_t i = 0; i < N * p->Dv; i++) z[i] *= silu_f(s.g[i]);
    matmul_forward(y, z, layer->params[p->p_o], NULL, (int)N, p->Dv, d, 0);
}

static void gla_backward(Layer *layer, float *dx, const float *dy, const float *x, int B, int T,
                         Ctx *ctx) {
    const GlaLayer *p = layer->priv;
    const int d = layer->d_model;
    const size_t N = (size_t)B * T, nv = N * p->Dv, nk = N * p->Dk;
    GlaSaved s = saved_layout(p, layer->saved, B, T);
    /* scratch, reused as the values die: buf1 normed → dg; buf2 z → dnormed → dv; buf3 dz → do */
    float *buf1 = ctx->scratch, *buf2 = buf1 + nv, *buf3 = buf2 + nv;
    float *dq = buf3 + nv, *dk = dq + nk, *dlog_alpha = dk + nk;
    float *dgate_low = dlog_alpha + nk;                                        /* (N, r) */
    float *kernel_scratch = dgate_low + N * p->rank;
    const float *w_norm = layer->params[p->p_norm];

    /* output projection: dz = dy W_o, dW_o += dyᵀ z */
    gated_norm_recompute(buf1, buf2, p, &s, w_norm, N);
    memset(buf3, 0, nv * sizeof(float));
    matmul_backward(buf3, layer->grads[p->p_o], NULL, dy, buf2, layer->params[p->p_o], (int)N, p->Dv, d);

    /* z = normed ⊙ silu(g):  dnormed = dz ⊙ silu(g);  dg = dz ⊙ normed ⊙ σ(g)(1 + g(1 − σ(g))) */
    for (size_t i = 0; i < nv; i++) {
        const float g = s.g[i], sg = sigmoid_f(g), dz = buf3[i];
        buf2[i] = dz * g * sg;
        buf1[i] = dz * buf1[i] * sg * (1.0f + g * (1.0f - sg));
    }
    float *dg = buf1, *dnormed = buf2, *d_o = buf3;
    memset(d_o, 0, nv * sizeof(float));
    rmsnorm_backward(d_o, layer->grads[p->p_norm], dnormed, s.o, w_norm, s.rstd, (int)(N * p->H), p->dv);

    float *dv = buf2;   /* dnormed is dead now */
    memset(dv, 0, nv * sizeof(float));
    memset(dq, 0, 3 * nk * sizeof(float));   /* dq, dk, dlog_alpha */
    gla_chunk_backward(dq, dk, dv, p->mode == GLA_MODE_GATED ? dlog_alpha : NULL, d_o, s.q, s.k, s.v,
                       s.log_alpha, s.states, B, T, p->H, p->dk, p->dv, p->chunk, p->scale,
                       kernel_scratch);

    if (p->mode == GLA_MODE_GATED) {
        /* log α = logsigmoid(pre)/g_n:  dpre = dlog α · σ(−pre) / g_n  (in place) */
        const float inv = 1.0f / p->gate_normalizer;
        for (size_t i = 0; i < nk; i++) dlog_alpha[i] *= sigmoid_f(-s.gate_pre[i]) * inv;
        memset(dgate_low, 0, N * p->rank * sizeof(float));
        matmul_backward(dgate_low, layer->grads[p->p_gate_up], layer->grads[p->p_gate_bias], dlog_alpha,
                        s.gate_low, layer->params[p->p_gate_up], (int)N, p->rank, p->Dk);
        matmul_backward(dx, layer->grads[p->p_gate_down], NULL, dgate_low, x,
                        layer->params[p->p_gate_down], (int)N, d, p->rank);
    }
    matmul_backward(dx, layer->grads[p->p_q], NULL, dq, x, layer->params[p->p_q], (int)N, d, p->Dk);
    matmul_backward(dx, layer->grads[p->p_k], NULL, dk, x, layer->params[p->p_k], (int)N, d, p->Dk);
    matmul_backward(dx, layer->grads[p->p_v], NULL, dv, x, layer->params[p->p_v], (int)N, d, p->Dv);
    matmul_backward(dx, layer->grads[p->p_g], NULL, dg, x, layer->params[p->p_g], (int)N, d, p->Dv);
}

#ifdef BRAID_HAVE_CUDA
/* ---------------------------------------------------------------- CUDA path
 * The steps of gla_forward / gla_backward on the GPU (every pointer a device pointer,
 * work on the default stream, the saved layout shared with the CPU path). */

static void gla_log_decay_forward_cuda(const GlaLayer *p, GlaSaved *s, Layer *layer, const float *x,
                                       size_t N) {
    const int d = layer->d_model;
    if (p->mode == GLA_MODE_GATED) {
        matmul_forward_cuda(s->gate_low, x, layer->params[p->p_gate_down], NULL, (int)N, d, p->rank, 0, 0);
        matmul_forward_cuda(s->gate_pre, s->gate_low, layer->params[p->p_gate_up],
                            layer->params[p->p_gate_bias], (int)N, p->rank, p->Dk, 0, 0);
        gla_log_decay_gated_cuda(s->log_alpha, s->gate_pre, N * p->Dk, 1.0f / p->gate_normalizer, 0);
    } else if (p->mode == GLA_MODE_RETENTION) {
        gla_log_decay_retention_cuda(s->log_alpha, N, p->H, p->dk, 0);
    } else {
        CUDA_ZERO(s->log_alpha, N * p->Dk);
    }
}

static void gla_forward_cuda(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx) {
    const GlaLayer *p = layer->priv;
    const int d = layer->d_model;
    const size_t N = (size_t)B * T, nv = N * p->Dv;
    GlaSaved s = saved_layout(p, layer->saved, B, T);
    BRAID_CHECK(ctx->scratch_floats >= 2 * nv, "gla: scratch %zu < %zu floats", ctx->scratch_floats, 2 * nv);
    float *normed = ctx->scratch, *z = normed + nv;   /* (N, Dv) each */

    matmul_hold_input_cuda(x, N * d);   /* in bf16: x converted once for q, k, v, g, the gate */
    matmul_forward_cuda(s.q, x, layer->params[p->p_q], NULL, (int)N, d, p->Dk, 0, 0);
    matmul_forward_cuda(s.k, x, layer->params[p->p_k], NULL, (int)N, d, p->Dk, 0, 0);
    matmul_forward_cuda(s.v, x, layer->params[p->p_v], NULL, (int)N, d, p->Dv, 0, 0);
    matmul_forward_cuda(s.g, x, layer->params[p->p_g], NULL, (int)N, d, p->Dv, 0, 0);
    gla_log_decay_forward_cuda(p, &s, layer, x, N);
    matmul_release_input_cuda();

    gla_chunk_forward_cuda(s.o, s.states, NULL, s.q, s.k, s.v, s.log_alpha, B, T, p->H, p->dk, p->dv,
                           p->chunk, p->scale, NULL, 0);

    /* rstd per (token, head): rows of dv, the weight shared by the heads; z = normed ⊙ silu(g) */
    rmsnorm_forward_cuda(normed, s.rstd, s.o, layer->params[p->p_norm], (int)(N * p->H), p->dv, p->eps, 0);
    swiglu_forward_cuda(z, s.g, normed, nv, 0);
    matmul_forward_cuda(y, z, layer->params[p->p_o], NULL, (int)N, p->Dv, d, 0, 0);
}

static void gla_backward_cuda(Layer *layer, float *dx, const float *dy, const float *x, int B, int T,
                              Ctx *ctx) {
    const GlaLayer *p = layer->priv;
    const int d = layer->d_model;
    const size_t N = (size_t)B * T, nv = N * p->Dv, nk = N * p->Dk;
    GlaSaved s = saved_layout(p, layer->saved, B, T);
    const size_t kernel_floats = gla_chunk_backward_cuda_scratch_floats(B, T, p->H, p->dk, p->dv, p->chunk);
    const size_t need = 4 * nv + 3 * nk + N * p->rank + kernel_floats;
    BRAID_CHECK(ctx->scratch_floats >= need, "gla: scratch %zu < %zu floats", ctx->scratch_floats, need);
    /* scratch, reused as the values die: buf1 normed → dv; buf2 z → dnormed; buf3 dz → do;
     * buf4 dg. swiglu_backward_cuda never writes into its own inputs. */
    float *buf1 = ctx->scratch, *buf2 = buf1 + nv, *buf3 = buf2 + nv, *buf4 = buf3 + nv;
    float *dq = buf4 + nv, *dk = dq + nk, *dlog_alpha = dk + nk;
    float *dgate_low = dlog_alpha + nk;                                        /* (N, r) */
    float *kernel_scratch = dgate_low + N * p->rank;
    const float *w_norm = layer->params[p->p_norm];

    /* recompute normed and z: the same kernel on the same o gives forward's rstd again */
    rmsnorm_forward_cuda(buf1, NULL, s.o, w_norm, (int)(N * p->H), p->dv, p->eps, 0);
    swiglu_forward_cuda(buf2, s.g, buf1, nv, 0);

    /* output projection: dz = dy W_o, dW_o += dyᵀ z */
    CUDA_ZERO(buf3, nv);
    matmul_backward_cuda(buf3, layer->grads[p->p_o], NULL, dy, buf2, layer->params[p->p_o], (int)N, p->Dv,
                         d, 0);

    /* z = silu(g) ⊙ normed:  dg = dz ⊙ normed ⊙ σ(g)(1 + g(1 − σ(g))) → buf4,
     * dnormed = dz ⊙ silu(g) → buf2 (z is dead) */
    swiglu_backward_cuda(buf4, buf2, buf3, s.g, buf1, nv, p->Dv, p->Dv, 0);
    float *dg = buf4, *dnormed = buf2, *d_o = buf3;   /* dz is dead */
    CUDA_ZERO(d_o, nv);
    rmsnorm_backward_cuda(d_o, layer->grads[p->p_norm], dnormed, s.o, w_norm, s.rstd, (int)(N * p->H),
                          p->dv, 0);

    float *dv = buf1;   /* normed is dead now */
    CUDA_ZERO(dv, nv);
    CUDA_ZERO(dq, 3 * nk);   /* dq, dk, dlog_alpha */
    gla_chunk_backward_cuda(dq, dk, dv, p->mode == GLA_MODE_GATED ? dlog_alpha : NULL, d_o, s.q, s.k, s.v,
                            s.log_alpha, s.states, B, T, p->H, p->dk, p->dv, p->chunk, p->scale,
                            kernel_scratch, 0);

    matmul_hold_input_cuda(x, N * d);   /* in bf16: x converted once for its five products */
    if (p->mode == GLA_MODE_GATED) {
        /* log α = logsigmoid(pre)/g_n:  dpre = dlog α · σ(−pre) / g_n  (in place) */
        gla_log_decay_gated_backward_cuda(dlog_alpha, s.gate_pre, nk, 1.0f / p->gate_normalizer, 0);
        CUDA_ZERO(dgate_low, N * p->rank);
        matmul_backward_cuda(dgate_low, layer->grads[p->p_gate_up], layer->grads[p->p_gate_bias],
                             dlog_alpha, s.gate_low, layer->params[p->p_gate_up], (int)N, p->rank, p->Dk, 0);
        matmul_backward_cuda(dx, layer->grads[p->p_gate_down], NULL, dgate_low, x,
                             layer->params[p->p_gate_down], (int)N, d, p->rank, 0);
    }
    matmul_backward_cuda(dx, layer->grads[p->p_q], NULL, dq, x, layer->params[p->p_q], (int)N, d, p->Dk, 0);
    matmul_backward_cuda(dx, layer->grads[p->p_k], NULL, dk, x, layer->params[p->p_k], (int)N, d, p->Dk, 0);
    matmul_backward_cuda(dx, layer->grads[p->p_v], NULL, dv, x, layer->params[p->p_v], (int)N, d, p->Dv, 0);
    matmul_backward_cuda(dx, layer->grads[p->p_g], NULL, dg, x, layer->params[p->p_g], (int)N, d, p->Dv, 0);
    matmul_release_input_cuda();
}
#define GLA_CUDA .forward_cuda = gla_forward_cuda, .backward_cuda = gla_backward_cuda,
#else
#define GLA_CUDA
#endif

const LayerKind gla_kind = {
    .name = "gla", .symbol = 'G', .role = LAYER_MIXER, .hf_module = "gla", .implemented = 1,
    .validate = gla_validate,
    .init = gla_init,
    .declare_params = gla_declare_params,
    .saved_floats = gla_saved_floats,
    .scratch_floats = gla_scratch_floats,
    .forward = gla_forward,
    .backward = gla_backward,
    .destroy = gla_destroy,
    GLA_CUDA
};
