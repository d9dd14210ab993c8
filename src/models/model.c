/* model.c — assembles blocks from the resolved layer pattern and runs the whole model.
 *
 *   x₀ = embed(tokens)
 *   block i:  h = x + mixer(RMSNorm₁(x));  x' = h + ffn(RMSNorm₂(h))
 *   logits = RMSNorm_f(x_L) · Wᵀ      (W = embed_tokens.weight when tied)
 *
 * Layer kinds come from the registry (layer_kind_by_symbol); this file never names a
 * kind. Parameter names follow HF Jamba's (layers.3.mamba.in_proj.weight,
 * layers.0.input_layernorm.weight, embed_tokens.weight, final_layernorm.weight,
 * lm_head.weight) so checkpoints read naturally next to HF models. */
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/device.h"
#include "../core/ops.h"
#include "../train/adamw.h"
#ifdef BRAID_HAVE_CUDA
#include "../cuda/ops_cuda.h"
#endif

static void layer_setup(Model *m, Layer *L, const LayerKind *kind, int index) {
    memset(L, 0, sizeof *L);
    L->kind = kind;
    L->cfg = &m->cfg;
    L->device = m->device;
    L->index = index;
    L->d_model = m->d;
    snprintf(L->prefix, sizeof L->prefix, "layers.%d.%s", index, kind->hf_module);
    if (kind->init) kind->init(L);
    L->first_param = m->params.count;
    kind->declare_params(L, &m->params);
    L->n_params = m->params.count - L->first_param;
    for (int p = L->first_param; p < m->params.count; p++) m->params.items[p].layer_index = index;
}

static void layer_bind(Model *m, Layer *L) {
    L->params = braid_calloc((size_t)L->n_params, sizeof(float *), "layer param pointers");
    L->grads = braid_calloc((size_t)L->n_params, sizeof(float *), "layer grad pointers");
    for (int i = 0; i < L->n_params; i++) {
        const ParamDecl *pd = &m->params.items[L->first_param + i];
        L->params[i] = m->dev_params + pd->offset;
        L->grads[i] = m->dev_grads + pd->offset;
    }
}

static int norm_param(Model *m, const char *prefix, const char *name) {
    int shape[1] = {m->d};
    return param_list_add(&m->params, prefix, name, 1, shape, INIT_ONES, 0.0f, !m->cfg.train.decay_norms);
}

/* The most floats size(L, B, T) asks for over the model's batch shapes (0 without size):
 * each arena region is sized for the largest shape that region sees. */
static size_t floats_over_shapes(const Model *m, const Layer *L, size_t (*size)(const Layer *, int, int)) {
    size_t most = 0;
    for (int i = 0; size && i < m->n_shapes; i++) {
        size_t n = size(L, m->shapes[i].B, m->shapes[i].T);
        if (n > most) most = n;
    }
    return most;
}

int model_fits_batch(const Model *m, int B, int T) {
    for (int i = 0; i < m->n_shapes; i++)
        if (B <= m->shapes[i].B && T <= m->shapes[i].T) return 1;
    return 0;
}

int model_build(Model *m, const Config *cfg, int max_B, int max_T, BraidError *err) {
    const ModelShape shape = {max_B, max_T};
    return model_build_shapes(m, cfg, &shape, 1, err);
}

/* Floats the scratch is allocated with: what the largest layer asks for plus 16 of slack
 * (one place, so the allocation, the printed summary and model_activation_bytes agree). */
static size_t scratch_alloc_floats(const Model *m) { return m->scratch_floats + 16; }

int model_build_shapes(Model *m, const Config *cfg, const ModelShape *shapes, int n_shapes, BraidError *err) {
    memset(m, 0, sizeof *m);
    if (n_shapes < 1 || n_shapes > MODEL_MAX_SHAPES)
        return error_set(err, "model: %d batch shapes to size the activations for (expected 1 to %d)", n_shapes,
                         MODEL_MAX_SHAPES);
    for (int i = 0; i < n_shapes; i++) {
        if (shapes[i].B < 1 || shapes[i].T < 1)
            return error_set(err, "model: batch shape %d x %d (expected batch and length >= 1)", shapes[i].B,
                             shapes[i].T);
        m->shapes[i] = shapes[i];
        size_t tokens = (size_t)shapes[i].B * shapes[i].T;
        if (tokens > m->max_tokens) m->max_tokens = tokens;
    }
    m->n_shapes = n_shapes;
    m->cfg = *cfg;
    m->vocab = cfg->model.vocab_size > 0 ? cfg->model.vocab_size : cfg->task.vocab_size;
    m->d = cfg->model.d_model;
    m->n_blocks = cfg->model.n_layers;
    m->device = strcmp(cfg->train.device, "cuda") == 0 ? DEVICE_CUDA : DEVICE_CPU;
    const char *why = m->device == DEVICE_CUDA ? device_cuda_unavailable() : NULL;
    if (why) return error_set(err, "train.device: cuda, but %s", why);
    if ((int)strlen(cfg->model.pattern) != m->n_blocks || (int)strlen(cfg->model.ffn) != m->n_blocks)
        return error_set(err, "model: pattern '%s' / ffn '%s' do not have n_layers = %d symbols",
                         cfg->model.pattern, cfg->model.ffn, m->n_blocks);
    m->blocks = braid_calloc((size_t)m->n_blocks, sizeof(Block), "blocks");

    int embed_shape[2] = {m->vocab, m->d};
    m->embed = param_list_add(&m->params, "", "embed_tokens.weight", 2, embed_shape, INIT_NORMAL,
                              cfg->model.init_std, !cfg->train.decay_embeddings);
    for (int i = 0; i < m->n_blocks; i++) {
        Block *b = &m->blocks[i];
        char prefix[64];
        snprintf(prefix, sizeof prefix, "layers.%d", i);
        const LayerKind *mixer = layer_kind_by_symbol(cfg->model.pattern[i]);
        if (!mixer || mixer->role != LAYER_MIXER || !mixer->implemented)
            return error_set(err, "model.pattern: block %d: mixer symbol '%c' is not an implemented layer kind",
                             i, cfg->model.pattern[i]);
        if (m->device == DEVICE_CUDA && !mixer->forward_cuda)
            return error_set(err, "model.pattern: block %d: '%s' layers do not run on CUDA yet; use --device cpu",
                             i, mixer->name);
        b->norm1 = norm_param(m, prefix, "input_layernorm.weight");
        layer_setup(m, &b->mixer, mixer, i);
        if (cfg->model.ffn[i] != '-') {
            const LayerKind *ffn = layer_kind_by_symbol(cfg->model.ffn[i]);
            if (!ffn || ffn->role != LAYER_FFN || !ffn->implemented)
                return error_set(err, "model.ffn: block %d: ffn symbol '%c' is not an implemented layer kind",
                                 i, cfg->model.ffn[i]);
            if (m->device == DEVICE_CUDA && !ffn->forward_cuda)
                return error_set(err, "model.ffn: block %d: '%s' layers do not run on CUDA yet; use --device cpu",
                                 i, ffn->name);
            b->norm2 = norm_param(m, prefix, "pre_ff_layernorm.weight");
            layer_setup(m, &b->ffn, ffn, i);
        } else {
            b->norm2 = -1;
        }
    }
    m->final_norm = norm_param(m, "", "final_layernorm.weight");
    if (cfg->model.tie_embeddings) {
        m->lm_head = m->embed;
    } else {
        m->lm_head = param_list_add(&m->params, "", "lm_head.weight", 2, embed_shape, INIT_NORMAL,
                                    cfg->model.init_std, 0);
    }

    size_t P = m->params.total;
    m->param_data = braid_calloc(P, sizeof(float), "parameters");
    m->grad_data = braid_calloc(P, sizeof(float), "gradients");
    m->adam_m = braid_calloc(P, sizeof(float), "AdamW first moment");
    m->adam_v = braid_calloc(P, sizeof(float), "AdamW second moment");
    if (m->device == DEVICE_CUDA) {
#ifdef BRAID_HAVE_CUDA
        ops_cuda_init();   /* the cuBLAS handle (once per process) */
        if (matmul_set_precision_cuda(cfg->train.matmul_precision) != 0 ||
            attention_set_precision_cuda(cfg->train.matmul_precision) != 0)
            return error_set(err, "train.matmul_precision: '%s' (expected fp32, tf32 or bf16)",
                             cfg->train.matmul_precision);
#endif
        m->dev_params = device_alloc(DEVICE_CUDA, P * sizeof(float), "parameters (GPU)");
        m->dev_grads = device_alloc(DEVICE_CUDA, P * sizeof(float), "gradients (GPU)");
        m->dev_m = device_alloc(DEVICE_CUDA, P * sizeof(float), "AdamW first moment (GPU)");
        m->dev_v = device_alloc(DEVICE_CUDA, P * sizeof(float), "AdamW second moment (GPU)");
        size_t BTi = m->max_tokens * sizeof(int);
        m->dev_tokens = device_alloc(DEVICE_CUDA, BTi, "token batch (GPU)");
        m->dev_targets = device_alloc(DEVICE_CUDA, BTi, "target batch (GPU)");
#ifdef BRAID_HAVE_CUDA
        m->dev_ce_scratch = device_alloc(DEVICE_CUDA, cross_entropy_cuda_scratch_bytes((int)m->max_tokens),
                                         "cross-entropy scratch (GPU)");
        m->dev_norm = device_alloc(DEVICE_CUDA, (1 + GLOBAL_GRAD_NORM_CUDA_PARTIALS) * sizeof(double),
                                   "gradient-norm scratch (GPU)");
#endif
    } else {
        m->dev_params = m->param_data;
        m->dev_grads = m->grad_data;
        m->dev_m = m->adam_m;
        m->dev_v = m->adam_v;
    }

    /* Activation arena: per block x_in, norm1_out, rstd1, h, norm2_out, rstd2, the
     * layers' saved floats; then the head and the gradient buffers. Token-wise buffers
     * take the most tokens of any shape, the layers' regions what their largest shape
     * asks (saved_floats need not be a function of B·T alone). */
    size_t BT = m->max_tokens, BTd = BT * (size_t)m->d;
    size_t arena_used = 0;   /* layout_take's cursor */
    /* On CUDA in bf16, the normalised activations also get bf16 copies (BTd/2 floats each)
     * that the RMSNorm writes beside them for the matmuls that read them (ops_cuda.h) */
    const int norm_copies = m->device == DEVICE_CUDA && strcmp(cfg->train.matmul_precision, "bf16") == 0;
    size_t *off = braid_calloc((size_t)m->n_blocks * 10, sizeof(size_t), "arena plan");
    size_t scratch = 0;
    for (int i = 0; i < m->n_blocks; i++) {
        Block *b = &m->blocks[i];
        size_t *o = off + 10 * i;
        o[0] = layout_take(&arena_used, BTd);
        o[1] = layout_take(&arena_used, BTd);
        o[2] = layout_take(&arena_used, BT);
        o[3] = layout_take(&arena_used, BTd);
        o[4] = layout_take(&arena_used, BTd);
        o[5] = layout_take(&arena_used, BT);
        o[8] = norm_copies ? layout_take(&arena_used, (BTd + 1) / 2) : 0;
        o[9] = norm_copies ? layout_take(&arena_used, (BTd + 1) / 2) : 0;
        o[6] = layout_take(&arena_used, floats_over_shapes(m, &b->mixer, b->mixer.kind->saved_floats));
        size_t s = floats_over_shapes(m, &b->mixer, b->mixer.kind->scratch_floats);
        if (s > scratch) scratch = s;
        if (b->ffn.kind) {
            o[7] = layout_take(&arena_used, floats_over_shapes(m, &b->ffn, b->ffn.kind->saved_floats));
            s = floats_over_shapes(m, &b->ffn, b->ffn.kind->scratch_floats);
            if (s > scratch) scratch = s;
        }
    }
    size_t o_xf = layout_take(&arena_used, BTd), o_nf = layout_take(&arena_used, BTd), o_rf = layout_take(&arena_used, BT);
    size_t o_nf16 = norm_copies ? layout_take(&arena_used, (BTd + 1) / 2) : 0;
    size_t o_logits = layout_take(&arena_used, BT * (size_t)m->vocab), o_dlogits = layout_take(&arena_used, BT * (size_t)m->vocab);
    size_t o_dx = layout_take(&arena_used, BTd), o_dh = layout_take(&arena_used, BTd), o_dtmp = layout_take(&arena_used, BTd);
    size_t o_dx16 = norm_copies ? layout_take(&arena_used, (BTd + 1) / 2) : 0;
    size_t o_dh16 = norm_copies ? layout_take(&arena_used, (BTd + 1) / 2) : 0;
    m->arena_floats = arena_used;
    m->arena = device_alloc(m->device, arena_used * sizeof(float), "activation arena");
    m->scratch_floats = scratch;
    m->scratch = device_alloc(m->device, scratch_alloc_floats(m) * sizeof(float), "scratch");
    for (int i = 0; i < m->n_blocks; i++) {
        Block *b = &m->blocks[i];
        size_t *o = off + 10 * i;
        b->x_in = m->arena + o[0];
        b->norm1_out = m->arena + o[1];
        b->rstd1 = m->arena + o[2];
        b->h = m->arena + o[3];
        b->norm2_out = m->arena + o[4];
        b->rstd2 = m->arena + o[5];
        b->norm1_bf16 = norm_copies ? (uint16_t *)(m->arena + o[8]) : NULL;
        b->norm2_bf16 = norm_copies ? (uint16_t *)(m->arena + o[9]) : NULL;
        b->mixer.saved = m->arena + o[6];
        layer_bind(m, &b->mixer);
        if (b->ffn.kind) {
            b->ffn.saved = m->arena + o[7];
            layer_bind(m, &b->ffn);
        }
    }
    free(off);
    m->x_final = m->arena + o_xf;
    m->final_norm_out = m->arena + o_nf;
    m->final_rstd = m->arena + o_rf;
    m->final_norm_bf16 = norm_copies ? (uint16_t *)(m->arena + o_nf16) : NULL;
    m->logits = m->arena + o_logits;
    m->dlogits = m->arena + o_dlogits;
    m->dx = m->arena + o_dx;
    m->dh = m->arena + o_dh;
    m->dtmp = m->arena + o_dtmp;
    m->dx_bf16 = norm_copies ? (uint16_t *)(m->arena + o_dx16) : NULL;
    m->dh_bf16 = norm_copies ? (uint16_t *)(m->arena + o_dh16) : NULL;
    m->ctx = (Ctx){.device = m->device, .scratch = m->scratch, .scratch_floats = scratch, .training = 1,
                  .aux_grad_scale = 1.0f};
    model_init_params(m, (unsigned long)cfg->train.seed);
    return 0;
}

static const Layer *param_owner(const Model *m, const ParamDecl *pd) {
    if (pd->layer_index < 0) return NULL;
    const Block *b = &m->blocks[pd->layer_index];
    int idx = (int)(pd - m->params.items);
    if (idx >= b->mixer.first_param && idx < b->mixer.first_param + b->mixer.n_params) return &b->mixer;
    if (b->ffn.kind && idx >= b->ffn.first_param && idx < b->ffn.first_param + b->ffn.n_params) return &b->ffn;
    return NULL;
}

/* The bf16 copy of the parameters that the CUDA matmuls read (matmul_mirror_weights_cuda,
 * made by model_forward) must never outlive the values it copies: every path that
 * changes or frees them forgets it (AdamW does in adamw.cu). */
static void forget_weight_mirror(const Model *m) {
#ifdef BRAID_HAVE_CUDA
    if (m->device == DEVICE_CUDA) matmul_forget_weights_cuda();
#else
    (void)m;
#endif
}

/* Each tensor gets its own stream derived from (seed, tensor index), so adding a tensor
 * never changes the init of the others. */
void model_init_params(Model *m, unsigned long seed) {
    for (int i = 0; i < m->params.count; i++) {
        const ParamDecl *pd = &m->params.items[i];
        Rng rng;
        rng_seed(&rng, seed * 1000003ull + (uint64_t)i);
        param_init_tensor(m->param_data + pd->offset, pd, param_owner(m, pd), &rng);
    }
    forget_weight_mirror(m);
    if (m->device == DEVICE_CUDA) device_upload(DEVICE_CUDA, m->dev_params, m->param_data, m->params.total * sizeof(float));
}

void model_sync_to_host(Model *m) {
    if (m->device != DEVICE_CUDA) return;
    size_t bytes = m->params.total * sizeof(float);
    device_download(DEVICE_CUDA, m->param_data, m->dev_params, bytes);
    device_download(DEVICE_CUDA, m->adam_m, m->dev_m, bytes);
    device_download(DEVICE_CUDA, m->adam_v, m->dev_v, bytes);
}

void model_sync_to_device(Model *m) {
    if (m->device != DEVICE_CUDA) return;
    forget_weight_mirror(m);
    size_t bytes = m->params.total * sizeof(float);
    device_upload(DEVICE_CUDA, m->dev_params, m->param_data, bytes);
    device_upload(DEVICE_CUDA, m->dev_m, m->adam_m, bytes);
    device_upload(DEVICE_CUDA, m->dev_v, m->adam_v, bytes);
}

void model_grads_to_host(Model *m) {
    if (m->device != DEVICE_CUDA) return;
    device_download(DEVICE_CUDA, m->grad_data, m->dev_grads, m->params.total * sizeof(float));
}

void model_free(Model *m) {
    if (!m->blocks) return;
    forget_weight_mirror(m);
    for (int i = 0; i < m->n_blocks; i++) {
        Layer *ls[2] = {&m->blocks[i].mixer, &m->blocks[i].ffn};
        for (int j = 0; j < 2; j++) {
            if (!ls[j]->kind) continue;
            if (ls[j]->kind->destroy) ls[j]->kind->destroy(ls[j]);
            free(ls[j]->params);
            free(ls[j]->grads);
        }
    }
    free(m->blocks);
    if (m->device == DEVICE_CUDA) {
        void *dev[] = {m->dev_params, m->dev_grads, m->dev_m, m->dev_v, m->dev_tokens, m->dev_targets,
                       m->dev_ce_scratch, m->dev_norm};
        for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) device_free(DEVICE_CUDA, dev[i]);
    }
    free(m->param_data); free(m->grad_data); free(m->adam_m); free(m->adam_v);
    device_free(m->device, m->arena);
    device_free(m->device, m->scratch);
    param_list_free(&m->params);
    memset(m, 0, sizeof *m);
}

static float *P(Model *m, int idx) { return m->dev_params + m->params.items[idx].offset; }
static float *G(Model *m, int idx) { return m->dev_grads + m->params.items[idx].offset; }

/* The ops a training step calls, per device. model_forward and model_backward walk the
 * blocks once for both devices through this table: on the CPU the ops of src/core, on the
 * GPU their CUDA launchers on the default stream, behind adapters that give both the same
 * arguments. The layers' own passes are picked the same way (layer_forward/_backward). */
typedef struct StepOps {
    int cuda;   /* the layers' forward_cuda/backward_cuda, and the batch on the device */
    void (*embedding_forward)(float *out, const int *tokens, const float *table, int N, int C);
    void (*embedding_backward)(float *dtable, const float *dout, const int *tokens, int N, int C);
    /* out = norm(x), after x += residual where residual is not NULL: the residual stream's
     * add rides on the norm that reads the sum (on the GPU one pass, not two) */
    void (*rmsnorm_forward)(float *out, float *rstd, float *x, const float *residual, const float *weight, int N,
                            int C, float eps);
    /* dinp = dbase + the input gradient (dbase NULL: from zero; dbase == dinp: accumulate);
     * the residual stream's gradient passes through without a copy into dinp first. dinp16
     * (CUDA only; NULL on the CPU): bf16(dinp) too */
    void (*rmsnorm_backward)(float *dinp, const float *dbase, uint16_t *dinp16, float *dweight, const float *dout,
                             const float *inp, const float *weight, const float *rstd, int N, int C);
    void (*matmul_forward)(float *out, const float *inp, const float *weight, const float *bias, int N, int C,
                           int OC, int accumulate);
    void (*matmul_backward)(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                            const float *weight, int N, int C, int OC);
    /* Σ loss over valid targets (the count and hits in *valid, *correct when non-NULL);
     * dlogits, when non-NULL, WRITTEN with grad_scale·(softmax − onehot) */
    double (*cross_entropy)(Model *m, float *dlogits, const int *targets, int N, float grad_scale, int *valid,
                            int *correct);
    void (*add_inplace)(float *y, const float *x, size_t n);   /* y += x */
    /* m->dlogits = grad_scale·(softmax − onehot), then, through the LM head (logits =
     * final_norm_out · Wᵀ), m->dtmp += dlogits · W and its weight gradient */
    void (*lm_head_backward)(Model *m, const int *targets, int N, float grad_scale);
} StepOps;

static void add_inplace_cpu(float *y, const float *x, size_t n) {
    for (size_t j = 0; j < n; j++) y[j] += x[j];
}

static void rmsnorm_forward_cpu(float *out, float *rstd, float *x, const float *residual, const float *weight,
                                int N, int C, float eps) {
    if (residual) add_inplace_cpu(x, residual, (size_t)N * C);
    rmsnorm_forward(out, rstd, x, weight, N, C, eps);
}

static void rmsnorm_backward_cpu(float *dinp, const float *dbase, uint16_t *dinp16, float *dweight,
                                 const float *dout, const float *inp, const float *weight, const float *rstd, int N,
                                 int C) {
    (void)dinp16;   /* the CPU's matmuls read float32 */
    if (dinp && dbase != dinp) {
        if (dbase) memcpy(dinp, dbase, (size_t)N * C * sizeof(float));
        else memset(dinp, 0, (size_t)N * C * sizeof(float));
    }
    rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C);
}

static double cross_entropy_cpu(Model *m, float *dlogits, const int *targets, int N, float grad_scale,
                                int *valid, int *correct) {
    return cross_entropy_forward_backward(dlogits, m->logits, targets, N, m->vocab, grad_scale, valid, correct);
}

static void lm_head_backward_cpu(Model *m, const int *targets, int N, float grad_scale) {
    cross_entropy_forward_backward(m->dlogits, m->logits, targets, N, m->vocab, grad_scale, NULL, NULL);
    matmul_backward(m->dtmp, G(m, m->lm_head), NULL, m->dlogits, m->final_norm_out, P(m, m->lm_head), N, m->d,
                    m->vocab);
}

static const StepOps cpu_step_ops = {
    0, embedding_forward, embedding_backward, rmsnorm_forward_cpu, rmsnorm_backward_cpu, matmul_forward,
    matmul_backward, cross_entropy_cpu, add_inplace_cpu, lm_head_backward_cpu,
};

#ifdef BRAID_HAVE_CUDA
static void embedding_forward_gpu(float *out, const int *tokens, const float *table, int N, int C) {
    embedding_forward_cuda(out, tokens, table, N, C, 0);
}
static void embedding_backward_gpu(float *dtable, const float *dout, const int *tokens, int N, int C) {
    embedding_backward_cuda(dtable, dout, tokens, N, C, 0);
}
static void rmsnorm_forward_gpu(float *out, float *rstd, float *x, const float *residual, const float *weight, int N,
                                int C, float eps) {
    rmsnorm_residual_forward_cuda(out, NULL, rstd, x, residual, weight, N, C, eps, 0);
}
static void rmsnorm_backward_gpu(float *dinp, const float *dbase, uint16_t *dinp16, float *dweight,
                                 const float *dout, const float *inp, const float *weight, const float *rstd, int N,
                                 int C) {
    rmsnorm_backward_onto_cuda(dinp, dbase, dinp16, dweight, dout, inp, weight, rstd, N, C, 0);
}
static void matmul_forward_gpu(float *out, const float *inp, const float *weight, const float *bias, int N, int C,
                               int OC, int accumulate) {
    matmul_forward_cuda(out, inp, weight, bias, N, C, OC, accumulate, 0);
}
static void matmul_backward_gpu(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                const float *weight, int N, int C, int OC) {
    matmul_backward_cuda(dinp, dweight, dbias, dout, inp, weight, N, C, OC, 0);
}
/* waits for the device: the sums come back to the host */
static double cross_entropy_gpu(Model *m, float *dlogits, const int *targets, int N, float grad_scale,
                                int *valid, int *correct) {
    return cross_entropy_forward_backward_cuda(dlogits, m->logits, targets, N, m->vocab, grad_scale, valid,
                                               correct, m->dev_ce_scratch, 0);
}
static void add_inplace_gpu(float *y, const float *x, size_t n) { add_inplace_cuda(y, x, n, 0); }
/* In bf16 (ops_cuda.h, matmul_bf16_operands_cuda) the cross-entropy writes dlogits as the
 * LM head's bf16 operand: [N, vocab] is the step's largest activation gradient. */
static void lm_head_backward_gpu(Model *m, const int *targets, int N, float grad_scale) {
    if (matmul_bf16_operands_cuda(N, m->d, m->vocab)) {
        uint16_t *dlogits = (uint16_t *)m->dlogits;
        cross_entropy_forward_backward_bf16_cuda(dlogits, m->logits, targets, N, m->vocab, grad_scale, NULL, NULL,
                                                 m->dev_ce_scratch, 0);
        matmul_backward_bf16_operands_cuda(m->dtmp, G(m, m->lm_head), NULL, dlogits, m->final_norm_out, NULL,
                                           P(m, m->lm_head), N, m->d, m->vocab, 0);
        return;
    }
    cross_entropy_gpu(m, m->dlogits, targets, N, grad_scale, NULL, NULL);
    matmul_backward_gpu(m->dtmp, G(m, m->lm_head), NULL, m->dlogits, m->final_norm_out, P(m, m->lm_head), N, m->d,
                        m->vocab);
}

static const StepOps cuda_step_ops = {
    1, embedding_forward_gpu, embedding_backward_gpu, rmsnorm_forward_gpu, rmsnorm_backward_gpu,
    matmul_forward_gpu, matmul_backward_gpu, cross_entropy_gpu, add_inplace_gpu, lm_head_backward_gpu,
};
#endif

static const StepOps *step_ops(const Model *m) {
#ifdef BRAID_HAVE_CUDA
    if (m->device == DEVICE_CUDA) {
        /* cuBLAS's and attention's precision are process-wide; this model's holds for its
         * own passes */
        matmul_set_precision_cuda(m->cfg.train.matmul_precision);
        attention_set_precision_cuda(m->cfg.train.matmul_precision);
        return &cuda_step_ops;
    }
#else
    (void)m;
#endif
    return &cpu_step_ops;
}

/* The normalised activations' bf16 copies (Block.norm1_bf16, …): the forward's RMSNorm
 * writes them beside its float32 output where the products multiply in bf16
 * (m->norm_copies_written), and they are offered to the matmuls around each call that
 * reads that output (matmul_bf16_copy_cuda), which then convert nothing: the blocks' inputs
 * are read by each layer's first products forward and backward. Same bits as converting. */
static void norm_forward(Model *m, const StepOps *ops, float *out, uint16_t *copy, float *rstd, float *x,
                         const float *residual, const float *weight, int N) {
#ifdef BRAID_HAVE_CUDA
    if (ops->cuda && m->norm_copies_written) {
        rmsnorm_residual_forward_cuda(out, copy, rstd, x, residual, weight, N, m->d, m->cfg.model.norm_eps, 0);
        return;
    }
#else
    (void)copy;
#endif
    ops->rmsnorm_forward(out, rstd, x, residual, weight, N, m->d, m->cfg.model.norm_eps);
}

/* copy NULL: none offered any more */
static void offer_bf16_copy(const Model *m, const StepOps *ops, const float *src, size_t n, const uint16_t *copy) {
#ifdef BRAID_HAVE_CUDA
    if (ops->cuda && m->norm_copies_written) matmul_bf16_copy_cuda(src, n, copy);
#else
    (void)m; (void)ops; (void)src; (void)n; (void)copy;
#endif
}

/* The same for the residual stream's gradient, whose copy the norms' backward writes */
static void offer_bf16_grad_copy(const Model *m, const StepOps *ops, const float *src, size_t n,
                                 const uint16_t *copy) {
#ifdef BRAID_HAVE_CUDA
    if (ops->cuda && m->norm_copies_written) matmul_bf16_grad_copy_cuda(src, n, copy);
#else
    (void)m; (void)ops; (void)src; (void)n; (void)copy;
#endif
}

static void layer_forward(const StepOps *ops, Layer *L, float *y, const float *x, int B, int T, Ctx *ctx) {
    (ops->cuda ? L->kind->forward_cuda : L->kind->forward)(L, y, x, B, T, ctx);
}

static void layer_backward(const StepOps *ops, Layer *L, float *dx, const float *dy, const float *x, int B, int T,
                           Ctx *ctx) {
    (ops->cuda ? L->kind->backward_cuda : L->kind->backward)(L, dx, dy, x, B, T, ctx);
}

/* The batch where the ops read it: as given on the CPU; on the GPU uploaded into the
 * model's device buffers, where the targets stay for the backward. */
static const int *staged(const Model *m, const StepOps *ops, int *device_copy_of, const int *host, int N) {
    if (!ops->cuda || !host) return host;
    device_upload(m->device, device_copy_of, host, (size_t)N * sizeof(int));
    return device_copy_of;
}

double model_forward(Model *m, const int *tokens, const int *targets, int B, int T) {
    BRAID_CHECK(model_fits_batch(m, B, T), "batch %dx%d exceeds every batch shape the model was built for "
                "(the first: %dx%d)", B, T, m->shapes[0].B, m->shapes[0].T);
    const StepOps *ops = step_ops(m);
    int N = B * T, d = m->d;
    size_t Nd = (size_t)N * d;
    const int *tok = staged(m, ops, m->dev_tokens, tokens, N);
    const int *tgt = staged(m, ops, m->dev_targets, targets, N);
    float *x = m->n_blocks > 0 ? m->blocks[0].x_in : m->x_final;
    m->norm_copies_written = 0;
#ifdef BRAID_HAVE_CUDA
    /* in bf16, the weights' bf16 copy for this forward and its backward (one kernel) */
    if (ops->cuda) matmul_mirror_weights_cuda(m->dev_params, m->params.total, 0);
    m->norm_copies_written = ops->cuda && m->final_norm_bf16 && matmul_bf16_operands_cuda(N, d, d);
#endif
    ops->embedding_forward(x, tok, P(m, m->embed), N, d);
    m->last_aux_loss = 0.0;
    /* The residual adds ride on the norms that read their sums: a block's output (the next
     * block's x_in) is its FFN's output plus `pending` (its h), added by the next norm,
     * which writes the sum back into x_in; h = mixer output + x_in by the block's norm2. */
    const float *pending = NULL;
    for (int i = 0; i < m->n_blocks; i++) {
        Block *b = &m->blocks[i];
        float *out = (i + 1 < m->n_blocks) ? m->blocks[i + 1].x_in : m->x_final;
        norm_forward(m, ops, b->norm1_out, b->norm1_bf16, b->rstd1, b->x_in, pending, P(m, b->norm1), N);
        b->mixer.aux_loss = 0.0;
        offer_bf16_copy(m, ops, b->norm1_out, Nd, b->norm1_bf16);
        layer_forward(ops, &b->mixer, b->h, b->norm1_out, B, T, &m->ctx);
        offer_bf16_copy(m, ops, NULL, 0, NULL);
        m->last_aux_loss += b->mixer.aux_loss;
        if (b->ffn.kind) {
            norm_forward(m, ops, b->norm2_out, b->norm2_bf16, b->rstd2, b->h, b->x_in, P(m, b->norm2), N);
            b->ffn.aux_loss = 0.0;
            offer_bf16_copy(m, ops, b->norm2_out, Nd, b->norm2_bf16);
            layer_forward(ops, &b->ffn, out, b->norm2_out, B, T, &m->ctx);
            offer_bf16_copy(m, ops, NULL, 0, NULL);
            m->last_aux_loss += b->ffn.aux_loss;
            pending = b->h;
        } else {
            ops->add_inplace(b->h, b->x_in, Nd);
            device_copy(m->device, out, b->h, Nd * sizeof(float));
            pending = NULL;
        }
    }
    norm_forward(m, ops, m->final_norm_out, m->final_norm_bf16, m->final_rstd, m->x_final, pending,
                 P(m, m->final_norm), N);
    offer_bf16_copy(m, ops, m->final_norm_out, Nd, m->final_norm_bf16);
    ops->matmul_forward(m->logits, m->final_norm_out, P(m, m->lm_head), NULL, N, d, m->vocab, 0);
    offer_bf16_copy(m, ops, NULL, 0, NULL);
    if (!targets) { device_synchronize(m->device); return 0.0; }
    int valid = 0, correct = 0;
    double sum = ops->cross_entropy(m, NULL, tgt, N, 0.0f, &valid, &correct);
    m->last_valid = valid;
    m->last_correct = correct;
    m->last_loss = valid > 0 ? sum / valid : 0.0;
    return m->last_loss + m->last_aux_loss;
}

/* Against the targets of the last forward (on the GPU, the ones it uploaded). */
void model_backward(Model *m, const int *tokens, const int *targets, int B, int T, float loss_scale) {
    const StepOps *ops = step_ops(m);
    int N = B * T, d = m->d;
    size_t Nd = (size_t)N * d;
    const int *tok = ops->cuda ? m->dev_tokens : tokens;
    const int *tgt = ops->cuda ? m->dev_targets : targets;
    int valid = m->last_valid > 0 ? m->last_valid : 1;
    m->ctx.aux_grad_scale = loss_scale;   /* objective = loss_scale · (CE mean + Σ aux) */
    /* logits = n_f · Wᵀ */
    device_zero(m->device, m->dtmp, Nd * sizeof(float));
    offer_bf16_copy(m, ops, m->final_norm_out, Nd, m->final_norm_bf16);
    ops->lm_head_backward(m, tgt, N, loss_scale / (float)valid);
    offer_bf16_copy(m, ops, NULL, 0, NULL);
    /* dx: gradient w.r.t. the current residual stream (block output), written by the norm,
     * with its bf16 copy for the products that read it (in bf16) */
    uint16_t *dx16 = m->norm_copies_written ? m->dx_bf16 : NULL, *dh16 = m->norm_copies_written ? m->dh_bf16 : NULL;
    ops->rmsnorm_backward(m->dx, NULL, dx16, G(m, m->final_norm), m->dtmp, m->x_final, P(m, m->final_norm),
                          m->final_rstd, N, d);
    for (int i = m->n_blocks - 1; i >= 0; i--) {
        Block *b = &m->blocks[i];
        /* out = h + ffn(norm2(h)) ⇒ dh = dx + norm2ᵀ(ffnᵀ(dx)), written by the norm; without
         * an FFN, dh = dx */
        const float *dh = m->dx;
        const uint16_t *dh_copy = dx16;
        if (b->ffn.kind) {
            device_zero(m->device, m->dtmp, Nd * sizeof(float));
            offer_bf16_copy(m, ops, b->norm2_out, Nd, b->norm2_bf16);
            offer_bf16_grad_copy(m, ops, m->dx, Nd, dx16);
            layer_backward(ops, &b->ffn, m->dtmp, m->dx, b->norm2_out, B, T, &m->ctx);
            offer_bf16_copy(m, ops, NULL, 0, NULL);
            offer_bf16_grad_copy(m, ops, NULL, 0, NULL);
            ops->rmsnorm_backward(m->dh, m->dx, dh16, G(m, b->norm2), m->dtmp, b->h, P(m, b->norm2), b->rstd2, N, d);
            dh = m->dh;
            dh_copy = dh16;
        }
        /* h = x + mixer(norm1(x)) ⇒ dx = dh + norm1ᵀ(mixerᵀ(dh)) */
        device_zero(m->device, m->dtmp, Nd * sizeof(float));
        offer_bf16_copy(m, ops, b->norm1_out, Nd, b->norm1_bf16);
        offer_bf16_grad_copy(m, ops, dh, Nd, dh_copy);
        layer_backward(ops, &b->mixer, m->dtmp, dh, b->norm1_out, B, T, &m->ctx);
        offer_bf16_copy(m, ops, NULL, 0, NULL);
        offer_bf16_grad_copy(m, ops, NULL, 0, NULL);
        ops->rmsnorm_backward(m->dx, dh, dx16, G(m, b->norm1), m->dtmp, b->x_in, P(m, b->norm1), b->rstd1, N, d);
    }
    ops->embedding_backward(G(m, m->embed), m->dx, tok, N, d);
    forget_weight_mirror(m);   /* the optimizer changes the weights next */
}

void model_zero_grad(Model *m) { device_zero(m->device, m->dev_grads, m->params.total * sizeof(float)); }

double model_grad_norm(Model *m) {
#ifdef BRAID_HAVE_CUDA
    if (m->device == DEVICE_CUDA) {
        double norm;
        global_grad_norm_cuda(m->dev_norm, m->dev_grads, m->params.total, m->dev_norm + 1, 0);
        device_download(DEVICE_CUDA, &norm, m->dev_norm, sizeof norm);
        return norm;
    }
#endif
    return global_grad_norm(m->grad_data, m->params.total);
}

size_t model_param_count(const Model *m) { return m->params.total; }

/* 6 FLOPs per parameter per token for a matmul weight (2 forward, 4 backward) over the
 * weights a token actually multiplies (an MoE layer's top-k experts, not all E), plus
 * attention's score and value products: 12·T_eff·d per attention layer (fwd+bwd). */
double model_flops_per_token(const Model *m, int T) {
    double flops = 0.0;
    for (int i = 0; i < m->params.count; i++) {
        const ParamDecl *pd = &m->params.items[i];
        if (pd->ndim < 2 || i == m->embed) continue;
        double active = (double)pd->numel;
        if (strstr(pd->name, ".experts.")) active *= (double)m->cfg.model.moe.top_k / m->cfg.model.moe.experts;
        flops += 6.0 * active;
    }
    flops += 6.0 * (double)m->d * m->vocab;   /* the LM head (tied or not) */
    for (int i = 0; i < m->n_blocks; i++) {
        char s = m->cfg.model.pattern[i];
        if (s == 'A' || s == 'W') {
            double ctx = s == 'W' ? fmin((double)m->cfg.model.attention.window, (T + 1) / 2.0) : (T + 1) / 2.0;
            flops += 12.0 * ctx * m->d;
        }
    }
    return flops;
}

size_t model_activation_bytes(const Model *m) {
    return (m->arena_floats + scratch_alloc_floats(m)) * sizeof(float);
}

void model_print_summary(const Model *m, FILE *f) {
    fprintf(f, "model: %d blocks, d_model %d, vocab %d, %zu parameters (%.3fM)\n", m->n_blocks, m->d,
            m->vocab, m->params.total, m->params.total / 1e6);
    fprintf(f, "  pattern \"%s\"  ffn \"%s\"\n", m->cfg.model.pattern, m->cfg.model.ffn);
    for (int i = 0; i < m->n_blocks; i++) {
        const Block *b = &m->blocks[i];
        size_t n = 2 * (size_t)m->d;
        for (int p = 0; p < b->mixer.n_params; p++) n += m->params.items[b->mixer.first_param + p].numel;
        for (int p = 0; p < (b->ffn.kind ? b->ffn.n_params : 0); p++) n += m->params.items[b->ffn.first_param + p].numel;
        fprintf(f, "  block %2d: %-14s + %-6s %10zu params\n", i, b->mixer.kind->name,
                b->ffn.kind ? b->ffn.kind->name : "none", n);
    }
    /* what the activations cost, and for which batches: the figure to check against a
     * GPU's memory before starting several runs on it */
    fprintf(f, "  activations: %.1f MiB arena + %.1f MiB scratch (%s), for batches", m->arena_floats * 4.0 / 1048576.0,
            scratch_alloc_floats(m) * 4.0 / 1048576.0, m->device == DEVICE_CUDA ? "GPU" : "CPU");
    for (int i = 0; i < m->n_shapes; i++) fprintf(f, "%s %d x %d", i ? "," : "", m->shapes[i].B, m->shapes[i].T);
    fprintf(f, "\n");
}
