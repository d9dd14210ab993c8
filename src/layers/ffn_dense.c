/* ffn_dense.c — the dense SwiGLU feed-forward layer ("dense", 'D').
 *
 *   g = x Wgᵀ, u = x Wuᵀ          [N,hidden]      Wg, Wu: (hidden, d)
 *   h = silu(g) ⊙ u               [N,hidden]
 *   y = h Wdᵀ                      [N,d]           Wd: (d, hidden)
 * hidden = config_ffn_hidden (8/3·d rounded up to 8 unless set). No biases.
 * Saved: g and u; backward recomputes h (one elementwise pass) rather than keeping a
 * third [N,hidden] tensor per layer in the arena. Scratch: h/dg, dh, du (on CUDA [dg | du]
 * side by side and h, in the same 3·nh floats: above ffn_dense_forward_cuda). */
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
 * writes h16 at the scratch's start.
 * The backward takes the gate and up projections as ONE product of output size 2·hidden:
 * gate_proj.weight and up_proj.weight are consecutive parameters (params.c lays them out
 * back to back), so W_gate is the start of a stacked [2·hidden, d] weight [W_gate; W_up], and
 * the same holds for their gradients. With dg and du side by side in one [N, 2·hidden]
 * array (row r = [dg[r, :] | du[r, :]], swiglu_backward_cuda's ld = 2·hidden),
 *   dx += [dg | du]·[W_gate; W_up] = dg·W_gate + du·W_up,   [dW_gate; dW_up] += [dg | du]ᵀ·x:
 * one pass over x, and wider products (on an H100, N=16384, d=768, hidden=2048 in bf16, the
 * pair of dinp products took 0.177 ms, the one 0.139; the dweight ones 0.178 and 0.131).
 * In bf16 the down projection's two products are issued apart: dh (its dinp) first, then one
 * SwiGLU kernel reads dh, g, u once and writes h16 and [dg | du]16
 * (swiglu_backward_and_forward_bf16_cuda: g and u read once, not once to recompute h before
 * the product and again for the gradients after it), then the dweight product from h16.
 * Scratch, 3·nh floats (nh = N·hidden; in bf16 nh is a multiple of 64, so every array starts
 * 128-byte aligned), in floats:
 *   float32: [0, nh) h, then, once the down product has read it, [0, 2nh) [dg | du];
 *            [2nh, 3nh) dh
 *   bf16:    [0, nh) [dg | du]16   [nh, 3nh/2) h16   [2nh, 3nh) dh
 * [dg | du] is written while dh is read, so the two never overlap. */
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
    size_t nh = (size_t)N * hidden, hd = (size_t)hidden * d;
    BRAID_CHECK(ctx->scratch_floats >= 3 * nh, "ffn_dense: scratch %zu < %zu floats",
                ctx->scratch_floats, 3 * nh);
    BRAID_CHECK(layer->params[PARAM_UP] == layer->params[PARAM_GATE] + hd &&
                    layer->grads[PARAM_UP] == layer->grads[PARAM_GATE] + hd,
                "ffn_dense: up_proj.weight (or its gradient) does not directly follow gate_proj.weight, "
                "which the backward's one product over both reads as one (2*hidden, d) weight");
    const float *gate = layer->saved, *up = gate + nh;
    float *dgate_up = ctx->scratch, *dh = dgate_up + 2 * nh;
    const int OC = 2 * hidden;   /* the gate and up projections stacked */
    /* dh starts from the down projection's product: written (β = 0), not zeroed first */
    if (matmul_bf16_operands_cuda(N, hidden, d)) {
        uint16_t *dgate_up16 = (uint16_t *)dgate_up, *h16 = (uint16_t *)(dgate_up + nh);
        matmul_hold_input_cuda(dy, (size_t)N * d);   /* dy converted once for both products */
        matmul_backward_bf16_operands_write_dinp_cuda(dh, NULL, dy, NULL, NULL, NULL, layer->params[PARAM_DOWN], N,
                                                      hidden, d, 0);
        swiglu_backward_and_forward_bf16_cuda(h16, dgate_up16, dgate_up16 + hidden, dh, gate, up, nh, hidden, OC, 0);
        matmul_backward_bf16_operands_cuda(NULL, layer->grads[PARAM_DOWN], dy, NULL, NULL, h16,
                                           layer->params[PARAM_DOWN], N, hidden, d, 0);
        matmul_release_input_cuda();
        matmul_backward_bf16_operands_cuda(dx, layer->grads[PARAM_GATE], NULL, dgate_up16, x, NULL,
                                           layer->params[PARAM_GATE], N, d, OC, 0);
        return;
    }
    float *h = dgate_up;
    swiglu_forward_cuda(h, gate, up, nh, 0);
    matmul_backward_write_dinp_cuda(dh, layer->grads[PARAM_DOWN], dy, h, layer->params[PARAM_DOWN], N, hidden, d, 0);
    /* h is no longer needed: its buffer, with the nh floats after it, now receives [dg | du] */
    swiglu_backward_cuda(dgate_up, dgate_up + hidden, dh, gate, up, nh, hidden, OC, 0);
    matmul_backward_cuda(dx, layer->grads[PARAM_GATE], NULL, dgate_up, x, layer->params[PARAM_GATE], N, d, OC, 0);
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
