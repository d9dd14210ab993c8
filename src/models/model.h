/* model.h — a hybrid model assembled from a resolved Config.
 *
 *   x₀ = embed(tokens)
 *   for each block i:  h = x + mixer_i(RMSNorm(x));  x = h + ffn_i(RMSNorm(h))   (ffn may be absent)
 *   logits = RMSNorm(x) · Wᵀ     W = embed_tokens.weight if tied, else lm_head.weight
 *   loss = mean cross-entropy over targets ≠ −100  (+ the layers' auxiliary losses)
 *
 * Parameters, gradients and AdamW's two moments are four buffers of params.total
 * floats, laid out in ParamList order; checkpoints, the optimizer, clipping and (later)
 * the all-reduce are each one loop over them. Activations for backward live in one
 * arena sized at build time for a list of batch shapes (B, T) — the training batch and
 * one per evaluation length — each region as large as the largest shape needs; a batch
 * runs if some listed shape is at least as large in both B and T. Nothing is allocated in
 * a step. (Evaluating at 4× the training length with a quarter of the batch so needs no
 * more memory than training, where sizing for (batch, longest length) took 4×.)
 *
 * Device (train.device): on CUDA the working copies of parameters, gradients and
 * moments (dev_*), the arena, the scratch and the token buffers live on the GPU and every
 * layer runs its forward_cuda/backward_cuda; param_data, adam_m and adam_v stay as HOST
 * mirrors, synchronised explicitly (model_sync_to_host before a checkpoint is written,
 * model_sync_to_device after one is read), so checkpoints are the same files on both
 * devices. On the CPU the dev_* pointers equal the host buffers. */
#ifndef BRAID_MODEL_H
#define BRAID_MODEL_H
#include <stdint.h>
#include "../layers/layer.h"
#include "config.h"

#define MODEL_MAX_SHAPES (CONFIG_MAX_LIST + 1)   /* the training batch + one per eval length */

/* A batch shape the model is built to run: B sequences of T tokens. */
typedef struct ModelShape {
    int B, T;
} ModelShape;

typedef struct Block {
    Layer mixer;
    Layer ffn;               /* ffn.kind == NULL when the block has no FFN ('-') */
    int norm1, norm2;        /* ParamList indices of input_layernorm / pre_ff_layernorm */
    /* activations of the last forward, in the arena: */
    float *x_in;             /* (B,T,d) block input */
    float *norm1_out, *rstd1;
    float *h;                /* after the mixer's residual add */
    float *norm2_out, *rstd2;
    /* bf16 copies of norm1_out / norm2_out that the CUDA RMSNorm writes beside them for the
     * layers' bf16 matmuls (train.matmul_precision bf16 on CUDA; else NULL) */
    uint16_t *norm1_bf16, *norm2_bf16;
} Block;

typedef struct Model {
    Config cfg;
    DeviceKind device;
    int vocab, d, n_blocks;
    ModelShape shapes[MODEL_MAX_SHAPES];   /* what the arena is sized for */
    int n_shapes;
    size_t max_tokens;                     /* the largest B·T among them */
    ParamList params;
    float *param_data, *grad_data;   /* params.total floats each */
    float *adam_m, *adam_v;          /* params.total floats each, zero until the first step */
    /* the working buffers on the model's device (= the host ones on the CPU) */
    float *dev_params, *dev_grads, *dev_m, *dev_v;
    int *dev_tokens, *dev_targets;   /* CUDA: the batch, uploaded by model_forward */
    void *dev_ce_scratch;            /* CUDA: cross-entropy's reduction scratch */
    double *dev_norm;                /* CUDA: the gradient norm, then its partial sums */
    Block *blocks;
    int embed, final_norm, lm_head;  /* ParamList indices (lm_head = embed when tied) */
    /* arena-backed activations */
    float *arena;
    size_t arena_floats;
    float *x_final, *final_norm_out, *final_rstd, *logits, *dlogits;
    uint16_t *final_norm_bf16;   /* as the blocks' norm*_bf16: the LM head's bf16 input, or NULL */
    int norm_copies_written;     /* the last forward wrote those copies (they are current) */
    float *dx, *dh, *dtmp;           /* (B,T,d) gradient buffers */
    uint16_t *dx_bf16, *dh_bf16;     /* with the norm copies: bf16(dx), bf16(dh) as the norms'
                                      * backward writes them, the next layer's output gradient */
    float *scratch;
    size_t scratch_floats;
    Ctx ctx;
    /* last forward's statistics */
    double last_loss;                /* mean CE over valid targets (without aux) */
    double last_aux_loss;            /* sum of layers' aux losses */
    int last_valid, last_correct;
} Model;

/* Builds the model for batches up to max_B × max_T on the device cfg->train.device names
 * ("cuda"; "cpu" and an unresolved "auto" mean the CPU — see config_resolve_device):
 * declares parameters, allocates the buffers and the arena, and initialises parameters
 * from cfg->train.seed.
 * Returns 0, or -1 with err set (e.g. a layer kind not implemented yet). */
int model_build(Model *m, const Config *cfg, int max_B, int max_T, BraidError *err);
/* The same for several batch shapes (1 ≤ n_shapes ≤ MODEL_MAX_SHAPES, each B, T ≥ 1): a
 * forward (and backward) of B×T runs if B ≤ shapes[i].B and T ≤ shapes[i].T for some i. */
int model_build_shapes(Model *m, const Config *cfg, const ModelShape *shapes, int n_shapes, BraidError *err);
/* Whether the model's arena holds a B×T batch (see model_build_shapes). */
int model_fits_batch(const Model *m, int B, int T);
void model_free(Model *m);
/* Initialises all parameters (as model_build does) from seed. */
void model_init_params(Model *m, unsigned long seed);

/* Forward over tokens[B,T]; if targets is non-NULL computes the loss and accuracy into
 * last_*. Returns the mean loss (CE + aux) or 0 without targets. Logits stay in m->logits. */
double model_forward(Model *m, const int *tokens, const int *targets, int B, int T);
/* Backward of the last forward, for the objective loss_scale · (CE mean + Σ aux losses):
 * the trainer passes 1/grad_accum so accumulated micro-batches average. Accumulates
 * into grad_data (call model_zero_grad first). */
void model_backward(Model *m, const int *tokens, const int *targets, int B, int T, float loss_scale);
void model_zero_grad(Model *m);
/* sqrt(Σ g²) over all gradients, summed in double, on the model's device. */
double model_grad_norm(Model *m);

/* CUDA: parameters and AdamW moments device → host mirrors (before reading them on the
 * host, e.g. writing a checkpoint) and host → device (after changing the mirrors, e.g.
 * loading one). model_grads_to_host copies the gradients into grad_data. No-ops on CPU. */
void model_sync_to_host(Model *m);
void model_sync_to_device(Model *m);
void model_grads_to_host(Model *m);

size_t model_param_count(const Model *m);
/* Bytes of the activation arena and the layers' scratch, as allocated on the model's
 * device: what the activations cost for the batch shapes the model was built for (on CUDA
 * the matmuls' grow-only bf16 buffers and cuBLAS's workspace come on top). */
size_t model_activation_bytes(const Model *m);
/* FLOPs per token of a forward+backward pass (≈ 6·matmul params + attention terms). */
double model_flops_per_token(const Model *m, int T);
/* Prints the architecture (pattern, per-block kinds, parameter counts) to f. */
void model_print_summary(const Model *m, FILE *f);

#endif
