/* ffn_dense.c — the dense SwiGLU feed-forward layer ("dense", 'D').
 *
 *   g = x Wgᵀ, u = x Wuᵀ          [N,hidden]      Wg, Wu: (hidden, d)
 *   h = silu(g) ⊙ u               [N,hidden]
 *   y = h Wdᵀ                      [N,d]           Wd: (d, hidden)
 * hidden = config_ffn_hidden (8/3·d rounded up to 8 unless set). No biases.
 * Saved: g and u; backward recomputes h (one elementwise pass) rather than keeping a
 * third [N,hidden] tensor per layer in the arena. Scratch: h/dg, dh, du (in bf16 on CUDA
 * four arrays in the same 3·nh floats: above ffn_dense_forward_cuda). */
#include <math.h>
#include <string.h>
#include "layer.h"
#include "../core/common.h"
#include "../core/ops.h"
#include "../models/config.h"
#ifdef BRAID_HAVE_CUDA
#include "../cuda/ops_cuda.h"
#endif

enum { PARAM_GATE, PARAM_UP, PARAM_DOWN };

static void ffn_dense_declare_params(Layer *layer, ParamList *list) {
    const ModelConfig *m = &layer->cfg->model;
    int d = layer->d_model, hidden = config_ffn_hidden(layer->cfg);
    /* GPT-2's residual scaling on the projection that writes the residual stream. */
    float down_std = m->init_std / sqrtf(2.0f * (float)(m->n_layers > 0 ? m->n_layers : 1));
    int first = list->count;
    param_list_add(list, layer->prefix, "gate_proj.weight", 2, (int[]){hidden, d}, INIT_NORMAL, m->init_std, 0);
    param_list_add(list, layer->prefix, "up_proj.weight", 2, (int[]){hidden, d}, INIT_NORMAL, m->init_std, 0);
    param_list_add(list, layer->prefix, "down_proj.weight", 2, (int[]){d, hidden}, INIT_NORMAL, down_std, 0);
    for (int i = first; i < list->count; i++) list->items[i].layer_index = layer->index;
}

static size_t ffn_dense_saved_floats(const Layer *layer, int B, int T) {
    return 2 * (size_t)B * T * config_ffn_hidden(layer->cfg);
}

static size_t ffn_dense_scratch_floats(const Layer *layer, int B, int T) {
    return 3 * (size_t)B * T * config_ffn_hidden(layer->cfg);
}

static void ffn_dense_forward(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx) {
    int N = B * T, d = layer->d_model, hidden = config_ffn_hidden(layer->cfg);
    size_t nh = (size_t)N * hidden;
    BRAID_CHECK(ctx->scratch_floats >= nh, "ffn_dense: scratch %zu < %zu floats", ctx->scratch_floats, nh);
    float *gate = layer->saved, *up = gate + nh, *h = ctx->scratch;
    matmul_forward(gate, x, layer->params[PARAM_GATE], NULL, N, d, hidden, 0);
    matmul_forward(up, x, layer->params[PARAM_UP], NULL, N, d, hidden, 0);
    swiglu_forward(h, gate, up, nh);
    matmul_forward(y, h, layer->params[PARAM_DOWN], NULL, N, hidden, d, 0);
}

static void ffn_dense_backward(Layer *layer, float *dx, const float *dy, const float *x,
                               int B, int T, Ctx *ctx) {
    int N = B * T, d = layer->d_model, hidden = config_ffn_hidden(layer->cfg);
    size_t nh = (size_t)N * hidden;
    BRAID_CHECK(ctx->scratch_floats >= 3 * nh, "ffn_dense: scratch %zu < %zu floats",
                ctx->scratch_floats, 3 * nh);
    const float *gate = layer->saved, *up = gate + nh;
    float *h_then_dgate = ctx->scratch, *dh = h_then_dgate + nh, *dup = dh + nh;
    swiglu_forward(h_then_dgate, gate, up, nh);
    memset(dh, 0, nh * sizeof(float));
    matmul_backward(dh, layer->grads[PARAM_DOWN], NULL, dy, h_then_dgate, layer->params[PARAM_DOWN],
                    N, hidden, d);
    /* h is no longer needed: its buffer now receives dgate (swiglu_backward writes). */
    swiglu_backward(h_then_dgate, dup, dh, gate, up, nh);
    matmul_backward(dx, layer->grads[PARAM_GATE], NULL, h_then_dgate, x, layer->params[PARAM_GATE],
                    N, d, hidden);
    matmul_backward(dx, layer->grads[PARAM_UP], NULL, dup, x, layer->params[PARAM_UP], N, d, hidden);
}

#ifdef BRAID_HAVE_CUDA
/* In bf16 (matmul_bf16_operands_cuda), SwiGLU writes h, and in the backward dgate and dup,
 * straight as the bf16 operands of the products that read them, which then convert
 * nothing (ops_cuda.h). The bits are those of converting the float32 values. The forward
 * writes h16 at the scratch's start. The backward issues the down projection's two
 * products apart: dh (its dinp) first, then one SwiGLU kernel reads dh, g, u once and
 * writes h16, dgate16 and dup16 (swiglu_backward_and_forward_bf16_cuda: g and u read once,
 * not once to recompute h before the product and again for the gradients after it), then
 * the dweight product from h16. The three bf16 [N,hidden] arrays (nh/2 floats each; nh a
 * multiple of 64 in bf16, so every one starts 128-byte aligned) must not overlap, in the
 * 3·nh floats of scratch (in floats):
 *   [0, nh/2) h16   [nh/2, nh) dgate16   [nh, 2nh) dh (float32)   [2nh, 5nh/2) dup16 */
static void ffn_dense_forward_cuda(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx) {
    int N = B * T, d = layer->d_model, hidden = config_ffn_hidden(layer->cfg);
    size_t nh = (size_t)N * hidden;
    BRAID_CHECK(ctx->scratch_floats >= nh, "ffn_dense: scratch %zu < %zu floats", ctx->scratch_floats, nh);
    float *gate = layer->saved, *up = gate + nh, *h = ctx->scratch;
    matmul_hold_input_cuda(x, (size_t)N * d);   /* in bf16: x converted once for both */
    matmul_forward_cuda(gate, x, layer->params[PARAM_GATE], NULL, N, d, hidden, 0, 0);
    matmul_forward_cuda(up, x, layer->params[PARAM_UP], NULL, N, d, hidden, 0, 0);
    matmul_release_input_cuda();
    if (matmul_bf16_operands_cuda(N, hidden, d)) {
        uint16_t *h16 = (uint16_t *)h;
        swiglu_forward_bf16_cuda(h16, gate, up, nh, 0);
        matmul_forward_bf16_input_cuda(y, h16, layer->params[PARAM_DOWN], N, hidden, d, 0, 0);
        return;
    }
    swiglu_forward_cuda(h, gate, up, nh, 0);
    matmul_forward_cuda(y, h, layer->params[PARAM_DOWN], NULL, N, hidden, d, 0, 0);
}

static void ffn_dense_backward_cuda(Layer *layer, float *dx, const float *dy, const float *x,
                                    int B, int T, Ctx *ctx) {
    int N = B * T, d = layer->d_model, hidden = config_ffn_hidden(layer->cfg);
    size_t nh = (size_t)N * hidden;
    BRAID_CHECK(ctx->scratch_floats >= 3 * nh, "ffn_dense: scratch %zu < %zu floats",
                ctx->scratch_floats, 3 * nh);
    const float *gate = layer->saved, *up = gate + nh;
    float *h_then_dgate = ctx->scratch, *dh = h_then_dgate + nh, *dup = dh + nh;
    /* dh starts from the down projection's product: written (β = 0), not zeroed first */
    if (matmul_bf16_operands_cuda(N, hidden, d)) {
        uint16_t *h16 = (uint16_t *)h_then_dgate, *dgate16 = h16 + nh, *dup16 = (uint16_t *)(dh + nh);
        matmul_hold_input_cuda(dy, (size_t)N * d);   /* dy converted once for both products */
        matmul_backward_bf16_operands_write_dinp_cuda(dh, NULL, dy, NULL, NULL, NULL, layer->params[PARAM_DOWN], N,
                                                      hidden, d, 0);
        swiglu_backward_and_forward_bf16_cuda(h16, dgate16, dup16, dh, gate, up, nh, 0);
        matmul_backward_bf16_operands_cuda(NULL, layer->grads[PARAM_DOWN], dy, NULL, NULL, h16,
                                           layer->params[PARAM_DOWN], N, hidden, d, 0);
        matmul_release_input_cuda();
        matmul_hold_input_cuda(x, (size_t)N * d);
        matmul_backward_bf16_operands_cuda(dx, layer->grads[PARAM_GATE], NULL, dgate16, x, NULL,
                                           layer->params[PARAM_GATE], N, d, hidden, 0);
        matmul_backward_bf16_operands_cuda(dx, layer->grads[PARAM_UP], NULL, dup16, x, NULL,
                                           layer->params[PARAM_UP], N, d, hidden, 0);
        matmul_release_input_cuda();
        return;
    }
    swiglu_forward_cuda(h_then_dgate, gate, up, nh, 0);
    matmul_backward_write_dinp_cuda(dh, layer->grads[PARAM_DOWN], dy, h_then_dgate, layer->params[PARAM_DOWN], N,
                                    hidden, d, 0);
    swiglu_backward_cuda(h_then_dgate, dup, dh, gate, up, nh, 0);
    matmul_hold_input_cuda(x, (size_t)N * d);
    matmul_backward_cuda(dx, layer->grads[PARAM_GATE], NULL, h_then_dgate, x, layer->params[PARAM_GATE],
                         N, d, hidden, 0);
    matmul_backward_cuda(dx, layer->grads[PARAM_UP], NULL, dup, x, layer->params[PARAM_UP], N, d, hidden, 0);
    matmul_release_input_cuda();
}
#define FFN_DENSE_CUDA .forward_cuda = ffn_dense_forward_cuda, .backward_cuda = ffn_dense_backward_cuda,
#else
#define FFN_DENSE_CUDA
#endif

const LayerKind ffn_dense_kind = {
    .name = "dense", .symbol = 'D', .role = LAYER_FFN, .hf_module = "feed_forward",
    .implemented = 1,
    .declare_params = ffn_dense_declare_params,
    .saved_floats = ffn_dense_saved_floats,
    .scratch_floats = ffn_dense_scratch_floats,
    .forward = ffn_dense_forward,
    .backward = ffn_dense_backward,
    FFN_DENSE_CUDA
};
