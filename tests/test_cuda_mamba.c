/* test_cuda_mamba.c — the Mamba-1 layer's CUDA path (layers/mamba.c: cuBLAS matmuls, the
 * CUDA conv1d and chunked scan, the glue kernels of cuda/mamba_glue.cu) against its CPU
 * path, through tests/cuda_harness.h: same parameters, input and dy; y, saved and scratch
 * poisoned first; dx and the gradients start non-zero, so what is checked is that
 * backward ADDS the same increments as the CPU does.
 *
 * Shapes: d_model 16–128 (d_inner 32–256, so 1 to 32 channel blocks of the scan);
 * d_state 4, 5 (not a power of two: padded lanes in the scan), 16, 32 (the scan's
 * largest); T = 1, 7, 64, 129, 300 against chunk 8, 64 and a chunk ≥ T, so chunk tails,
 * a chunk longer than the scan's 32-step backward tile, and a single chunk all occur;
 * T = 1 and 7 are also shorter than or close to the conv kernel; B 1–3; inner norms on
 * and off; dt_rank auto (⌈d/16⌉, 1 at d = 16) and explicit; d_conv 4 and 2.
 * Tolerances, relative to each tensor's largest element: 1e-4 forward, 1e-3 backward
 * (cuBLAS, the scan's shuffles and the conv's wgrad sum in other orders than OpenBLAS
 * and the CPU loops; the scan's exp is exp2f).
 * No GPU: prints that it skipped and exits 77. Check runs in-process (CK_NOFORK): a CUDA
 * context does not survive fork(). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/ops_cuda.h"
#include "cuda_harness.h"
#include "models/config.h"

extern const LayerKind mamba_kind;

#define FWD_TOL 1e-4
#define BWD_TOL 1e-3

typedef struct MambaCase {
    int B, T, d, N, chunk;
    int dt_rank;        /* 0: auto */
    int inner_norms;
    int d_conv;
} MambaCase;

static const MambaCase CASES[] = {
    {2, 64, 64, 16, 64, 0, 0, 4},     /* the tiny configs' shape: one chunk exactly T long */
    {1, 1, 16, 4, 8, 0, 0, 4},        /* one token: T < d_conv, dt_rank 1 */
    {3, 7, 32, 5, 8, 0, 1, 4},        /* ragged, N = 5, inner norms, a single short chunk */
    {2, 129, 48, 16, 8, 5, 1, 4},     /* 17 chunks of 8, the last of 1; explicit dt_rank */
    {2, 129, 128, 32, 64, 0, 0, 4},   /* N = 32, chunk 64 (> the backward tile) + a 1-step tail */
    {1, 300, 96, 16, 512, 0, 1, 4},   /* one chunk longer than T */
    {3, 300, 64, 5, 64, 3, 0, 2},     /* 4 chunks of 64 and a 44-step tail; d_conv 2 */
    {2, 64, 16, 32, 8, 0, 1, 4},      /* N = 32 with few channels (d_inner 32), R = 1 normed */
    {1, 7, 128, 4, 64, 16, 0, 4},     /* chunk > T, wide explicit dt_rank */
};

START_TEST(mamba_layer_matches_cpu) {
    const MambaCase *c = &CASES[_i];
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = c->d;
    cfg.model.mamba.expand = 2;
    cfg.model.mamba.d_state = c->N;
    cfg.model.mamba.chunk = c->chunk;
    cfg.model.mamba.dt_rank = c->dt_rank;
    cfg.model.mamba.inner_norms = c->inner_norms;
    cfg.model.mamba.d_conv = c->d_conv;
    char what[96];
    snprintf(what, sizeof what, "mamba B%d T%d d%d N%d ch%d R%d%s k%d", c->B, c->T, c->d, c->N,
             c->chunk, config_dt_rank(&cfg), c->inner_norms ? " norms" : "", c->d_conv);
    ck_assert_msg(cuda_layer_check(&mamba_kind, &cfg, c->B, c->T, 300 + _i, FWD_TOL, BWD_TOL, what),
                  "%s: CUDA differs from CPU (see the table above)", what);
}
END_TEST

static Suite *cuda_mamba_suite(void) {
    Suite *s = suite_create("cuda_mamba");
    TCase *tc = tcase_create("layer");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, mamba_layer_matches_cpu, 0, (int)(sizeof CASES / sizeof *CASES));
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return cuda_test_main("test_cuda_mamba", cuda_mamba_suite); }
