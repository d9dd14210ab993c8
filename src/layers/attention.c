/* attention.c — the attention mixers: full causal ("attention", 'A') and sliding-window
 * ("sliding_window", 'W'), one module because they differ only in the window.
 *
 * x[B,T,d] → q = x Wqᵀ [B,T,H,hd], k = x Wkᵀ, v = x Wvᵀ [B,T,Hkv,hd]
 *          → (position: rope) rotate q and k by position
 *          → a = attention(q, k, v)  [B,T,H,hd]   (attention_cpu.c: causal, GQA, window)
 *          → y = a Woᵀ               [B,T,d]
 * H = attention.n_heads, Hkv = n_kv_heads (0 → H), hd = d/H; no biases (as HF Jamba).
 * Saved for backward: q, k (after rope), v, a, and the per-row log-sum-exp — linear in T.
 * Backward scratch: da [B,T,d], dq [B,T,d], dk and dv [B,T,Hkv·hd]. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "layer.h"
#include "../core/common.h"
#include "../core/ops.h"
#include "../models/config.h"
#ifdef BRAID_HAVE_CUDA
#include "../cuda/ops_cuda.h"
#endif

extern const LayerKind sliding_window_kind;

typedef struct AttentionShape {
    int H, Hkv, hd;
    int window;        /* 0: full causal */
    int rope;          /* 1: rotary positions on q and k */
    float rope_base;
} AttentionShape;

static AttentionShape attention_shape(const Layer *layer) {
    const AttentionConfig *ac = &layer->cfg->model.attention;
    AttentionShape s;
    s.H = ac->n_heads;
    s.Hkv = ac->n_kv_heads > 0 ? ac->n_kv_heads : ac->n_heads;
    s.hd = layer->d_model / s.H;
    s.window = layer->kind == &sliding_window_kind ? ac->window : 0;
    s.rope = strcmp(ac->position, "rope") == 0;
    s.rope_base = ac->rope_base;
    return s;
}

static int attention_validate_common(const Config *cfg, char *err, size_t err_len) {
    const AttentionConfig *ac = &cfg->model.attention;
    int d = cfg->model.d_model;
    int Hkv = ac->n_kv_heads > 0 ? ac->n_kv_heads : ac->n_heads;
    if (ac->n_heads <= 0 || d % ac->n_heads != 0) {
        snprintf(err, err_len, "attention.n_heads = %d must divide d_model = %d", ac->n_heads, d);
        return -1;
    }
    if (ac->n_heads % Hkv != 0) {
        snprintf(err, err_len, "attention.n_kv_heads = %d must divide n_heads = %d", Hkv, ac->n_heads);
        return -1;
    }
    if (strcmp(ac->position, "rope") == 0 && (d / ac->n_heads) % 2 != 0) {
        snprintf(err, err_len, "rope needs an even head_dim, got d_model/n_heads = %d", d / ac->n_heads);
        return -1;
    }
    if (strcmp(ac->position, "rope") != 0 && strcmp(ac->position, "none") != 0) {
        snprintf(err, err_len, "attention.position must be \"none\" or \"rope\", got \"%s\"", ac->position);
        return -1;
    }
    return 0;
}

static int sliding_window_validate(const Config *cfg, char *err, size_t err_len) {
    if (cfg->model.attention.window <= 0) {
        snprintf(err, err_len, "attention.window = %d must be positive for sliding_window layers",
                 cfg->model.attention.window);
        return -1;
    }
    return attention_validate_common(cfg, err, err_len);
}

static void attention_declare_params(Layer *layer, ParamList *list) {
    AttentionShape s = attention_shape(layer);
    const ModelConfig *m = &layer->cfg->model;
    int d = layer->d_model, qd = s.H * s.hd, kvd = s.Hkv * s.hd;
    /* GPT-2's residual scaling: the output projection feeds the residual stream, which
     * sums 2·n_layers such branches, so its std is divided by sqrt(2·n_layers). */
    float o_std = m->init_std / sqrtf(2.0f * (float)(m->n_layers > 0 ? m->n_layers : 1));
    int first = list->count;
    param_list_add(list, layer->prefix, "q_proj.weight", 2, (int[]){qd, d}, INIT_NORMAL, m->init_std, 0);
    param_list_add(list, layer->prefix, "k_proj.weight", 2, (int[]){kvd, d}, INIT_NORMAL, m->init_std, 0);
    param_list_add(list, layer->prefix, "v_proj.weight", 2, (int[]){kvd, d}, INIT_NORMAL, m->init_std, 0);
    param_list_add(list, layer->prefix, "o_proj.weight", 2, (int[]){d, qd}, INIT_NORMAL, o_std, 0);
    for (int i = first; i < list->count; i++) list->items[i].layer_index = layer->index;
}

enum { PARAM_Q, PARAM_K, PARAM_V, PARAM_O };

/* Saved layout: q [N,H·hd] | k [N,Hkv·hd] | v [N,Hkv·hd] | a [N,H·hd] | lse [B,H,T]. */
static size_t attention_saved_floats(const Layer *layer, int B, int T) {
    AttentionShape s = attention_shape(layer);
    size_t N = (size_t)B * T;
    return N * s.H * s.hd * 2 + N * s.Hkv * s.hd * 2 + N * s.H;
}

static size_t attention_scratch_floats(const Layer *layer, int B, int T) {
    AttentionShape s = attention_shape(layer);
    size_t N = (size_t)B * T;
    return N * s.H * s.hd * 2 + N * s.Hkv * s.hd * 2;
}

typedef struct AttentionSaved { float *q, *k, *v, *a, *lse; } AttentionSaved;

static AttentionSaved attention_saved(const Layer *layer, AttentionShape s, int B, int T) {
    size_t N = (size_t)B * T, qn = N * s.H * s.hd, kvn = N * s.Hkv * s.hd;
    AttentionSaved sv;
    sv.q = layer->saved;
    sv.k = sv.q + qn;
    sv.v = sv.k + kvn;
    sv.a = sv.v + kvn;
    sv.lse = sv.a + qn;
    return sv;
}

static void attention_layer_forward(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx) {
    (void)ctx;
    AttentionShape s = attention_shape(layer);
    AttentionSaved sv = attention_saved(layer, s, B, T);
    int N = B * T, d = layer->d_model, qd = s.H * s.hd, kvd = s.Hkv * s.hd;
    matmul_forward(sv.q, x, layer->params[PARAM_Q], NULL, N, d, qd, 0);
    matmul_forward(sv.k, x, layer->params[PARAM_K], NULL, N, d, kvd, 0);
    matmul_forward(sv.v, x, layer->params[PARAM_V], NULL, N, d, kvd, 0);
    if (s.rope) {
        rope_forward(sv.q, B, T, s.H, s.hd, s.rope_base);
        rope_forward(sv.k, B, T, s.Hkv, s.hd, s.rope_base);
    }
    attention_forward(sv.a, sv.lse, sv.q, sv.k, sv.v, B, T, s.H, s.Hkv, s.hd, s.window);
    matmul_forward(y, sv.a, layer->params[PARAM_O], NULL, N, qd, d, 0);
}

static void attention_layer_backward(Layer *layer, float *dx, const float *dy, const float *x,
                                     int B, int T, Ctx *ctx) {
    AttentionShape s = attention_shape(layer);
    AttentionSaved sv = attention_saved(layer, s, B, T);
    int N = B * T, d = layer->d_model, qd = s.H * s.hd, kvd = s.Hkv * s.hd;
    size_t need = attention_scratch_floats(layer, B, T);
    BRAID_CHECK(ctx->scratch_floats >= need, "attention: scratch %zu < %zu floats",
                ctx->scratch_floats, need);
    float *da = ctx->scratch;
    float *dq = da + (size_t)N * qd;
    float *dk = dq + (size_t)N * qd;
    float *dv = dk + (size_t)N * kvd;
    memset(ctx->scratch, 0, need * sizeof(float));   /* the ops below accumulate */
    matmul_backward(da, layer->grads[PARAM_O], NULL, dy, sv.a, layer->params[PARAM_O], N, qd, d);
    attention_backward(dq, dk, dv, da, sv.q, sv.k, sv.v, sv.a, sv.lse, B, T, s.H, s.Hkv, s.hd, s.window);
    if (s.rope) {
        rope_backward(dq, B, T, s.H, s.hd, s.rope_base);
        rope_backward(dk, B, T, s.Hkv, s.hd, s.rope_base);
    }
    matmul_backward(dx, layer->grads[PARAM_Q], NULL, dq, x, layer->params[PARAM_Q], N, d, qd);
    matmul_backward(dx, layer->grads[PARAM_K], NULL, dk, x, layer->params[PARAM_K], N, d, kvd);
    matmul_backward(dx, layer->grads[PARAM_V], NULL, dv, x, layer->params[PARAM_V], N, d, kvd);
}

#ifdef BRAID_HAVE_CUDA
/* The same steps on the GPU (every pointer a device pointer; the saved layout is shared). */
static void attention_layer_forward_cuda(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx) {
    (void)ctx;
    AttentionShape s = attention_shape(layer);
    AttentionSaved sv = attention_saved(layer, s, B, T);
    int N = B * T, d = layer->d_model, qd = s.H * s.hd, kvd = s.Hkv * s.hd;
    matmul_hold_input_cuda(x, (size_t)N * d);   /* in bf16: x converted once for q, k, v */
    matmul_forward_cuda(sv.q, x, layer->params[PARAM_Q], NULL, N, d, qd, 0, 0);
    matmul_forward_cuda(sv.k, x, layer->params[PARAM_K], NULL, N, d, kvd, 0, 0);
    matmul_forward_cuda(sv.v, x, layer->params[PARAM_V], NULL, N, d, kvd, 0, 0);
    matmul_release_input_cuda();
    if (s.rope) {
        rope_forward_cuda(sv.q, B, T, s.H, s.hd, s.rope_base, 0);
        rope_forward_cuda(sv.k, B, T, s.Hkv, s.hd, s.rope_base, 0);
    }
    attention_forward_cuda(sv.a, sv.lse, sv.q, sv.k, sv.v, B, T, s.H, s.Hkv, s.hd, s.window, 0);
    matmul_forward_cuda(y, sv.a, layer->params[PARAM_O], NULL, N, qd, d, 0, 0);
}

static void attention_layer_backward_cuda(Layer *layer, float *dx, const float *dy, const float *x,
                                          int B, int T, Ctx *ctx) {
    AttentionShape s = attention_shape(layer);
    AttentionSaved sv = attention_saved(layer, s, B, T);
    int N = B * T, d = layer->d_model, qd = s.H * s.hd, kvd = s.Hkv * s.hd;
    size_t need = attention_scratch_floats(layer, B, T);
    BRAID_CHECK(ctx->scratch_floats >= need, "attention: scratch %zu < %zu floats",
                ctx->scratch_floats, need);
    float *da = ctx->scratch;
    float *dq = da + (size_t)N * qd;
    float *dk = dq + (size_t)N * qd;
    float *dv = dk + (size_t)N * kvd;
    CUDA_ZERO(ctx->scratch, need);   /* the ops below accumulate */
    matmul_backward_cuda(da, layer->grads[PARAM_O], NULL, dy, sv.a, layer->params[PARAM_O], N, qd, d, 0);
    attention_backward_cuda(dq, dk, dv, da, sv.q, sv.k, sv.v, sv.a, sv.lse, B, T, s.H, s.Hkv, s.hd,
                            s.window, 0);
    if (s.rope) {
        rope_backward_cuda(dq, B, T, s.H, s.hd, s.rope_base, 0);
        rope_backward_cuda(dk, B, T, s.Hkv, s.hd, s.rope_base, 0);
    }
    matmul_hold_input_cuda(x, (size_t)N * d);
    matmul_backward_cuda(dx, layer->grads[PARAM_Q], NULL, dq, x, layer->params[PARAM_Q], N, d, qd, 0);
    matmul_backward_cuda(dx, layer->grads[PARAM_K], NULL, dk, x, layer->params[PARAM_K], N, d, kvd, 0);
    matmul_backward_cuda(dx, layer->grads[PARAM_V], NULL, dv, x, layer->params[PARAM_V], N, d, kvd, 0);
    matmul_release_input_cuda();
}
#define ATTENTION_CUDA .forward_cuda = attention_layer_forward_cuda, .backward_cuda = attention_layer_backward_cuda,
#else
#define ATTENTION_CUDA
#endif

const LayerKind attention_kind = {
    .name = "attention", .symbol = 'A', .role = LAYER_MIXER, .hf_module = "self_attn",
    .implemented = 1,
    .validate = attention_validate_common,
    .declare_params = attention_declare_params,
    .saved_floats = attention_saved_floats,
    .scratch_floats = attention_scratch_floats,
    .forward = attention_layer_forward,
    .backward = attention_layer_backward,
    ATTENTION_CUDA
};

const LayerKind sliding_window_kind = {
    .name = "sliding_window", .symbol = 'W', .role = LAYER_MIXER, .hf_module = "self_attn",
    .implemented = 1,
    .validate = sliding_window_validate,
    .declare_params = attention_declare_params,
    .saved_floats = attention_saved_floats,
    .scratch_floats = attention_scratch_floats,
    .forward = attention_layer_forward,
    .backward = attention_layer_backward,
    ATTENTION_CUDA
};
