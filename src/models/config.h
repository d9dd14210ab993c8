/* config.h — the typed configuration every module reads, and the schema that fills it.
 *
 * A YAML file (libyaml) is read into (dotted key, scalar, file:line:column) entries;
 * `--set key=value` overrides are applied on top; each entry is looked up in the schema
 * table (config.c), which gives its type, default and valid range. Unknown keys, wrong
 * types, out-of-range values, missing files and malformed YAML each produce one error
 * naming file:line:column, the key and what was expected (with a did-you-mean for a
 * misspelt key). Then the layer pattern is resolved to its explicit form. */
#ifndef BRAID_CONFIG_H
#define BRAID_CONFIG_H
#include <stddef.h>
#include "../core/common.h"

#define CONFIG_MAX_LAYERS 64
#define CONFIG_STR 256
#define CONFIG_MAX_LIST 16

typedef struct AttentionConfig {
    int n_heads;            /* default 4 */
    int n_kv_heads;         /* 0 = n_heads (no grouping) */
    int window;             /* sliding-window size for 'W' layers, default 256 */
    char position[16];      /* "none" | "rope" */
    float rope_base;        /* 10000 */
} AttentionConfig;

typedef struct MambaConfig {
    int d_state;            /* N, 16 */
    int expand;             /* E, 2 */
    int d_conv;             /* k, 4 */
    int dt_rank;            /* R, 0 = ceil(d_model/16) */
    int inner_norms;        /* Jamba: RMSNorm on δ, B, C (0/1), default 0 */
    float dt_min, dt_max;   /* 0.001, 0.1 */
    int chunk;              /* scan chunk length for backward recompute, 64 */
} MambaConfig;

typedef struct GlaConfig {
    int n_heads;            /* 4 */
    float expand_k;         /* key dim = expand_k * d_model / n_heads... dk total = expand_k*d, 0.5 */
    float expand_v;         /* value dim total = expand_v * d, 1.0 */
    int gate_rank;          /* 16 */
    float gate_normalizer;  /* 16: α = sigmoid(.)^(1/gate_normalizer) */
    char mode[16];          /* "gla" | "retention" | "linear" */
    int chunk;              /* 64 */
} GlaConfig;

typedef struct FfnConfig {
    int hidden;             /* SwiGLU hidden size, 0 = 4*d_model rounded... default 0 -> 8/3 d rounded to 8 */
} FfnConfig;

typedef struct MoeConfig {
    int experts;            /* 8 */
    int top_k;              /* 2 */
    int renormalize;        /* 1: top-k weights renormalized to sum 1 (Mixtral) */
    float aux_loss_coef;    /* 0.01 */
    float z_loss_coef;      /* 0 */
    int hidden;             /* expert hidden, 0 = ffn.hidden */
} MoeConfig;

typedef struct ModelConfig {
    int vocab_size;         /* 0 = the task's vocab */
    int d_model;
    int n_layers;
    char pattern[CONFIG_MAX_LAYERS + 1];   /* resolved: one mixer symbol per block */
    char ffn[CONFIG_MAX_LAYERS + 1];       /* resolved: one ffn symbol per block ('-' none) */
    float attention_ratio;  /* used when pattern is empty; -1 = unset */
    int moe_every;          /* used when ffn is empty: block i is MoE if i % moe_every == moe_every-1 */
    char default_mixer;     /* mixer for non-attention blocks in ratio mode, 'M' */
    char default_ffn;       /* ffn for non-MoE blocks in ratio mode, 'D' */
    float norm_eps;         /* 1e-6 */
    int tie_embeddings;     /* 1 */
    float init_std;         /* 0.02 */
    AttentionConfig attention;
    MambaConfig mamba;
    GlaConfig gla;
    FfnConfig ffn_dense;    /* YAML key: model.dense */
    MoeConfig moe;
} ModelConfig;

typedef struct TaskConfig {
    char name[32];          /* "mqar" | "passkey" | "selective_copy" | "induction" | "text" | "external" */
    int vocab_size;         /* 256 */
    int seq_len;            /* 64 */
    int num_kv_pairs;       /* 4 */
    float power_a;          /* 0.01, Zoology's query-gap power law */
    int random_non_queries; /* 1 */
    char data_path[CONFIG_STR]; /* external datasets, text corpora */
    float needle_depth;     /* passkey: needle position as a fraction of the haystack; -1 = uniform */
    int copy_len;           /* selective_copy: tokens to copy; induction: repeated segment length; 16 */
    char split[16];         /* text: "train" (first 90%) | "heldout" (last 10%) */
} TaskConfig;

typedef struct TrainConfig {
    char device[16];        /* "cpu" | "cuda" | "auto" */
    char matmul_precision[8]; /* "fp32" | "tf32" | "bf16": what cuBLAS multiplies in (CUDA) */
    long seed;
    int steps;
    int batch_size;
    int grad_accum;
    float lr, min_lr_ratio;
    int warmup_steps;
    float weight_decay, beta1, beta2, adam_eps;
    float grad_clip;        /* 0 = off */
    int decay_embeddings, decay_norms;
    char nan_policy[16];    /* "stop" | "skip" */
    int log_every, eval_every, eval_examples;
    long eval_seed;
    int threads;            /* 0 = all cores */
    char run_dir[CONFIG_STR];
    int checkpoint_every, keep_checkpoints;
} TrainConfig;

typedef struct EvalConfig {
    int seq_lens[CONFIG_MAX_LIST];   /* extra lengths to evaluate at; count 0 = only task.seq_len */
    int n_seq_lens;
} EvalConfig;

typedef struct Config {
    char source[CONFIG_STR];   /* file it came from */
    ModelConfig model;
    TaskConfig task;
    TrainConfig train;
    EvalConfig eval;
} Config;

/* Defaults for every key. */
void config_defaults(Config *cfg);
/* Reads path (NULL = defaults only), applies `overrides` ("a.b=v" strings), validates,
 * resolves the layer pattern. Returns 0, or -1 with a message in err. */
int config_load(Config *cfg, const char *path, const char *const *overrides, int n_overrides,
                BraidError *err);
/* Same, from YAML text in memory (checkpoints store the resolved config this way);
 * `name` is used in error messages in place of a file name. */
int config_load_string(Config *cfg, const char *yaml_text, const char *name,
                       const char *const *overrides, int n_overrides, BraidError *err);
/* Writes the fully resolved config as YAML (every key, explicit pattern). */
void config_write_yaml(const Config *cfg, FILE *f);
/* Same into a malloc'd string the caller frees. */
char *config_to_yaml_string(const Config *cfg);
/* Resolves train.device for an executable: "auto" becomes "cuda" when this build has
 * the CUDA backend and a GPU is present, else "cpu"; "cuda" where it cannot run is an
 * error naming why (no backend in this build, or no device). The library itself (model_build)
 * treats an unresolved "auto" as "cpu", so tests and embedders get the reference path
 * unless they ask. Returns 0 or -1 with err. */
int config_resolve_device(Config *cfg, BraidError *err);
/* Lists warnings (e.g. no position source) to f; returns how many. */
int config_print_warnings(const Config *cfg, FILE *f);

/* Number of parameters-independent derived values */
int config_dt_rank(const Config *cfg);
int config_ffn_hidden(const Config *cfg);
int config_moe_hidden(const Config *cfg);

#endif
