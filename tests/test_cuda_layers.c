/* test_cuda_layers.c — the CUDA paths of the attention, sliding-window and dense-FFN
 * layers against their CPU paths (tests/cuda_harness.h: same parameters, input and dy;
 * y poisoned first; gradients start non-zero so accumulation is what gets checked).
 *
 * Shapes: T = 1, 7, 64, 129 (ragged against the attention kernel's tiles), B 1–3, d 32–128,
 * heads 2–8 with grouped kv heads, RoPE on and off, windows 5 and 64.
 * Tolerances, relative to each tensor's largest element: 1e-4 forward, 1e-3 backward
 * (cuBLAS and the flash kernel sum in other orders than OpenBLAS and the CPU loops).
 * No GPU: prints that it skipped and exits 77. Check runs in-process (CK_NOFORK): a CUDA
 * context does not survive fork(). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/ops_cuda.h"
#include "cuda_harness.h"
#include "models/config.h"

extern const LayerKind attention_kind, sliding_window_kind, ffn_dense_kind;

#define FWD_TOL 1e-4
#define BWD_TOL 1e-3

typedef struct AttnCase { int B, T, d, H, Hkv, rope, window; } AttnCase;
static const AttnCase ATTN_CASES[] = {
    {2, 64, 64, 2, 2, 1, 0},     /* the tiny configs' shape */
    {1, 1, 32, 2, 2, 0, 0},      /* one token */
    {3, 7, 48, 4, 2, 1, 0},      /* ragged, GQA */
    {2, 129, 128, 8, 2, 1, 0},   /* past a tile edge, hd 16, 4 q heads per kv head */
    {2, 129, 64, 2, 1, 0, 5},    /* sliding window, multi-query */
    {1, 200, 128, 2, 2, 1, 64},  /* window 64 across tiles, hd 64 */
};

START_TEST(attention_layer_matches_cpu) {
    const AttnCase *c = &ATTN_CASES[_i];
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = c->d;
    cfg.model.attention.n_heads = c->H;
    cfg.model.attention.n_kv_heads = c->Hkv;
    cfg.model.attention.window = c->window > 0 ? c->window : 16;
    snprintf(cfg.model.attention.position, sizeof cfg.model.attention.position, "%s",
             c->rope ? "rope" : "none");
    const LayerKind *kind = c->window > 0 ? &sliding_window_kind : &attention_kind;
    char what[96];
    snprintf(what, sizeof what, "%s B%d T%d d%d H%d/%d%s", kind->name, c->B, c->T, c->d, c->H, c->Hkv,
             c->rope ? " rope" : "");
    ck_assert_msg(cuda_layer_check(kind, &cfg, c->B, c->T, 100 + _i, FWD_TOL, BWD_TOL, what),
                  "%s: CUDA differs from CPU (see the table above)", what);
}
END_TEST

typedef struct DenseCase { int B, T, d, hidden; } DenseCase;
static const DenseCase DENSE_CASES[] = {{2, 64, 64, 0}, {1, 1, 32, 40}, {3, 129, 96, 256}};

START_TEST(dense_layer_matches_cpu) {
    const DenseCase *c = &DENSE_CASES[_i];
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = c->d;
    if (c->hidden) cfg.model.ffn_dense.hidden = c->hidden;
    char what[96];
    snprintf(what, sizeof what, "dense B%d T%d d%d", c->B, c->T, c->d);
    ck_assert_msg(cuda_layer_check(&ffn_dense_kind, &cfg, c->B, c->T, 200 + _i, FWD_TOL, BWD_TOL, what),
                  "%s: CUDA differs from CPU (see the table above)", what);
}
END_TEST

static Suite *cuda_layers_suite(void) {
    Suite *s = suite_create("cuda_layers");
    TCase *tc = tcase_create("layers");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, attention_layer_matches_cpu, 0, (int)(sizeof ATTN_CASES / sizeof *ATTN_CASES));
    tcase_add_loop_test(tc, dense_layer_matches_cpu, 0, (int)(sizeof DENSE_CASES / sizeof *DENSE_CASES));
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return cuda_test_main("test_cuda_layers", cuda_layers_suite); }
