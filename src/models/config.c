/* config.c — YAML configs parsed into the typed Config through one schema table.
 *
 * Three stages:
 *  1. read: libyaml's event API turns the text into Entries: a dotted key path, the
 *     scalar text (or a sequence of scalars), and the 1-based line:column of the key and
 *     of the value. Nested mappings flatten to dotted paths (model.attention.n_heads).
 *     Duplicate keys are rejected here, where both positions are known.
 *  2. apply: each entry (the file's first, then the `--set key=value` overrides) is
 *     looked up in `schema` below — the single source of truth for key names, types,
 *     ranges and help — parsed, range-checked and stored through its offsetof in Config.
 *  3. resolve and validate: the layer pattern is made explicit (DESIGN.md "Layer
 *     patterns"), then the rules that tie keys together are checked.
 * Every error is one message naming file:line:column (or the --set text), the key, what
 * was expected and what was found; the library never prints or exits.
 *
 * Surprising on purpose:
 *  - A resolved Config is canonical: resolution consumes the ratio keys (attention_ratio
 *    goes back to -1, moe_every to 0) and fills model.vocab_size, so one model has one
 *    representation, and writing a Config and reading it back gives identical bytes.
 *  - config_load works on a copy: on error, *cfg is left as it was.
 *  - Pattern symbols are checked through the registry (layer_kind_by_symbol), so a new
 *    kind needs no edit here. "Is this kind built?" is checked last, so a config's own
 *    inconsistencies are reported even while a kind is still a placeholder. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "config.h"
#include "../core/device.h"
#include "../layers/layer.h"

/* ------------------------------------------------------------------------------------ */
/* The schema: one row per key.                                                          */

typedef enum {
    KEY_INT,       /* int field, range [min, max] */
    KEY_LONG,      /* long field, range [min, max] */
    KEY_FLOAT,     /* float field, range with open/closed ends */
    KEY_BOOL,      /* int field, 0/1 */
    KEY_STRING,    /* char[size] */
    KEY_ENUM,      /* char[size], one of `allowed` ("a|b|c") */
    KEY_SYMBOL,    /* char: one layer-kind symbol of `role` ('-' = none for LAYER_FFN) */
    KEY_PATTERN,   /* char[size]: a string of symbols of `role`, at most CONFIG_MAX_LAYERS */
    KEY_INT_LIST,  /* int[size / sizeof(int)] with its count at count_offset */
} KeyType;

typedef struct SchemaKey {
    const char *key;          /* dotted YAML path */
    KeyType type;
    size_t offset;            /* offsetof the field in Config */
    size_t size;              /* sizeof the field */
    size_t count_offset;      /* KEY_INT_LIST: offsetof its element count */
    long long min, max;       /* KEY_INT, KEY_LONG, and KEY_INT_LIST elements */
    double fmin, fmax;        /* KEY_FLOAT */
    char fmin_bracket, fmax_bracket;  /* '(' / ')' open, '[' / ']' closed */
    const char *allowed;      /* KEY_ENUM */
    LayerRole role;           /* KEY_SYMBOL, KEY_PATTERN */
    int resolution_input;     /* consumed by pattern resolution: not written back */
    const char *help;
} SchemaKey;

#define FIELD(f) .offset = offsetof(Config, f), .size = sizeof(((Config *)0)->f)
#define INT_KEY(k, f, lo, hi, h) .key = k, .type = KEY_INT, FIELD(f), .min = lo, .max = hi, .help = h
#define LONG_KEY(k, f, lo, hi, h) .key = k, .type = KEY_LONG, FIELD(f), .min = lo, .max = hi, .help = h
#define FLOAT_KEY(k, f, lb, lo, hi, hb, h) .key = k, .type = KEY_FLOAT, FIELD(f), \
    .fmin_bracket = lb, .fmin = lo, .fmax = hi, .fmax_bracket = hb, .help = h
#define BOOL_KEY(k, f, h) .key = k, .type = KEY_BOOL, FIELD(f), .help = h
#define STRING_KEY(k, f, h) .key = k, .type = KEY_STRING, FIELD(f), .help = h
#define ENUM_KEY(k, f, values, h) .key = k, .type = KEY_ENUM, FIELD(f), .allowed = values, .help = h
#define SYMBOL_KEY(k, f, r, h) .key = k, .type = KEY_SYMBOL, FIELD(f), .role = r, .help = h
#define PATTERN_KEY(k, f, r, h) .key = k, .type = KEY_PATTERN, FIELD(f), .role = r, .help = h
#define INT_LIST_KEY(k, f, n, lo, hi, h) .key = k, .type = KEY_INT_LIST, FIELD(f), \
    .count_offset = offsetof(Config, n), .min = lo, .max = hi, .help = h

#define BIG 2000000000   /* step counts and the like: any sane value fits an int */

/* Rows are grouped by section (all model.attention.* together, ...): the YAML writer
 * opens a section when the prefix changes, so a section must not reappear later. */
static const SchemaKey schema[] = {
    {INT_KEY("model.vocab_size", model.vocab_size, 0, 16777216, "output vocabulary; 0 = task.vocab_size")},
    {INT_KEY("model.d_model", model.d_model, 1, 65536, "model width d")},
    {INT_KEY("model.n_layers", model.n_layers, 1, CONFIG_MAX_LAYERS, "blocks; the length of model.pattern when only that is given")},
    {PATTERN_KEY("model.pattern", model.pattern, LAYER_MIXER, "mixer per block: M mamba, A attention, W sliding-window, G gla")},
    {PATTERN_KEY("model.ffn", model.ffn, LAYER_FFN, "FFN per block: D dense, E MoE, - none")},
    {FLOAT_KEY("model.attention_ratio", model.attention_ratio, '[', 0, 1, ']', "fraction of attention blocks, spread evenly (when model.pattern is empty)"), .resolution_input = 1},
    {INT_KEY("model.moe_every", model.moe_every, 0, CONFIG_MAX_LAYERS, "block i is MoE if i % k == k-1 (when model.ffn is empty); 0 = none"), .resolution_input = 1},
    {SYMBOL_KEY("model.default_mixer", model.default_mixer, LAYER_MIXER, "mixer of the non-attention blocks in ratio form")},
    {SYMBOL_KEY("model.default_ffn", model.default_ffn, LAYER_FFN, "FFN of the non-MoE blocks in ratio form")},
    {FLOAT_KEY("model.norm_eps", model.norm_eps, '(', 0, 1, ']', "RMSNorm epsilon")},
    {BOOL_KEY("model.tie_embeddings", model.tie_embeddings, "LM head shares the embedding matrix")},
    {FLOAT_KEY("model.init_std", model.init_std, '(', 0, 1, ']', "std of normal-initialised weights")},

    {INT_KEY("model.attention.n_heads", model.attention.n_heads, 1, 4096, "query heads; head_dim = d_model / n_heads")},
    {INT_KEY("model.attention.n_kv_heads", model.attention.n_kv_heads, 0, 4096, "key/value heads (grouped-query); 0 = n_heads")},
    {INT_KEY("model.attention.window", model.attention.window, 1, 16777216, "sliding-window size of W blocks")},
    {ENUM_KEY("model.attention.position", model.attention.position, "none|rope", "positional encoding of attention blocks")},
    {FLOAT_KEY("model.attention.rope_base", model.attention.rope_base, '(', 1, 1e9, ']', "RoPE frequency base")},

    {INT_KEY("model.mamba.d_state", model.mamba.d_state, 1, 4096, "SSM state size N")},
    {INT_KEY("model.mamba.expand", model.mamba.expand, 1, 16, "inner width = expand * d_model")},
    {INT_KEY("model.mamba.d_conv", model.mamba.d_conv, 1, 64, "causal depthwise conv kernel")},
    {INT_KEY("model.mamba.dt_rank", model.mamba.dt_rank, 0, 65536, "rank of the dt projection; 0 = ceil(d_model / 16)")},
    {BOOL_KEY("model.mamba.inner_norms", model.mamba.inner_norms, "Jamba: RMSNorm on dt, B and C")},
    {FLOAT_KEY("model.mamba.dt_min", model.mamba.dt_min, '(', 0, 1, ']', "dt init range, low end")},
    {FLOAT_KEY("model.mamba.dt_max", model.mamba.dt_max, '(', 0, 1, ']', "dt init range, high end")},
    {INT_KEY("model.mamba.chunk", model.mamba.chunk, 1, 65536, "scan chunk for the backward recompute")},

    {INT_KEY("model.gla.n_heads", model.gla.n_heads, 1, 4096, "GLA heads")},
    {FLOAT_KEY("model.gla.expand_k", model.gla.expand_k, '(', 0, 16, ']', "total key dim = expand_k * d_model")},
    {FLOAT_KEY("model.gla.expand_v", model.gla.expand_v, '(', 0, 16, ']', "total value dim = expand_v * d_model")},
    {INT_KEY("model.gla.gate_rank", model.gla.gate_rank, 1, 65536, "rank of the low-rank gate projection")},
    {FLOAT_KEY("model.gla.gate_normalizer", model.gla.gate_normalizer, '(', 0, 1024, ']', "alpha = sigmoid(.)^(1/gate_normalizer)")},
    {ENUM_KEY("model.gla.mode", model.gla.mode, "gla|retention|linear", "gated, fixed decay per head, or none")},
    {INT_KEY("model.gla.chunk", model.gla.chunk, 1, 65536, "chunk length of the chunked kernel")},

    {INT_KEY("model.dense.hidden", model.ffn_dense.hidden, 0, 1048576, "SwiGLU hidden size; 0 = 8/3 d_model rounded up to 8")},

    {INT_KEY("model.moe.experts", model.moe.experts, 1, 4096, "experts per MoE block")},
    {INT_KEY("model.moe.top_k", model.moe.top_k, 1, 4096, "experts per token")},
    {BOOL_KEY("model.moe.renormalize", model.moe.renormalize, "top-k weights renormalised to sum 1 (Mixtral)")},
    {FLOAT_KEY("model.moe.aux_loss_coef", model.moe.aux_loss_coef, '[', 0, 100, ']', "load-balancing loss weight")},
    {FLOAT_KEY("model.moe.z_loss_coef", model.moe.z_loss_coef, '[', 0, 100, ']', "router z-loss weight")},
    {INT_KEY("model.moe.hidden", model.moe.hidden, 0, 1048576, "expert hidden size; 0 = model.dense's")},

    {ENUM_KEY("task.name", task.name, "mqar|passkey|selective_copy|induction|text|external", "synthetic task; text: bytes of task.data_path; external: examples from task.data_path (HDF5)")},
    {INT_KEY("task.vocab_size", task.vocab_size, 2, 16777216, "task vocabulary")},
    {INT_KEY("task.seq_len", task.seq_len, 1, 16777216, "training sequence length")},
    {INT_KEY("task.num_kv_pairs", task.num_kv_pairs, 1, 1048576, "MQAR key-value pairs per sequence")},
    {FLOAT_KEY("task.power_a", task.power_a, '(', 0, 10, ']', "Zoology's power law of query gaps")},
    {BOOL_KEY("task.random_non_queries", task.random_non_queries, "fill non-query positions with random tokens")},
    {STRING_KEY("task.data_path", task.data_path, "dataset file or text corpus")},
    {FLOAT_KEY("task.needle_depth", task.needle_depth, '[', -1, 1, ']', "passkey: needle depth in [0, 1] (0 = start of the haystack); -1 = uniform at random")},
    {INT_KEY("task.copy_len", task.copy_len, 1, 1048576, "selective_copy: tokens to copy; induction: length of the repeated segment")},
    {ENUM_KEY("task.split", task.split, "train|heldout", "text: train on the first 90% of the corpus, or score the held-out last 10%")},

    {ENUM_KEY("train.device", train.device, "cpu|cuda|auto", "where to train: auto = a GPU when present")},
    {ENUM_KEY("train.matmul_precision", train.matmul_precision, "fp32|tf32|bf16",
              "CUDA matmuls: fp32 exact; tf32 rounds their inputs to 10 mantissa bits, bf16 converts them to bfloat16 (7 bits) where every dimension is a multiple of 8 and at least 64, TF32 elsewhere; attention's tile products follow (TF32 or bf16 tensor cores); float32 storage, accumulation and master weights either way")},
    {LONG_KEY("train.seed", train.seed, 0, LONG_MAX, "parameter init and data seed")},
    {INT_KEY("train.steps", train.steps, 0, BIG, "optimizer steps")},
    {INT_KEY("train.batch_size", train.batch_size, 1, 1048576, "sequences per micro-batch")},
    {INT_KEY("train.grad_accum", train.grad_accum, 1, 65536, "micro-batches per step")},
    {FLOAT_KEY("train.lr", train.lr, '(', 0, 10, ']', "peak learning rate")},
    {FLOAT_KEY("train.min_lr_ratio", train.min_lr_ratio, '[', 0, 1, ']', "final lr / peak lr (cosine)")},
    {INT_KEY("train.warmup_steps", train.warmup_steps, 0, BIG, "linear warmup steps")},
    {FLOAT_KEY("train.weight_decay", train.weight_decay, '[', 0, 10, ']', "AdamW decoupled weight decay")},
    {FLOAT_KEY("train.beta1", train.beta1, '[', 0, 1, ')', "AdamW first-moment decay")},
    {FLOAT_KEY("train.beta2", train.beta2, '[', 0, 1, ')', "AdamW second-moment decay")},
    {FLOAT_KEY("train.adam_eps", train.adam_eps, '(', 0, 1, ']', "AdamW epsilon")},
    {FLOAT_KEY("train.grad_clip", train.grad_clip, '[', 0, 1e6, ']', "global gradient-norm clip; 0 = off")},
    {BOOL_KEY("train.decay_embeddings", train.decay_embeddings, "apply weight decay to embeddings")},
    {BOOL_KEY("train.decay_norms", train.decay_norms, "apply weight decay to norm weights")},
    {ENUM_KEY("train.nan_policy", train.nan_policy, "stop|skip", "on a non-finite loss or gradient")},
    {INT_KEY("train.log_every", train.log_every, 1, BIG, "steps between log lines")},
    {INT_KEY("train.eval_every", train.eval_every, 0, BIG, "steps between evaluations; 0 = only at the end")},
    {INT_KEY("train.eval_examples", train.eval_examples, 1, 100000000, "sequences per evaluation")},
    {LONG_KEY("train.eval_seed", train.eval_seed, 0, LONG_MAX, "seed of the evaluation data")},
    {INT_KEY("train.threads", train.threads, 0, 4096, "OpenMP threads; 0 = all cores")},
    {STRING_KEY("train.run_dir", train.run_dir, "where logs and checkpoints go")},
    {INT_KEY("train.checkpoint_every", train.checkpoint_every, 0, BIG, "steps between checkpoints; 0 = only at the end")},
    {INT_KEY("train.keep_checkpoints", train.keep_checkpoints, 0, 1000000, "checkpoints kept; 0 = all")},

    {INT_LIST_KEY("eval.seq_lens", eval.seq_lens, eval.n_seq_lens, 1, 16777216, "extra lengths to evaluate at")},
};
#define N_SCHEMA ((int)(sizeof schema / sizeof schema[0]))

static int schema_index(const char *key) {
    for (int i = 0; i < N_SCHEMA; i++)
        if (strcmp(schema[i].key, key) == 0) return i;
    return -1;
}

/* 1 if `path` is a section: a proper prefix, ending at a '.', of some schema key. */
static int is_section(const char *path) {
    size_t n = strlen(path);
    for (int i = 0; i < N_SCHEMA; i++)
        if (strncmp(schema[i].key, path, n) == 0 && schema[i].key[n] == '.') return 1;
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Small string helpers.                                                                  */

/* Appends printf output to buf (size n), never overflowing. */
static void appendf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t n, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, n - used, fmt, ap);
    va_end(ap);
}

static char *copy_string(const char *s, size_t n) {
    char *p = braid_malloc(n + 1, "config string");
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* The found value as shown in an error: quoted, long values cut with "...". */
static void quote_found(char *buf, size_t n, const char *text) {
    if (strlen(text) > 60) snprintf(buf, n, "'%.57s...'", text);
    else snprintf(buf, n, "'%s'", text);
}

/* "M (mamba), A (attention), ..." for the kinds of one role; FFN adds "- (none)". */
static void list_symbols(LayerRole role, char *buf, size_t n) {
    buf[0] = 0;
    for (int i = 0; i < layer_kind_count(); i++) {
        const LayerKind *k = layer_kind_at(i);
        if (k->role != role) continue;
        appendf(buf, n, "%s%c (%s)", buf[0] ? ", " : "", k->symbol, k->name);
    }
    if (role == LAYER_FFN) appendf(buf, n, "%s- (none)", buf[0] ? ", " : "");
}

static int symbol_valid(LayerRole role, char symbol) {
    if (role == LAYER_FFN && symbol == '-') return 1;
    if (symbol == 0) return 0;
    const LayerKind *k = layer_kind_by_symbol(symbol);
    return k && k->role == role;
}

/* What a key accepts, as the "expected ..." part of an error. */
static void describe_expected(const SchemaKey *k, char *buf, size_t n) {
    char symbols[512];
    switch (k->type) {
    case KEY_INT:
    case KEY_LONG:
        snprintf(buf, n, "an integer in [%lld, %lld]", k->min, k->max);
        break;
    case KEY_FLOAT:
        snprintf(buf, n, "a number in %c%g, %g%c", k->fmin_bracket, k->fmin, k->fmax, k->fmax_bracket);
        break;
    case KEY_BOOL:
        snprintf(buf, n, "a boolean (true/false, yes/no, 1/0)");
        break;
    case KEY_STRING:
        snprintf(buf, n, "a string of at most %zu characters", k->size - 1);
        break;
    case KEY_ENUM: {
        snprintf(buf, n, "one of ");
        for (const char *p = k->allowed; *p; p++) appendf(buf, n, "%s", *p == '|' ? ", " : (char[2]){*p, 0});
        break;
    }
    case KEY_SYMBOL:
        list_symbols(k->role, symbols, sizeof symbols);
        snprintf(buf, n, "one %s symbol: %s", k->role == LAYER_MIXER ? "mixer" : "FFN", symbols);
        break;
    case KEY_PATTERN:
        list_symbols(k->role, symbols, sizeof symbols);
        snprintf(buf, n, "a string of at most %d %s symbols, one per block: %s", CONFIG_MAX_LAYERS,
                 k->role == LAYER_MIXER ? "mixer" : "FFN", symbols);
        break;
    case KEY_INT_LIST:
        snprintf(buf, n, "a list of at most %zu integers in [%lld, %lld]", k->size / sizeof(int), k->min, k->max);
        break;
    }
}

/* ------------------------------------------------------------------------------------ */
/* Entries: what the YAML reader produces and the --set parser adds.                      */

typedef enum { SHAPE_SCALAR, SHAPE_SEQUENCE, SHAPE_MAPPING } Shape;

static const char *shape_name(Shape s) {
    return s == SHAPE_SCALAR ? "a scalar" : s == SHAPE_SEQUENCE ? "a sequence" : "a mapping";
}

typedef struct Item {          /* one element of a sequence */
    char *text;                /* NULL when the element is itself a sequence or mapping */
    Shape shape;
    int line, col;
} Item;

typedef struct Entry {
    char *key;                 /* dotted path */
    Shape shape;
    char *text;                /* SHAPE_SCALAR: the scalar text */
    Item *items;               /* SHAPE_SEQUENCE */
    int n_items, items_capacity;
    int key_line, key_col;     /* 1-based marks of the key ... */
    int line, col;             /* ... and of the value */
    const char *override;      /* the "--set" text; NULL for entries from the file */
} Entry;

typedef struct EntryList {
    Entry *items;
    int count, capacity;
} EntryList;

static Entry *entry_add(EntryList *list) {
    if (list->count == list->capacity) {
        int capacity = list->capacity ? 2 * list->capacity : 32;
        Entry *grown = braid_malloc((size_t)capacity * sizeof *grown, "config entries");
        if (list->count) memcpy(grown, list->items, (size_t)list->count * sizeof *grown);
        braid_free(list->items);
        list->items = grown;
        list->capacity = capacity;
    }
    Entry *e = &list->items[list->count++];
    memset(e, 0, sizeof *e);
    return e;
}

static void entry_list_free(EntryList *list) {
    for (int i = 0; i < list->count; i++) {
        Entry *e = &list->items[i];
        braid_free(e->key);
        braid_free(e->text);
        for (int j = 0; j < e->n_items; j++) braid_free(e->items[j].text);
        braid_free(e->items);
    }
    braid_free(list->items);
    memset(list, 0, sizeof *list);
}

/* Where an entry's value (at_key = 0) or key (at_key = 1) is, for error messages. */
static void entry_where(char *buf, size_t n, const char *name, const Entry *e, int at_key) {
    if (e->override) snprintf(buf, n, "--set %s", e->override);
    else snprintf(buf, n, "%s:%d:%d", name, at_key ? e->key_line : e->line, at_key ? e->key_col : e->col);
}

/* ------------------------------------------------------------------------------------ */
/* Stage 1: YAML text → entries (libyaml event API).                                      */

#define PATH_MAX_LEN 256

typedef struct Reader {
    yaml_parser_t parser;
    const char *name;
    EntryList *entries;
    BraidError *err;
} Reader;

static int reader_yaml_error(Reader *r) {
    yaml_parser_t *p = &r->parser;
    if (p->error == YAML_READER_ERROR)
        return error_set(r->err, "%s: malformed YAML: %s at byte %zu", r->name,
                         p->problem ? p->problem : "unreadable input", p->problem_offset);
    if (p->error == YAML_MEMORY_ERROR) BRAID_DIE("libyaml ran out of memory reading %s", r->name);
    char context[256] = "";
    if (p->context)
        snprintf(context, sizeof context, " (%s at line %zu, column %zu)", p->context,
                 p->context_mark.line + 1, p->context_mark.column + 1);
    return error_set(r->err, "%s:%zu:%zu: malformed YAML: %s%s", r->name, p->problem_mark.line + 1,
                     p->problem_mark.column + 1, p->problem ? p->problem : "parse error", context);
}

static int reader_next(Reader *r, yaml_event_t *event) {
    if (!yaml_parser_parse(&r->parser, event)) return reader_yaml_error(r);
    return 0;
}

/* A plain ~, null or empty scalar is YAML's null: it reads as the empty text. */
static const char *scalar_text(const yaml_event_t *event) {
    const char *text = (const char *)event->data.scalar.value;
    if (event->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        (strcmp(text, "~") == 0 || strcmp(text, "null") == 0 || strcmp(text, "Null") == 0 ||
         strcmp(text, "NULL") == 0))
        return "";
    return text;
}

/* Consumes the rest of a nested sequence/mapping whose start event was just read. */
static int reader_skip_node(Reader *r) {
    int depth = 1;
    while (depth > 0) {
        yaml_event_t event;
        if (reader_next(r, &event)) return -1;
        if (event.type == YAML_SEQUENCE_START_EVENT || event.type == YAML_MAPPING_START_EVENT) depth++;
        if (event.type == YAML_SEQUENCE_END_EVENT || event.type == YAML_MAPPING_END_EVENT) depth--;
        yaml_event_delete(&event);
    }
    return 0;
}

static int reader_alias_error(Reader *r, const yaml_event_t *event) {
    return error_set(r->err, "%s:%zu:%zu: aliases (*%s) are not supported in braid configs; write the value out",
                     r->name, event->start_mark.line + 1, event->start_mark.column + 1,
                     (const char *)event->data.alias.anchor);
}

/* Reads the elements of a sequence (its start event already read) into e->items. */
static int reader_sequence(Reader *r, Entry *e) {
    for (;;) {
        yaml_event_t event;
        if (reader_next(r, &event)) return -1;
        if (event.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&event);
            return 0;
        }
        if (event.type == YAML_ALIAS_EVENT) {
            reader_alias_error(r, &event);
            yaml_event_delete(&event);
            return -1;
        }
        if (e->n_items == e->items_capacity) {
            int capacity = e->items_capacity ? 2 * e->items_capacity : 8;
            Item *grown = braid_malloc((size_t)capacity * sizeof *grown, "config sequence");
            if (e->n_items) memcpy(grown, e->items, (size_t)e->n_items * sizeof *grown);
            braid_free(e->items);
            e->items = grown;
            e->items_capacity = capacity;
        }
        Item *item = &e->items[e->n_items++];
        item->line = (int)event.start_mark.line + 1;
        item->col = (int)event.start_mark.column + 1;
        item->text = NULL;
        int nested = event.type != YAML_SCALAR_EVENT;
        if (!nested) {
            item->shape = SHAPE_SCALAR;
            const char *text = scalar_text(&event);
            item->text = copy_string(text, strlen(text));
        } else {
            item->shape = event.type == YAML_SEQUENCE_START_EVENT ? SHAPE_SEQUENCE : SHAPE_MAPPING;
        }
        yaml_event_delete(&event);
        if (nested && reader_skip_node(r)) return -1;
    }
}

/* Reads a mapping's key/value pairs (its start event already read); keys become
 * prefix.key. Each pair becomes one entry; a mapping value also recurses. */
static int reader_mapping(Reader *r, const char *prefix) {
    for (;;) {
        yaml_event_t key_event;
        if (reader_next(r, &key_event)) return -1;
        if (key_event.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&key_event);
            return 0;
        }
        int key_line = (int)key_event.start_mark.line + 1, key_col = (int)key_event.start_mark.column + 1;
        if (key_event.type != YAML_SCALAR_EVENT) {
            yaml_event_delete(&key_event);
            return error_set(r->err, "%s:%d:%d: a key must be a plain name (under '%s'), got a %s",
                             r->name, key_line, key_col, prefix[0] ? prefix : "the top level",
                             key_event.type == YAML_ALIAS_EVENT ? "alias" : "sequence or mapping");
        }
        char path[PATH_MAX_LEN];
        int length = snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "",
                              (const char *)key_event.data.scalar.value);
        yaml_event_delete(&key_event);
        if (length >= (int)sizeof path)
            return error_set(r->err, "%s:%d:%d: key path '%.60s...' is too long", r->name, key_line, key_col, path);
        for (int i = 0; i < r->entries->count; i++) {
            const Entry *previous = &r->entries->items[i];
            if (strcmp(previous->key, path) == 0)
                return error_set(r->err, "%s:%d:%d: duplicate key '%s' (first given at line %d, column %d)",
                                 r->name, key_line, key_col, path, previous->key_line, previous->key_col);
        }

        yaml_event_t value;
        if (reader_next(r, &value)) return -1;
        if (value.type == YAML_ALIAS_EVENT) {
            reader_alias_error(r, &value);
            yaml_event_delete(&value);
            return -1;
        }
        Entry *e = entry_add(r->entries);
        e->key = copy_string(path, strlen(path));
        e->key_line = key_line;
        e->key_col = key_col;
        e->line = (int)value.start_mark.line + 1;
        e->col = (int)value.start_mark.column + 1;
        yaml_event_type_t type = value.type;
        if (type == YAML_SCALAR_EVENT) {
            e->shape = SHAPE_SCALAR;
            const char *text = scalar_text(&value);
            e->text = copy_string(text, strlen(text));
        }
        yaml_event_delete(&value);
        /* e may move when the list grows: recurse with the path, not the entry. */
        if (type == YAML_SEQUENCE_START_EVENT) {
            e->shape = SHAPE_SEQUENCE;
            if (reader_sequence(r, e)) return -1;
        } else if (type == YAML_MAPPING_START_EVENT) {
            e->shape = SHAPE_MAPPING;
            if (reader_mapping(r, path)) return -1;
        }
    }
}

/* Reads one YAML document (a mapping at the top, or nothing) into entries. */
static int read_yaml(const char *text, size_t length, const char *name, EntryList *entries, BraidError *err) {
    Reader r = {.name = name, .entries = entries, .err = err};
    if (!yaml_parser_initialize(&r.parser)) BRAID_DIE("cannot initialise libyaml");
    yaml_parser_set_input_string(&r.parser, (const unsigned char *)text, length);
    int status = 0, documents = 0, done = 0;
    while (!done && status == 0) {
        yaml_event_t event;
        if (reader_next(&r, &event)) { status = -1; break; }
        int line = (int)event.start_mark.line + 1, col = (int)event.start_mark.column + 1;
        switch (event.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++documents > 1)
                status = error_set(err, "%s:%d:%d: a config is one YAML document, found a second one", name, line, col);
            break;
        case YAML_MAPPING_START_EVENT:
            status = reader_mapping(&r, "");
            break;
        case YAML_SCALAR_EVENT:
            if (scalar_text(&event)[0]) {
                char found[80];
                quote_found(found, sizeof found, scalar_text(&event));
                status = error_set(err, "%s:%d:%d: expected a mapping of keys (model: ..., train: ...) at the top level, got a scalar %s",
                                   name, line, col, found);
            }
            break;   /* an empty document is an empty config */
        case YAML_SEQUENCE_START_EVENT:
            status = error_set(err, "%s:%d:%d: expected a mapping of keys (model: ..., train: ...) at the top level, got a sequence",
                               name, line, col);
            break;
        case YAML_ALIAS_EVENT:
            status = reader_alias_error(&r, &event);
            break;
        default:   /* stream start, document end */
            break;
        }
        yaml_event_delete(&event);
    }
    yaml_parser_delete(&r.parser);
    return status;
}

/* "key=value" → one scalar entry. */
static int parse_override(const char *text, EntryList *entries, BraidError *err) {
    const char *equals = strchr(text, '=');
    if (!equals) return error_set(err, "--set %s: expected key=value (no '=' found)", text);
    const char *key = text, *key_end = equals;
    while (key < key_end && isspace((unsigned char)*key)) key++;
    while (key_end > key && isspace((unsigned char)key_end[-1])) key_end--;
    if (key == key_end) return error_set(err, "--set %s: expected key=value (the key is empty)", text);
    const char *value = equals + 1, *value_end = value + strlen(value);
    while (*value && isspace((unsigned char)*value)) value++;
    while (value_end > value && isspace((unsigned char)value_end[-1])) value_end--;
    Entry *e = entry_add(entries);
    e->key = copy_string(key, (size_t)(key_end - key));
    e->shape = SHAPE_SCALAR;
    e->text = copy_string(value, (size_t)(value_end - value));
    e->override = text;
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Stage 2: entries → Config fields.                                                      */

/* Where each key was last set, for cross-key messages and "was n_layers given?". */
typedef struct Origins {
    int set[N_SCHEMA];
    char where[N_SCHEMA][CONFIG_STR + 80];
} Origins;

/* Optimal-string-alignment distance (a transposition costs 1): "d_modl" is one edit
 * from "d_model", "modle" one from "model". */
static int edit_distance(const char *a, const char *b) {
    enum { MAX = 96 };
    int n = (int)strlen(a), m = (int)strlen(b);
    if (n >= MAX || m >= MAX) return INT_MAX;
    static _Thread_local int d[MAX + 1][MAX + 1];
    for (int i = 0; i <= n; i++) d[i][0] = i;
    for (int j = 0; j <= m; j++) d[0][j] = j;
    for (int i = 1; i <= n; i++)
        for (int j = 1; j <= m; j++) {
            int cost = a[i - 1] != b[j - 1];
            int best = imin(d[i - 1][j] + 1, imin(d[i][j - 1] + 1, d[i - 1][j - 1] + cost));
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) best = imin(best, d[i - 2][j - 2] + 1);
            d[i][j] = best;
        }
    return d[n][m];
}

/* Candidate names for a suggestion: schema keys for a value, sections for a mapping.
 * Returns the i-th candidate into buf, 0 when there are no more. */
static int candidate_at(int want_sections, int i, char *buf, size_t n) {
    if (!want_sections) {
        if (i >= N_SCHEMA) return 0;
        snprintf(buf, n, "%s", schema[i].key);
        return 1;
    }
    /* sections: every prefix of every key ending at a '.', enumerated with repeats
     * (harmless for a nearest match) */
    int seen = 0;
    for (int k = 0; k < N_SCHEMA; k++)
        for (const char *dot = strchr(schema[k].key, '.'); dot; dot = strchr(dot + 1, '.'))
            if (seen++ == i) {
                snprintf(buf, n, "%.*s", (int)(dot - schema[k].key), schema[k].key);
                return 1;
            }
    return 0;
}

static const char *leaf_of(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

/* An unknown key: suggest the nearest name, or list what the enclosing section holds. */
static int unknown_key_error(const char *where, const char *key, int is_mapping, BraidError *err) {
    char best[PATH_MAX_LEN] = "", candidate[PATH_MAX_LEN];
    int best_distance = INT_MAX;
    for (int i = 0; candidate_at(is_mapping, i, candidate, sizeof candidate); i++) {
        int d = edit_distance(key, candidate);
        if (d < best_distance) {
            best_distance = d;
            snprintf(best, sizeof best, "%s", candidate);
        }
    }
    /* close: one edit, or up to three in a long last component ("learning_rat") */
    int leaf_length = (int)strlen(leaf_of(key));
    int close = best_distance <= 1 || (best_distance <= 3 && 3 * best_distance <= leaf_length);
    if (!close) {   /* the right name in the wrong section: model.lr → train.lr */
        for (int i = 0; candidate_at(is_mapping, i, candidate, sizeof candidate); i++)
            if (strcmp(leaf_of(candidate), leaf_of(key)) == 0 && strchr(key, '.')) {
                snprintf(best, sizeof best, "%s", candidate);
                close = 1;
                break;
            }
    }
    if (close) return error_set(err, "%s: unknown key '%s'; did you mean '%s'?", where, key, best);

    /* the deepest known section enclosing the key, and its direct children */
    char section[PATH_MAX_LEN] = "";
    for (const char *dot = strchr(key, '.'); dot; dot = strchr(dot + 1, '.')) {
        char prefix[PATH_MAX_LEN];
        snprintf(prefix, sizeof prefix, "%.*s", (int)(dot - key), key);
        if (is_section(prefix)) snprintf(section, sizeof section, "%s", prefix);
    }
    char children[2048] = "";
    size_t section_length = strlen(section);
    for (int i = 0; i < N_SCHEMA; i++) {
        const char *k = schema[i].key;
        if (section_length && (strncmp(k, section, section_length) != 0 || k[section_length] != '.')) continue;
        const char *child = section_length ? k + section_length + 1 : k;
        size_t child_length = strcspn(child, ".");
        char name[PATH_MAX_LEN];
        snprintf(name, sizeof name, "%.*s", (int)child_length, child);
        /* listed once: look for it as a whole word in what is already there */
        int listed = 0;
        for (const char *p = strstr(children, name); p; p = strstr(p + 1, name))
            if ((p == children || p[-1] == ' ') && (p[child_length] == ',' || p[child_length] == 0)) listed = 1;
        if (!listed) appendf(children, sizeof children, "%s%s", children[0] ? ", " : "", name);
    }
    if (section_length)
        return error_set(err, "%s: unknown key '%s'; the keys under '%s' are: %s", where, key, section, children);
    return error_set(err, "%s: unknown key '%s'; the top-level sections are: %s", where, key, children);
}

static int parse_long_long(const char *text, long long *out) {
    if (!text[0] || isspace((unsigned char)text[0])) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end || errno == ERANGE) return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *text, int *out) {
    static const char *const truths[] = {"true", "yes", "1"}, *const falsities[] = {"false", "no", "0"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(text, truths[i]) == 0) { *out = 1; return 0; }
        if (strcasecmp(text, falsities[i]) == 0) { *out = 0; return 0; }
    }
    return -1;
}

static int float_in_range(const SchemaKey *k, float v) {
    if (!isfinite(v)) return 0;
    if (k->fmin_bracket == '(' ? !(v > k->fmin) : !(v >= k->fmin)) return 0;
    if (k->fmax_bracket == ')' ? !(v < k->fmax) : !(v <= k->fmax)) return 0;
    return 1;
}

/* Splits "[256, 512]" or "256,512" (a scalar given for a list key, e.g. from --set)
 * into items. Returns the count, or -1 if more than `capacity`. */
static int split_list(const char *text, char items[][32], int capacity, int *too_long) {
    const char *p = text, *end = text + strlen(text);
    while (p < end && isspace((unsigned char)*p)) p++;
    while (end > p && isspace((unsigned char)end[-1])) end--;
    if (p < end && *p == '[' && end[-1] == ']') { p++; end--; }
    int count = 0;
    *too_long = 0;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end, *a = p, *b = item_end;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        if (a == b && !comma && count == 0) break;   /* "[]" or "" */
        if (count == capacity) return -1;
        if (b - a >= 32) *too_long = 1;
        snprintf(items[count++], 32, "%.*s", (int)(b - a), a);
        p = comma ? comma + 1 : end;
    }
    return count;
}

/* Parses an entry's value for key k and stores it in c. */
static int apply_value(Config *c, const SchemaKey *k, const Entry *e, const char *name, BraidError *err) {
    char *field = (char *)c + k->offset;
    char where[CONFIG_STR + 80], expected[1024], found[128];
    entry_where(where, sizeof where, name, e, 0);
    describe_expected(k, expected, sizeof expected);
    if (e->shape != SHAPE_SCALAR && !(e->shape == SHAPE_SEQUENCE && k->type == KEY_INT_LIST))
        return error_set(err, "%s: %s: expected %s, got %s", where, k->key, expected, shape_name(e->shape));

    if (k->type == KEY_INT_LIST) {
        int capacity = (int)(k->size / sizeof(int)), values[CONFIG_MAX_LIST], count;
        if (e->shape == SHAPE_SEQUENCE) {
            count = e->n_items;
            if (count > capacity)
                return error_set(err, "%s: %s: expected %s, got %d items", where, k->key, expected, count);
            for (int i = 0; i < count; i++) {
                const Item *item = &e->items[i];
                char item_where[CONFIG_STR + 80];
                snprintf(item_where, sizeof item_where, "%s:%d:%d", name, item->line, item->col);
                if (!item->text)
                    return error_set(err, "%s: %s: expected %s, got %s as item %d", item_where, k->key, expected,
                                     shape_name(item->shape), i + 1);
                long long v;
                if (parse_long_long(item->text, &v) || v < k->min || v > k->max) {
                    quote_found(found, sizeof found, item->text);
                    return error_set(err, "%s: %s: expected %s, got %s as item %d", item_where, k->key, expected, found, i + 1);
                }
                values[i] = (int)v;
            }
        } else {
            char items[CONFIG_MAX_LIST][32];
            int too_long;
            quote_found(found, sizeof found, e->text);
            count = split_list(e->text, items, capacity, &too_long);
            if (count < 0) return error_set(err, "%s: %s: expected %s, got %s", where, k->key, expected, found);
            for (int i = 0; i < count; i++) {
                long long v;
                if (too_long || parse_long_long(items[i], &v) || v < k->min || v > k->max)
                    return error_set(err, "%s: %s: expected %s, got %s", where, k->key, expected, found);
                values[i] = (int)v;
            }
        }
        memset(field, 0, k->size);
        memcpy(field, values, (size_t)count * sizeof(int));
        *(int *)((char *)c + k->count_offset) = count;
        return 0;
    }

    const char *text = e->text;
    quote_found(found, sizeof found, text);
    switch (k->type) {
    case KEY_INT:
    case KEY_LONG: {
        long long v;
        if (parse_long_long(text, &v) || v < k->min || v > k->max) break;
        if (k->type == KEY_INT) *(int *)field = (int)v;
        else *(long *)field = (long)v;
        return 0;
    }
    case KEY_FLOAT: {
        /* strtof, not strtod then a cast: the written %.9g form reads back to the same bits */
        char *end;
        float v = text[0] && !isspace((unsigned char)text[0]) ? strtof(text, &end) : NAN;
        if (!text[0] || *end || !float_in_range(k, v)) break;
        *(float *)field = v;
        return 0;
    }
    case KEY_BOOL: {
        int v;
        if (parse_bool(text, &v)) break;
        *(int *)field = v;
        return 0;
    }
    case KEY_STRING:
        if (strlen(text) >= k->size) break;
        memset(field, 0, k->size);
        memcpy(field, text, strlen(text));
        return 0;
    case KEY_ENUM: {
        size_t n = strlen(text);
        int ok = 0;
        for (const char *p = k->allowed; *p; p += strcspn(p, "|"), p += *p == '|')
            if (n && strncmp(p, text, n) == 0 && (p[n] == '|' || p[n] == 0)) ok = 1;
        if (!ok || n >= k->size) break;
        memset(field, 0, k->size);
        memcpy(field, text, n);
        return 0;
    }
    case KEY_SYMBOL:
        if (strlen(text) != 1 || !symbol_valid(k->role, text[0])) break;
        *field = text[0];
        return 0;
    case KEY_PATTERN: {
        size_t n = strlen(text);
        if (n >= k->size || n > CONFIG_MAX_LAYERS) break;
        for (size_t i = 0; i < n; i++)
            if (!symbol_valid(k->role, text[i]))
                return error_set(err, "%s: %s: expected %s, got %s (symbol '%c' of block %zu is not a %s kind)",
                                 where, k->key, expected, found, text[i], i, k->role == LAYER_MIXER ? "mixer" : "FFN");
        memset(field, 0, k->size);
        memcpy(field, text, n);
        return 0;
    }
    case KEY_INT_LIST:
        break;   /* handled above */
    }
    return error_set(err, "%s: %s: expected %s, got %s", where, k->key, expected, found);
}

static int apply_entry(Config *c, Origins *origins, const Entry *e, const char *name, BraidError *err) {
    char where[CONFIG_STR + 80];
    int index = schema_index(e->key);
    if (index < 0) {
        entry_where(where, sizeof where, name, e, 1);
        if (e->shape == SHAPE_MAPPING) {
            if (is_section(e->key)) return 0;   /* its keys are entries of their own */
            return unknown_key_error(where, e->key, 1, err);
        }
        if (is_section(e->key)) {
            entry_where(where, sizeof where, name, e, 0);
            char found[128] = "";
            if (e->shape == SHAPE_SCALAR) quote_found(found, sizeof found, e->text);
            for (int i = 0; i < N_SCHEMA; i++)
                if (strncmp(schema[i].key, e->key, strlen(e->key)) == 0 && schema[i].key[strlen(e->key)] == '.')
                    return error_set(err, "%s: %s: expected a mapping of keys (such as %s), got %s%s%s", where, e->key,
                                     schema[i].key, shape_name(e->shape), found[0] ? " " : "", found);
        }
        return unknown_key_error(where, e->key, 0, err);
    }
    if (apply_value(c, &schema[index], e, name, err)) return -1;
    origins->set[index] = 1;
    entry_where(origins->where[index], sizeof origins->where[index], name, e, 0);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Stage 3: layer-pattern resolution and cross-key validation.                            */

/* Where a key was set (file:line:col or --set ...), or the config's name if it has its
 * default: cross-key errors start with the place of the first of `keys` that was set. */
static const char *where_set(const Origins *o, const char *name, const char *key1, const char *key2) {
    int i = schema_index(key1), j = key2 ? schema_index(key2) : -1;
    if (i >= 0 && o->set[i]) return o->where[i];
    if (j >= 0 && o->set[j]) return o->where[j];
    return name;
}

static int key_was_set(const Origins *o, const char *key) { return o->set[schema_index(key)]; }

static int pattern_uses(const char *pattern, char symbol) { return strchr(pattern, symbol) != NULL; }

/* Ratio form:  n_attn = round(ratio · n) attention blocks, block floor((i + ½)·n/n_attn)
 * for i = 0..n_attn-1 (8 blocks at 1/8: "MMMMAMMM", Jamba's offset 4); the rest are
 * default_mixer. Integer form of the floor: ((2i+1)·n) / (2·n_attn). */
static void resolve_mixer_ratio(char *pattern, int n_layers, float ratio, char default_mixer) {
    memset(pattern, default_mixer, (size_t)n_layers);
    pattern[n_layers] = 0;
    int n_attention = ratio >= 0 ? (int)lround((double)ratio * n_layers) : 0;
    for (int i = 0; i < n_attention; i++) pattern[((2 * i + 1) * n_layers) / (2 * n_attention)] = 'A';
}

/* moe_every = k > 0: block i is MoE if i % k == k-1 (k = 2: "DEDE...", Jamba's period 2,
 * offset 1); the rest are default_ffn. */
static void resolve_ffn_ratio(char *ffn, int n_layers, int moe_every, char default_ffn) {
    for (int i = 0; i < n_layers; i++) ffn[i] = moe_every > 0 && i % moe_every == moe_every - 1 ? 'E' : default_ffn;
    ffn[n_layers] = 0;
}

static int check_pattern_length(const Config *c, const Origins *o, const char *name, const char *key,
                                const char *text, const char *n_layers_source, BraidError *err) {
    if ((int)strlen(text) == c->model.n_layers) return 0;
    return error_set(err, "%s: %s: '%s' has %zu blocks but model.n_layers is %d (%s); give one symbol per block",
                     where_set(o, name, key, NULL), key, text, strlen(text), c->model.n_layers, n_layers_source);
}

static int resolve_pattern(Config *c, const Origins *o, const char *name, int *mixer_from_ratio,
                           int *ffn_from_ratio, BraidError *err) {
    ModelConfig *m = &c->model;
    int pattern_given = m->pattern[0] != 0, ffn_given = m->ffn[0] != 0;
    if (pattern_given && m->attention_ratio >= 0)
        return error_set(err, "%s: model.pattern and model.attention_ratio are both given (model.pattern at %s); "
                              "give either the explicit pattern or the ratio",
                         where_set(o, name, "model.attention_ratio", NULL), where_set(o, name, "model.pattern", NULL));
    if (ffn_given && m->moe_every > 0)
        return error_set(err, "%s: model.ffn and model.moe_every are both given (model.ffn at %s); "
                              "give either the explicit ffn pattern or moe_every",
                         where_set(o, name, "model.moe_every", NULL), where_set(o, name, "model.ffn", NULL));

    char n_layers_source[CONFIG_STR + 120];
    if (key_was_set(o, "model.n_layers")) {
        snprintf(n_layers_source, sizeof n_layers_source, "set at %s", where_set(o, name, "model.n_layers", NULL));
    } else if (pattern_given) {
        m->n_layers = (int)strlen(m->pattern);
        snprintf(n_layers_source, sizeof n_layers_source, "the length of model.pattern");
    } else if (ffn_given) {
        m->n_layers = (int)strlen(m->ffn);
        snprintf(n_layers_source, sizeof n_layers_source, "the length of model.ffn");
    } else {
        snprintf(n_layers_source, sizeof n_layers_source, "the default");
    }

    if (pattern_given) {
        if (check_pattern_length(c, o, name, "model.pattern", m->pattern, n_layers_source, err)) return -1;
    } else {
        resolve_mixer_ratio(m->pattern, m->n_layers, m->attention_ratio, m->default_mixer);
        *mixer_from_ratio = 1;
    }
    if (ffn_given) {
        if (check_pattern_length(c, o, name, "model.ffn", m->ffn, n_layers_source, err)) return -1;
    } else {
        resolve_ffn_ratio(m->ffn, m->n_layers, m->moe_every, m->default_ffn);
        *ffn_from_ratio = 1;
    }
    return 0;
}

/* Rules that tie keys together, checked only where the pattern uses the kind. */
static int validate_cross_keys(Config *c, const Origins *o, const char *name, BraidError *err) {
    ModelConfig *m = &c->model;
    int attention = pattern_uses(m->pattern, 'A') || pattern_uses(m->pattern, 'W');
    if (attention) {
        const AttentionConfig *a = &m->attention;
        if (m->d_model % a->n_heads)
            return error_set(err, "%s: model.attention.n_heads = %d must divide model.d_model = %d "
                                  "(attention blocks in model.pattern '%s' use head_dim = d_model / n_heads)",
                             where_set(o, name, "model.attention.n_heads", "model.d_model"), a->n_heads,
                             m->d_model, m->pattern);
        int kv_heads = a->n_kv_heads ? a->n_kv_heads : a->n_heads;
        if (a->n_heads % kv_heads)
            return error_set(err, "%s: model.attention.n_kv_heads = %d must divide model.attention.n_heads = %d "
                                  "(each key/value head serves n_heads / n_kv_heads query heads)",
                             where_set(o, name, "model.attention.n_kv_heads", "model.attention.n_heads"),
                             a->n_kv_heads, a->n_heads);
        int head_dim = m->d_model / a->n_heads;
        if (strcmp(a->position, "rope") == 0 && head_dim % 2)
            return error_set(err, "%s: model.attention.position: rope needs an even head_dim, but model.d_model / "
                                  "model.attention.n_heads = %d / %d = %d",
                             where_set(o, name, "model.attention.position", "model.attention.n_heads"), m->d_model,
                             a->n_heads, head_dim);
    }
    if (pattern_uses(m->ffn, 'E') && m->moe.top_k > m->moe.experts)
        return error_set(err, "%s: model.moe.top_k = %d must be at most model.moe.experts = %d (MoE blocks in model.ffn '%s')",
                         where_set(o, name, "model.moe.top_k", "model.moe.experts"), m->moe.top_k, m->moe.experts, m->ffn);
    if (pattern_uses(m->pattern, 'G')) {
        const char *keys[2] = {"model.gla.expand_k", "model.gla.expand_v"};
        float expands[2] = {m->gla.expand_k, m->gla.expand_v};
        for (int i = 0; i < 2; i++) {
            double total = (double)m->d_model * expands[i];
            if (total != floor(total) || (long long)total % m->gla.n_heads != 0)
                return error_set(err, "%s: %s: model.d_model * %s = %d * %g = %g must be a whole number divisible by "
                                      "model.gla.n_heads = %d (GLA blocks in model.pattern '%s')",
                                 where_set(o, name, keys[i], "model.gla.n_heads"), keys[i], leaf_of(keys[i]),
                                 m->d_model, expands[i], total, m->gla.n_heads, m->pattern);
        }
    }
    if (pattern_uses(m->pattern, 'M') && m->mamba.dt_min > m->mamba.dt_max)
        return error_set(err, "%s: model.mamba.dt_min = %g must be at most model.mamba.dt_max = %g",
                         where_set(o, name, "model.mamba.dt_min", "model.mamba.dt_max"), m->mamba.dt_min, m->mamba.dt_max);
    if (m->vocab_size == 0) m->vocab_size = c->task.vocab_size;
    if (m->vocab_size < c->task.vocab_size)
        return error_set(err, "%s: model.vocab_size = %d must be at least task.vocab_size = %d (the task emits every "
                              "token id below it); 0 means the task's",
                         where_set(o, name, "model.vocab_size", "task.vocab_size"), m->vocab_size, c->task.vocab_size);
    if (c->train.warmup_steps > c->train.steps)
        return error_set(err, "%s: train.warmup_steps = %d must be at most train.steps = %d",
                         where_set(o, name, "train.warmup_steps", "train.steps"), c->train.warmup_steps, c->train.steps);

    /* each kind's own rules, once per kind used */
    char used[2 * CONFIG_MAX_LAYERS + 1] = "";
    snprintf(used, sizeof used, "%s%s", m->pattern, m->ffn);
    for (int i = 0; used[i]; i++) {
        if (strchr(used, used[i]) != &used[i] || used[i] == '-') continue;
        const LayerKind *kind = layer_kind_by_symbol(used[i]);
        char message[1024] = "";
        if (kind && kind->validate && kind->validate(c, message, sizeof message))
            return error_set(err, "%s: %s (%c) blocks: %s", name, kind->name, kind->symbol, message);
    }
    return 0;
}

/* A symbol whose kind is reserved but not built is rejected, naming the kind and what
 * the build does have. */
static int check_implemented(const Config *c, const Origins *o, const char *name, int mixer_from_ratio,
                             int ffn_from_ratio, BraidError *err) {
    int ratio_given = c->model.attention_ratio >= 0, moe_given = c->model.moe_every > 0;
    const char *keys[2] = {"model.pattern", "model.ffn"};
    const char *patterns[2] = {c->model.pattern, c->model.ffn};
    const int from_ratio[2] = {mixer_from_ratio, ffn_from_ratio};
    for (int p = 0; p < 2; p++)
        for (const char *s = patterns[p]; *s; s++) {
            if (*s == '-') continue;
            const LayerKind *kind = layer_kind_by_symbol(*s);
            if (!kind || kind->implemented) continue;
            LayerRole role = kind->role;
            char built[256] = "";
            for (int i = 0; i < layer_kind_count(); i++)
                if (layer_kind_at(i)->role == role && layer_kind_at(i)->implemented)
                    appendf(built, sizeof built, "%s%c", built[0] ? ", " : "", layer_kind_at(i)->symbol);
            char resolved[256] = "";
            if (from_ratio[p])
                snprintf(resolved, sizeof resolved, " '%s' (resolved from %s)", patterns[p],
                         p == 0 ? (ratio_given ? "model.attention_ratio and model.default_mixer" : "model.default_mixer")
                                : (moe_given ? "model.moe_every and model.default_ffn" : "model.default_ffn"));
            const char *where = p == 0 ? where_set(o, name, "model.pattern", "model.default_mixer")
                                       : where_set(o, name, "model.ffn", "model.default_ffn");
            return error_set(err, "%s: %s%s: layer kind '%s' (symbol %c) is not implemented in this build (built: %s)",
                             where, keys[p], resolved, kind->name, kind->symbol, built[0] ? built : "none");
        }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Loading.                                                                              */

static int load_text(Config *cfg, const char *text, size_t length, const char *name,
                     const char *const *overrides, int n_overrides, BraidError *err) {
    Config c;
    config_defaults(&c);
    snprintf(c.source, sizeof c.source, "%s", name);
    static _Thread_local Origins origins;   /* ~23 KB: kept off the stack */
    memset(&origins, 0, sizeof origins);
    EntryList entries = {0};
    int status = read_yaml(text, length, name, &entries, err);
    for (int i = 0; status == 0 && i < n_overrides; i++) status = parse_override(overrides[i], &entries, err);
    for (int i = 0; status == 0 && i < entries.count; i++)
        status = apply_entry(&c, &origins, &entries.items[i], name, err);
    entry_list_free(&entries);

    int mixer_from_ratio = 0, ffn_from_ratio = 0;
    if (status == 0) status = resolve_pattern(&c, &origins, name, &mixer_from_ratio, &ffn_from_ratio, err);
    if (status == 0) status = validate_cross_keys(&c, &origins, name, err);
    if (status == 0) status = check_implemented(&c, &origins, name, mixer_from_ratio, ffn_from_ratio, err);
    if (status) return -1;
    /* the ratio keys are now in the explicit pattern: canonical form (see the top) */
    c.model.attention_ratio = -1.0f;
    c.model.moe_every = 0;
    memcpy(cfg, &c, sizeof c);   /* padding bytes too: a Config compares with memcmp */
    return 0;
}

int config_load_string(Config *cfg, const char *yaml_text, const char *name,
                       const char *const *overrides, int n_overrides, BraidError *err) {
    if (!name) name = "(string)";
    if (!yaml_text) yaml_text = "";
    return load_text(cfg, yaml_text, strlen(yaml_text), name, overrides, n_overrides, err);
}

int config_load(Config *cfg, const char *path, const char *const *overrides, int n_overrides,
                BraidError *err) {
    if (!path) return load_text(cfg, "", 0, "(defaults)", overrides, n_overrides, err);
    FILE *f = fopen(path, "rb");
    if (!f) return error_set(err, "cannot open config file '%s': %s", path, strerror(errno));
    size_t length = 0, capacity = 4096;
    char *text = braid_malloc(capacity, "config file text");
    for (;;) {
        if (length == capacity) {
            char *grown = braid_malloc(2 * capacity, "config file text");
            memcpy(grown, text, length);
            braid_free(text);
            text = grown;
            capacity *= 2;
        }
        size_t got = fread(text + length, 1, capacity - length, f);
        length += got;
        if (got == 0) break;
    }
    int read_failed = ferror(f);
    fclose(f);
    if (read_failed) {
        braid_free(text);
        return error_set(err, "cannot read config file '%s': read error", path);
    }
    int status = load_text(cfg, text, length, path, overrides, n_overrides, err);
    braid_free(text);
    return status;
}

/* ------------------------------------------------------------------------------------ */
/* Writing.                                                                              */

/* The shortest %.Ng (N = 6..9) that reads back to the same float: %.9g always does, and
 * shorter forms keep 0.001 from printing as 0.00100000005. */
static void format_float(char *buf, size_t n, float v) {
    for (int precision = 6; precision <= 9; precision++) {
        snprintf(buf, n, "%.*g", precision, (double)v);
        if (strtof(buf, NULL) == v && signbit(strtof(buf, NULL)) == signbit(v)) return;
    }
}

/* A double-quoted YAML string: reads back as exactly these bytes. */
static void write_quoted(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\x%02x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void write_value(FILE *f, const Config *c, const SchemaKey *k) {
    const char *field = (const char *)c + k->offset;
    char buf[64];
    switch (k->type) {
    case KEY_INT: fprintf(f, "%d", *(const int *)field); break;
    case KEY_LONG: fprintf(f, "%ld", *(const long *)field); break;
    case KEY_FLOAT: format_float(buf, sizeof buf, *(const float *)field); fputs(buf, f); break;
    case KEY_BOOL: fputs(*(const int *)field ? "true" : "false", f); break;
    case KEY_STRING:
    case KEY_ENUM:
    case KEY_PATTERN: write_quoted(f, field); break;
    case KEY_SYMBOL: buf[0] = *field; buf[1] = 0; write_quoted(f, buf); break;
    case KEY_INT_LIST: {
        int count = *(const int *)((const char *)c + k->count_offset);
        fputc('[', f);
        for (int i = 0; i < count; i++) fprintf(f, "%s%d", i ? ", " : "", ((const int *)field)[i]);
        fputc(']', f);
        break;
    }
    }
}

/* "model.attention" → {"model", "attention"}; returns the count (at most 8). */
static int split_path(const char *path, char components[8][PATH_MAX_LEN]) {
    int count = 0;
    for (const char *p = path; *p && count < 8;) {
        size_t n = strcspn(p, ".");
        snprintf(components[count++], PATH_MAX_LEN, "%.*s", (int)n, p);
        p += n + (p[n] == '.');
    }
    return count;
}

int config_resolve_device(Config *cfg, BraidError *err) {
    char *dev = cfg->train.device;
    if (!strcmp(dev, "auto")) {
        snprintf(dev, sizeof cfg->train.device, "%s", device_cuda_available() ? "cuda" : "cpu");
        return 0;
    }
    const char *why = strcmp(dev, "cuda") == 0 ? device_cuda_unavailable() : NULL;
    return why ? error_set(err, "train.device: cuda, but %s", why) : 0;
}

void config_write_yaml(const Config *cfg, FILE *f) {
    fprintf(f, "# braid config, resolved from %s: every key, with the layer pattern explicit.\n", cfg->source);
    fprintf(f, "# model.attention_ratio and model.moe_every are resolved into model.pattern and model.ffn,\n"
               "# so they are not written.\n");
    char previous_section[PATH_MAX_LEN] = "";
    for (int i = 0; i < N_SCHEMA; i++) {
        const SchemaKey *k = &schema[i];
        if (k->resolution_input) continue;
        const char *leaf = leaf_of(k->key);
        char section[PATH_MAX_LEN];
        snprintf(section, sizeof section, "%.*s", (int)(leaf - k->key - 1), k->key);
        /* open the components of `section` that the previous key's section does not share */
        char components[8][PATH_MAX_LEN], previous[8][PATH_MAX_LEN];
        int depth = split_path(section, components), previous_depth = split_path(previous_section, previous);
        int shared = 0;
        while (shared < depth && shared < previous_depth && strcmp(components[shared], previous[shared]) == 0) shared++;
        for (int j = shared; j < depth; j++) fprintf(f, "%*s%s:\n", 2 * j, "", components[j]);
        snprintf(previous_section, sizeof previous_section, "%s", section);

        /* "  key: value" padded so the help comments line up */
        char *line = NULL;
        size_t line_size = 0;
        FILE *line_stream = open_memstream(&line, &line_size);
        BRAID_CHECK(line_stream, "open_memstream failed");
        fprintf(line_stream, "%*s%s: ", 2 * depth, "", leaf);
        write_value(line_stream, cfg, k);
        fclose(line_stream);
        fprintf(f, "%-40s # %s\n", line, k->help);
        free(line);
    }
}

char *config_to_yaml_string(const Config *cfg) {
    char *text = NULL;
    size_t size = 0;
    FILE *stream = open_memstream(&text, &size);
    BRAID_CHECK(stream, "open_memstream failed");
    config_write_yaml(cfg, stream);
    fclose(stream);
    return text;
}

/* ------------------------------------------------------------------------------------ */
/* Warnings: legal configs that are probably mistakes.                                    */

int config_print_warnings(const Config *cfg, FILE *f) {
    int warnings = 0;
    const ModelConfig *m = &cfg->model;
    /* Attention is permutation-invariant: without RoPE only M and G blocks (recurrent)
     * tell positions apart. */
    int carries_position = 0;
    for (const char *s = m->pattern; *s; s++) carries_position |= *s != 'A' && *s != 'W';
    if (!carries_position && m->pattern[0] && strcmp(m->attention.position, "none") == 0) {
        warnings++;
        if (f)
            fprintf(f, "warning: %s: model.pattern '%s' has no block that carries position (only attention or "
                       "sliding-window mixers, no mamba or gla) and model.attention.position is 'none', so the "
                       "model cannot tell token order apart; without RoPE a 2-layer attention model is stuck near "
                       "34%% MQAR accuracy. Set model.attention.position: rope\n",
                    cfg->source, m->pattern);
    }
    if (strcmp(cfg->train.matmul_precision, "fp32") != 0 && strcmp(cfg->train.device, "cuda") != 0) {
        warnings++;
        if (f)
            fprintf(f, "warning: %s: train.matmul_precision is %s, which applies to CUDA matmuls; on the CPU "
                       "(train.device %s) every product is float32\n",
                    cfg->source, cfg->train.matmul_precision, cfg->train.device);
    }
    return warnings;
}
