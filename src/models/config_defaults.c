/* config_defaults.c — the default value of every config key, and the values derived
 * from them. The schema in config.c documents each key's range and meaning. */
#include <math.h>
#include <string.h>
#include "config.h"

void config_defaults(Config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    ModelConfig *m = &cfg->model;
    m->vocab_size = 0;
    m->d_model = 64;
    m->n_layers = 2;
    m->attention_ratio = -1.0f;
    m->moe_every = 0;
    m->default_mixer = 'M';
    m->default_ffn = 'D';
    m->norm_eps = 1e-6f;
    m->tie_embeddings = 1;
    m->init_std = 0.02f;
    m->attention = (AttentionConfig){.n_heads = 4, .n_kv_heads = 0, .window = 256, .rope_base = 10000.0f};
    strcpy(m->attention.position, "none");
    m->mamba = (MambaConfig){.d_state = 16, .expand = 2, .d_conv = 4, .dt_rank = 0, .inner_norms = 0,
                             .dt_min = 0.001f, .dt_max = 0.1f, .chunk = 64};
    m->gla = (GlaConfig){.n_heads = 4, .expand_k = 0.5f, .expand_v = 1.0f, .gate_rank = 16,
                         .gate_normalizer = 16.0f, .chunk = 64};
    strcpy(m->gla.mode, "gla");
    m->ffn_dense.hidden = 0;
    m->moe = (MoeConfig){.experts = 8, .top_k = 2, .renormalize = 1, .aux_loss_coef = 0.01f,
                         .z_loss_coef = 0.0f, .hidden = 0};

    TaskConfig *t = &cfg->task;
    strcpy(t->name, "mqar");
    t->vocab_size = 256;
    t->seq_len = 64;
    t->num_kv_pairs = 4;
    t->power_a = 0.01f;
    t->random_non_queries = 1;
    t->needle_depth = -1.0f;
    t->copy_len = 16;
    strcpy(t->split, "train");

    TrainConfig *tr = &cfg->train;
    strcpy(tr->device, "auto");   /* the executables resolve it: a GPU when present */
    strcpy(tr->matmul_precision, "fp32");
    tr->seed = 1;
    tr->steps = 1000;
    tr->batch_size = 64;
    tr->grad_accum = 1;
    tr->lr = 1e-3f;
    tr->min_lr_ratio = 0.1f;
    tr->warmup_steps = 100;
    tr->weight_decay = 0.1f;
    tr->beta1 = 0.9f;
    tr->beta2 = 0.95f;
    tr->adam_eps = 1e-8f;
    tr->grad_clip = 1.0f;
    tr->decay_embeddings = 0;
    tr->decay_norms = 0;
    strcpy(tr->nan_policy, "stop");
    tr->log_every = 10;
    tr->eval_every = 250;
    tr->eval_examples = 512;
    tr->eval_seed = 1000003;
    tr->threads = 0;
    strcpy(tr->run_dir, "runs/default");
    tr->checkpoint_every = 0;
    tr->keep_checkpoints = 2;
}

int config_dt_rank(const Config *cfg) {
    return cfg->model.mamba.dt_rank > 0 ? cfg->model.mamba.dt_rank : (cfg->model.d_model + 15) / 16;
}

/* SwiGLU hidden size: 8/3·d (the parameter count of a 4·d GELU MLP), rounded up to 8. */
int config_ffn_hidden(const Config *cfg) {
    if (cfg->model.ffn_dense.hidden > 0) return cfg->model.ffn_dense.hidden;
    int h = (8 * cfg->model.d_model + 2) / 3;
    return (h + 7) / 8 * 8;
}

int config_moe_hidden(const Config *cfg) {
    return cfg->model.moe.hidden > 0 ? cfg->model.moe.hidden : config_ffn_hidden(cfg);
}
