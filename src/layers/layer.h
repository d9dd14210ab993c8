/* layer.h — the layer contract: every mixer (attention, mamba, gla, ...) and every
 * FFN (dense, moe) is a LayerKind registered in one table (registry.c), so adding a
 * kind means one module and one registry line, never a switch in five places.
 *
 * Life of a layer:
 *  1. model_build creates a Layer (kind, block index, name prefix, config pointer) and
 *     calls kind->declare_params, which appends ParamDecls (name, shape, init) to the
 *     model's ParamList.
 *  2. All parameters (and gradients, and AdamW moments) live in one buffer each; the
 *     model then points layer->params[i] / layer->grads[i] at the i-th declared tensor.
 *  3. saved_floats(B,T) floats of the model's activation arena become layer->saved
 *     (activations kept from forward for backward); scratch_floats(B,T) is the most
 *     temporary space a call needs from Ctx.scratch (shared by all layers, valid only
 *     during one call). Nothing is allocated inside the training step.
 *  4. forward(y = f(x)) then backward(dx += ..., param grads +=), with the same B, T
 *     (B, T at most those the arena was sized for).
 *
 * On the CUDA backend (layer->device == DEVICE_CUDA, set before init and the size
 * queries) the model calls forward_cuda/backward_cuda instead, under the same contract
 * with every pointer a device pointer: x, y, dx, dy, layer->params[i], layer->grads[i],
 * layer->saved and ctx->scratch. Work goes on the default stream. aux_loss and stats stay
 * host values (a kind that has them copies them back). A kind whose forward_cuda is NULL
 * does not run on CUDA yet, and model_build says so. saved_floats/scratch_floats may
 * answer differently per device (read layer->device). */
#ifndef BRAID_LAYER_H
#define BRAID_LAYER_H
#include <stddef.h>
#include "../core/rng.h"

struct Config;
struct Layer;

/* Carves a layout out of one buffer: the offset of the next n floats, with *used advanced
 * past them rounded up to 32 floats (128 bytes), so that every region starts as aligned as
 * the buffer, up to a GPU cache line (the CUDA kernels' float4 paths and bf16 conversions
 * want 16 bytes; a warp's row access wants whole 128-byte lines). The model's arena and the
 * layers' saved and scratch layouts take their regions with it. Why 128 and not 64: with 64,
 * a region of BT·d/2 + 1 floats once left every later region of the arena 64- but not
 * 128-byte aligned, and the jamba-small bf16 step went from 53.5 to 59 ms (fourteenth
 * session, docs/performance.md) — a warp's 512-byte row access then spans five 128-byte
 * lines instead of four; beyond 128 bytes alignment measured no faster. */
static inline size_t layout_take(size_t *used, size_t n) {
    const size_t at = *used;
    *used += (n + 31) & ~(size_t)31;
    return at;
}

typedef enum { DEVICE_CPU = 0, DEVICE_CUDA = 1 } DeviceKind;

/* What a layer call may use beyond its own buffers. */
typedef struct Ctx {
    DeviceKind device;
    float *scratch;          /* temporary floats, at least max scratch_floats over layers */
    size_t scratch_floats;
    int training;            /* 1 in a training step (layers may record aux losses/stats) */
    /* Weight of a layer's auxiliary loss in the objective being differentiated: backward
     * adds aux_grad_scale · ∂aux/∂θ. The model sets it to its loss scale (1/grad_accum,
     * or a gradcheck's dL/dloss); 1 in a layer's own tests. */
    float aux_grad_scale;
} Ctx;

typedef enum { INIT_ZEROS, INIT_ONES, INIT_NORMAL, INIT_UNIFORM, INIT_CUSTOM } InitKind;

#define PARAM_NAME_MAX 128
#define PARAM_MAX_DIMS 4

typedef struct ParamDecl {
    char name[PARAM_NAME_MAX];   /* full name, HF Jamba style: layers.3.mamba.in_proj.weight */
    int ndim;
    int shape[PARAM_MAX_DIMS];
    size_t numel;
    size_t offset;               /* into the model's parameter buffer, set by param_list_add */
    InitKind init;
    float init_scale;            /* NORMAL: std; UNIFORM: bound (±scale) */
    /* INIT_CUSTOM: fills p[numel]; `layer` is the declaring layer (for its settings). */
    void (*init_fn)(float *p, const struct ParamDecl *decl, const struct Layer *layer, Rng *rng);
    int no_decay;                /* 1: AdamW applies no weight decay (norms, biases, A_log, D, ...) */
    int layer_index;             /* which Layer declared it, -1 for model-level params */
} ParamDecl;

typedef struct ParamList {
    ParamDecl *items;
    int count, capacity;
    size_t total;                /* floats */
} ParamList;

/* Appends a tensor named "<prefix>.<suffix>" (or just suffix if prefix is empty)
 * and returns its index. shape has ndim entries. */
int param_list_add(ParamList *list, const char *prefix, const char *suffix, int ndim,
                   const int *shape, InitKind init, float init_scale, int no_decay);
void param_list_free(ParamList *list);
int param_list_find(const ParamList *list, const char *name); /* -1 if absent */
/* Fills p (decl->numel floats) by the declared init rule. */
void param_init_tensor(float *p, const ParamDecl *decl, const struct Layer *layer, Rng *rng);

typedef enum { LAYER_MIXER, LAYER_FFN } LayerRole;

typedef struct Layer Layer;

typedef struct LayerKind {
    const char *name;        /* as written in YAML and printed: "mamba", "attention", ... */
    char symbol;             /* pattern symbol: 'M', 'A', 'W', 'G' (mixers); 'D', 'E' (ffn) */
    LayerRole role;
    const char *hf_module;   /* name segment in parameter names: "mamba", "self_attn", "feed_forward" */
    int implemented;         /* 0: the symbol is reserved but the kind is not built yet */
    /* Checks kind-specific settings against d_model etc.; fills err, returns -1 if invalid. */
    int    (*validate)(const struct Config *cfg, char *err, size_t err_len);
    /* Sets up layer->private state (may be NULL). Called once before declare_params. */
    void   (*init)(Layer *layer);
    void   (*declare_params)(Layer *layer, ParamList *list);
    size_t (*saved_floats)(const Layer *layer, int B, int T);
    size_t (*scratch_floats)(const Layer *layer, int B, int T);
    /* y[B,T,d] = layer(x[B,T,d]). y is written (not accumulated). */
    void   (*forward)(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx);
    /* dx[B,T,d] += ∂L/∂x; param grads +=. x is the same input forward saw. */
    void   (*backward)(Layer *layer, float *dx, const float *dy, const float *x, int B, int T, Ctx *ctx);
    void   (*destroy)(Layer *layer);   /* frees layer->private, may be NULL */
    /* The CUDA versions of forward and backward (see the file comment); NULL: not yet. */
    void   (*forward_cuda)(Layer *layer, float *y, const float *x, int B, int T, Ctx *ctx);
    void   (*backward_cuda)(Layer *layer, float *dx, const float *dy, const float *x, int B, int T,
                            Ctx *ctx);
} LayerKind;

struct Layer {
    const LayerKind *kind;
    const struct Config *cfg;   /* the resolved config (d_model and per-kind settings) */
    int index;                  /* block index */
    char prefix[64];            /* e.g. "layers.3.mamba" */
    int d_model;
    DeviceKind device;          /* where params, grads, saved and scratch live */
    int first_param, n_params;  /* range in the model's ParamList */
    float **params;             /* n_params pointers into the parameter buffer, declare order */
    float **grads;              /* same, into the gradient buffer */
    float *saved;               /* saved_floats(B,T) floats of the activation arena */
    void *priv;                 /* kind-private settings/state */
    /* Auxiliary loss this layer added in the last forward (MoE load balancing, z-loss),
     * already weighted by its coefficient; the model adds it to the loss and backward
     * differentiates it. */
    double aux_loss;
    /* Free-form per-layer statistics of the last forward, for metrics (MoE: tokens per
     * expert). stats_count entries; stats_name says what they are ("expert_load"). */
    const char *stats_name;
    float *stats;
    int stats_count;
};

/* The registry: registry.c holds the one table. */
const LayerKind *layer_kind_by_symbol(char symbol);
const LayerKind *layer_kind_by_name(const char *name);
int layer_kind_count(void);
const LayerKind *layer_kind_at(int i);

#endif
