/* test_gla.c — the gated linear attention layer and its chunked kernel.
 *
 * Kernel (gla_cpu.h): backward against finite differences (ragged chunks, one chunk,
 * strong decay); forward against a naive sequential recurrence in double precision.
 * Layer (gla.c), in each mode (gla, retention, linear): backward against finite
 * differences through tests/layer_harness.h; forward and backward against the float64
 * PyTorch reference tools/reference/gla_reference.py (tests/fixtures/gla_*.bin);
 * backward accumulates; gate parameters exist only in "gla" mode. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "gradcheck.h"
#include "layer_harness.h"
#include "core/common.h"
#include "core/rng.h"
#include "layers/gla_cpu.h"

extern const LayerKind gla_kind;

static const char *const MODES[] = {"gla", "retention", "linear"};
static const char *const FIXTURES[] = {"gla_layer.bin", "gla_retention.bin", "gla_linear.bin"};

/* ---------------------------------------------------------------- the kernel alone */

typedef struct KernelCase {
    int B, T, H, dk, dv, chunk;
    float scale;
    float *q, *k, *v, *log_alpha;              /* (B,T,H,dk) / (B,T,H,dv) */
    float *o, *states, *final_state, *scratch;
    float *dq, *dk_, *dv_, *dlog_alpha, *dout;
} KernelCase;

/* Random q, k, v; log α uniform in [decay_lo, decay_hi] (≤ 0). */
static KernelCase *kernel_case_create(int B, int T, int H, int dk, int dv, int chunk,
                                      float decay_lo, float decay_hi, unsigned long seed) {
    KernelCase *c = calloc(1, sizeof *c);
    *c = (KernelCase){.B = B, .T = T, .H = H, .dk = dk, .dv = dv, .chunk = chunk,
                      .scale = 1.0f / sqrtf((float)dk)};
    size_t nk = (size_t)B * T * H * dk, nv = (size_t)B * T * H * dv;
    size_t ns = (size_t)B * H * gla_chunk_count(T, chunk) * dk * dv;
    c->q = malloc(nk * sizeof(float)); c->k = malloc(nk * sizeof(float));
    c->log_alpha = malloc(nk * sizeof(float)); c->v = malloc(nv * sizeof(float));
    c->o = calloc(nv, sizeof(float)); c->dout = calloc(nv, sizeof(float));
    c->states = calloc(ns, sizeof(float));
    c->final_state = calloc((size_t)B * H * dk * dv, sizeof(float));
    c->scratch = calloc(gla_chunk_scratch_floats(B, H, dk, dv, chunk), sizeof(float));
    c->dq = calloc(nk, sizeof(float)); c->dk_ = calloc(nk, sizeof(float));
    c->dlog_alpha = calloc(nk, sizeof(float)); c->dv_ = calloc(nv, sizeof(float));
    test_fill_normal(c->q, nk, seed, 1.0f);
    test_fill_normal(c->k, nk, seed + 1, 1.0f);
    test_fill_normal(c->v, nv, seed + 2, 1.0f);
    Rng rng;
    rng_seed(&rng, seed + 3);
    for (size_t i = 0; i < nk; i++) c->log_alpha[i] = rng_uniform_range(&rng, decay_lo, decay_hi);
    return c;
}

static void kernel_case_free(KernelCase *c) {
    free(c->q); free(c->k); free(c->v); free(c->log_alpha); free(c->o); free(c->states);
    free(c->final_state); free(c->scratch); free(c->dq); free(c->dk_); free(c->dv_);
    free(c->dlog_alpha); free(c->dout); free(c);
}

static void kernel_forward_cb(void *s) {
    KernelCase *c = s;
    gla_chunk_forward(c->o, c->states, c->final_state, c->q, c->k, c->v, c->log_alpha, c->B, c->T,
                      c->H, c->dk, c->dv, c->chunk, c->scale, c->scratch);
}

static void kernel_backward_cb(void *s) {
    KernelCase *c = s;
    gla_chunk_backward(c->dq, c->dk_, c->dv_, c->dlog_alpha, c->dout, c->q, c->k, c->v, c->log_alpha,
                       c->states, c->B, c->T, c->H, c->dk, c->dv, c->chunk, c->scale, c->scratch);
}

static int kernel_gradcheck(KernelCase *c, const char *what) {
    size_t nk = (size_t)c->B * c->T * c->H * c->dk, nv = (size_t)c->B * c->T * c->H * c->dv;
    GradcheckTensor t[] = {
        {"q", c->q, c->dq, nk}, {"k", c->k, c->dk_, nk}, {"v", c->v, c->dv_, nv},
        {"log_alpha", c->log_alpha, c->dlog_alpha, nk},
    };
    GradcheckOp op = {kernel_forward_cb, kernel_backward_cb, c, c->o, c->dout, nv, NULL};
    return gradcheck(what, &op, t, 4, 1e-2f, 2e-2f, 0);
}

/* The recurrence straight from the definition, in double:
 * S_t = diag(α_t) S_{t−1} + k_tᵀ v_t, o_t = scale · q_t S_t. Writes o (B,T,H,dv) and, for
 * every t, the state entering t into entering[(b,h,t)] (B,H,T+1,dk,dv; index T = final). */
static void naive_recurrence(double *o, double *entering, const KernelCase *c) {
    const int H = c->H, dk = c->dk, dv = c->dv, T = c->T;
    double *S = calloc((size_t)dk * dv, sizeof(double));
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < H; h++) {
            memset(S, 0, (size_t)dk * dv * sizeof(double));
            for (int t = 0; t < T; t++) {
                double *ent = entering + (((size_t)b * H + h) * (T + 1) + t) * dk * dv;
                memcpy(ent, S, (size_t)dk * dv * sizeof(double));
                size_t ik = (((size_t)b * T + t) * H + h) * dk, iv = (((size_t)b * T + t) * H + h) * dv;
                for (int i = 0; i < dk; i++)
                    for (int e = 0; e < dv; e++)
                        S[i * dv + e] = exp((double)c->log_alpha[ik + i]) * S[i * dv + e] +
                                        (double)c->k[ik + i] * c->v[iv + e];
                for (int e = 0; e < dv; e++) {
                    double s = 0.0;
                    for (int i = 0; i < dk; i++) s += (double)c->q[ik + i] * S[i * dv + e];
                    o[iv + e] = c->scale * s;
                }
            }
            memcpy(entering + (((size_t)b * H + h) * (T + 1) + T) * dk * dv, S,
                   (size_t)dk * dv * sizeof(double));
        }
    free(S);
}

/* Largest |a − ref| / (|ref| + floor) with its index; NaN counts as infinitely bad. */
static double worst_vs_double(const float *a, const double *ref, size_t n, double floor, size_t *where) {
    double worst = 0.0;
    *where = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)a[i] - ref[i]) / (fabs(ref[i]) + floor);
        if (!(r <= worst)) { worst = r; *where = i; }
    }
    return worst;
}

/* Chunked forward (o, chunk-start states, final state) vs the naive recurrence. */
static void check_kernel_against_naive(KernelCase *c, double tol) {
    const int T = c->T, dk = c->dk, dv = c->dv, n_chunks = gla_chunk_count(T, c->chunk);
    size_t nv = (size_t)c->B * T * c->H * dv, sd = (size_t)dk * dv;
    double *o_ref = malloc(nv * sizeof(double));
    double *entering = malloc((size_t)c->B * c->H * (T + 1) * sd * sizeof(double));
    kernel_forward_cb(c);
    naive_recurrence(o_ref, entering, c);

    size_t where;
    double worst = worst_vs_double(c->o, o_ref, nv, 1e-2, &where);
    ck_assert_msg(worst < tol, "T=%d chunk=%d: o[%zu] chunked %.7g sequential %.7g (rel diff %.3g > %.3g)",
                  T, c->chunk, where, c->o[where], o_ref[where], worst, tol);
    for (int bh = 0; bh < c->B * c->H; bh++)
        for (int n = 0; n <= n_chunks; n++) {
            /* chunk n's saved start state is the state entering token n·chunk; n_chunks: final */
            const float *got = n < n_chunks ? c->states + ((size_t)bh * n_chunks + n) * sd
                                            : c->final_state + (size_t)bh * sd;
            const double *want = entering + ((size_t)bh * (T + 1) + (n < n_chunks ? n * c->chunk : T)) * sd;
            worst = worst_vs_double(got, want, sd, 1e-2, &where);
            ck_assert_msg(worst < tol, "T=%d chunk=%d: %s state of (b·H+h)=%d chunk %d, element %zu: "
                          "chunked %.7g sequential %.7g (rel diff %.3g)", T, c->chunk,
                          n < n_chunks ? "start" : "final", bh, n, where, got[where], want[where], worst);
        }
    free(o_ref);
    free(entering);
}

START_TEST(kernel_gradient_matches_finite_differences_ragged_chunks) {
    /* T = 21 with chunk 8: two full chunks and a ragged one of 5 */
    KernelCase *c = kernel_case_create(2, 21, 2, 4, 5, 8, -0.6f, -0.02f, 11);
    ck_assert_msg(kernel_gradcheck(c, "gla kernel T21 c8"), "gradient mismatch (see stderr)");
    kernel_case_free(c);
}
END_TEST

START_TEST(kernel_gradient_matches_finite_differences_single_chunk) {
    KernelCase *c = kernel_case_create(2, 21, 2, 4, 5, 32, -0.6f, -0.02f, 12);
    ck_assert_msg(kernel_gradcheck(c, "gla kernel T21 c32"), "gradient mismatch (see stderr)");
    kernel_case_free(c);
}
END_TEST

START_TEST(kernel_gradient_matches_finite_differences_strong_decay) {
    /* log α down to −6 per step: within a chunk of 8, b reaches ≈ −48 */
    KernelCase *c = kernel_case_create(1, 21, 2, 4, 3, 8, -6.0f, -1.0f, 13);
    ck_assert_msg(kernel_gradcheck(c, "gla kernel strong decay"), "gradient mismatch (see stderr)");
    kernel_case_free(c);
}
END_TEST

START_TEST(kernel_matches_sequential_recurrence) {
    const int chunks[] = {1, 5, 8, 21, 32};   /* 21 = T exactly; 32 > T */
    for (int i = 0; i < 5; i++) {
        KernelCase *c = kernel_case_create(2, 21, 3, 4, 5, chunks[i], -0.6f, -0.02f, 20 + i);
        check_kernel_against_naive(c, 1e-4);
        kernel_case_free(c);
    }
}
END_TEST

/* Large enough that the kernel splits (batch, head) over OpenMP threads, each of which
 * must use its own scratch slot and state slice. */
START_TEST(kernel_matches_sequential_recurrence_when_threaded) {
    KernelCase *c = kernel_case_create(4, 96, 4, 16, 16, 32, -0.5f, -0.01f, 25);
    check_kernel_against_naive(c, 1e-4);
    kernel_case_free(c);
}
END_TEST

START_TEST(kernel_gradient_matches_finite_differences_when_threaded) {
    KernelCase *c = kernel_case_create(4, 96, 4, 16, 16, 32, -0.5f, -0.01f, 26);
    size_t nk = (size_t)c->B * c->T * c->H * c->dk, nv = (size_t)c->B * c->T * c->H * c->dv;
    GradcheckTensor t[] = {
        {"q", c->q, c->dq, nk}, {"k", c->k, c->dk_, nk}, {"v", c->v, c->dv_, nv},
        {"log_alpha", c->log_alpha, c->dlog_alpha, nk},
    };
    GradcheckOp op = {kernel_forward_cb, kernel_backward_cb, c, c->o, c->dout, nv, NULL};
    /* a sample of elements (every one would take minutes), spread over all (batch, head) */
    ck_assert_msg(gradcheck("gla kernel threaded", &op, t, 4, 1e-2f, 2e-2f, 40),
                  "gradient mismatch (see stderr)");
    kernel_case_free(c);
}
END_TEST

START_TEST(kernel_matches_sequential_recurrence_under_strong_decay) {
    /* decay so strong that e^{−b} factorisations overflow float (b ≈ −12·16 = −192) */
    KernelCase *c = kernel_case_create(2, 40, 2, 4, 5, 16, -12.0f, -4.0f, 30);
    check_kernel_against_naive(c, 1e-4);
    kernel_case_free(c);
}
END_TEST

START_TEST(kernel_without_decay_is_causal_linear_attention) {
    /* log α = 0 (linear mode): o_t = scale · Σ_{j ≤ t} (q_t · k_j) v_j, checked at every t */
    KernelCase *c = kernel_case_create(1, 11, 1, 3, 2, 4, 0.0f, 0.0f, 40);
    kernel_forward_cb(c);
    for (int t = 0; t < c->T; t++)
        for (int e = 0; e < c->dv; e++) {
            double want = 0.0;
            for (int j = 0; j <= t; j++) {
                double dot = 0.0;
                for (int i = 0; i < c->dk; i++) dot += (double)c->q[t * c->dk + i] * c->k[j * c->dk + i];
                want += dot * c->v[j * c->dv + e];
            }
            want *= c->scale;
            float got = c->o[t * c->dv + e];
            ck_assert_msg(fabs(got - want) <= 1e-4 * (fabs(want) + 1.0),
                          "o[t=%d, e=%d] = %.7g, expected %.7g (diff %.3g)", t, e, got, want, fabs(got - want));
        }
    kernel_case_free(c);
}
END_TEST

/* ---------------------------------------------------------------- the layer */

/* The small config of the brief: d 16, 2 heads, gate rank 4, chunk 4 (T = 13 is ragged). */
static void small_config(Config *cfg, const char *mode) {
    config_defaults(cfg);
    cfg->model.d_model = 16;
    cfg->model.gla.n_heads = 2;
    cfg->model.gla.gate_rank = 4;
    cfg->model.gla.chunk = 4;
    snprintf(cfg->model.gla.mode, sizeof cfg->model.gla.mode, "%s", mode);
}

START_TEST(layer_gradient_matches_finite_differences) {
    const char *mode = MODES[_i];
    Config cfg;
    small_config(&cfg, mode);
    /* perturb 0.3: well away from the init (o_proj 0.01, bias 0) so every path carries signal.
     * The seed matters: RMSNorm's curvature grows as 1/rms(o), so a head whose output row
     * happens to be near zero (some seeds give rms ≈ 0.01 at t = 0, where o_0 ∝ q_0·k_0)
     * defeats ε = 1e-2 finite differences. Seed 103 keeps every row's rms(o) above 0.08. */
    LayerHarness *h = harness_create(&gla_kind, &cfg, 2, 13, 103, 0.3f);
    char what[64];
    snprintf(what, sizeof what, "gla layer mode=%s", mode);
    ck_assert_msg(harness_gradcheck(h, what, 1e-2f, 3e-2f, 48), "mode %s: gradient mismatch (see stderr)", mode);
    harness_free(h);
}
END_TEST

/* after[i] == 2 · once[i] within 1e-5 of the tensor's largest |once|. */
static void expect_doubled(const char *what, const float *after, const float *once, size_t n) {
    float scale = 0.0f;
    for (size_t i = 0; i < n; i++) scale = fmaxf(scale, fabsf(once[i]));
    ck_assert_msg(scale > 0.0f, "%s: gradient is all zero", what);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabsf(after[i] - 2.0f * once[i]) <= 1e-5f * scale,
                      "%s[%zu]: after two backwards %.7g, expected twice %.7g (diff %.3g)", what, i,
                      after[i], once[i], fabsf(after[i] - 2.0f * once[i]));
}

START_TEST(layer_backward_accumulates) {
    Config cfg;
    small_config(&cfg, "gla");
    LayerHarness *h = harness_create(&gla_kind, &cfg, 2, 13, 7, 0.3f);
    size_t nx = (size_t)h->B * h->T * h->d;
    test_fill_normal(h->dy, nx, 8, 1.0f);
    harness_forward(h);
    harness_backward(h);
    float *dx1 = malloc(nx * sizeof(float)), *g1 = malloc(h->params.total * sizeof(float));
    memcpy(dx1, h->dx, nx * sizeof(float));
    memcpy(g1, h->grad_data, h->params.total * sizeof(float));
    harness_backward(h);
    /* twice the first values up to float rounding, relative to each tensor's largest
     * element (adding into a non-zero buffer rounds differently) */
    expect_doubled("dx", h->dx, dx1, nx);
    for (int i = 0; i < h->params.count; i++) {
        const ParamDecl *pd = &h->params.items[i];
        expect_doubled(pd->name, h->grad_data + pd->offset, g1 + pd->offset, pd->numel);
    }
    free(dx1); free(g1);
    harness_free(h);
}
END_TEST

START_TEST(gate_parameters_exist_only_in_gla_mode) {
    const char *gate[] = {"gk_proj.0.weight", "gk_proj.1.weight", "gk_proj.1.bias"};
    const char *always[] = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight",
                            "o_proj.weight", "g_norm.weight"};
    for (int m = 0; m < 3; m++) {
        Config cfg;
        small_config(&cfg, MODES[m]);
        LayerHarness *h = harness_create(&gla_kind, &cfg, 1, 2, 1, 0.0f);
        for (int i = 0; i < 6; i++)
            ck_assert_msg(harness_param(h, always[i]) >= 0, "mode %s lacks %s", MODES[m], always[i]);
        for (int i = 0; i < 3; i++)
            ck_assert_msg((harness_param(h, gate[i]) >= 0) == (m == 0), "mode %s: %s %s", MODES[m],
                          gate[i], m == 0 ? "missing" : "declared but unused");
        ck_assert_int_eq(h->params.count, m == 0 ? 9 : 6);
        /* no_decay exactly for the bias and the norm weight */
        for (int i = 0; i < h->params.count; i++) {
            const ParamDecl *pd = &h->params.items[i];
            int expect = strstr(pd->name, ".bias") || strstr(pd->name, "g_norm");
            ck_assert_msg(pd->no_decay == expect, "%s: no_decay %d", pd->name, pd->no_decay);
        }
        harness_free(h);
    }
}
END_TEST

/* |got − want| ≤ tol · (|want| + 0.01 · max|want|) elementwise; the failure names the element. */
static void expect_close(const char *mode, const char *what, const float *got, const float *want,
                         size_t n, double tol) {
    double scale = 0.0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    size_t where;
    double worst = max_rel_diff(got, want, n, 0.01 * scale + 1e-12, &where);
    ck_assert_msg(worst <= tol, "mode %s: %s[%zu] C %.7g PyTorch %.7g (rel diff %.3g > %.3g)", mode, what,
                  where, got[where], want[where], worst, tol);
}

START_TEST(layer_matches_pytorch_reference) {
    const char *mode = MODES[_i];
    char path[512];
    snprintf(path, sizeof path, "%s/%s", BRAID_FIXTURE_DIR, FIXTURES[_i]);
    Fixture fx;
    ck_assert_msg(fixture_load(&fx, path) == 0, "cannot load %s (run tools/reference/gla_reference.py)", path);
    const FixtureTensor *x = fixture_get(&fx, "x");
    ck_assert_msg(x && x->ndim == 3, "%s: no (B,T,d) tensor x", path);
    Config cfg;
    small_config(&cfg, mode);
    ck_assert_int_eq(x->shape[2], cfg.model.d_model);
    LayerHarness *h = harness_create(&gla_kind, &cfg, x->shape[0], x->shape[1], 1, 0.0f);
    const size_t prefix = strlen(h->layer.prefix) + 1;

    /* every declared parameter must be in the fixture, with its size */
    for (int i = 0; i < h->params.count; i++) {
        const ParamDecl *pd = &h->params.items[i];
        const FixtureTensor *p = fixture_get(&fx, pd->name + prefix);
        ck_assert_msg(p && p->n == pd->numel, "mode %s: parameter %s missing or of another size", mode,
                      pd->name + prefix);
        memcpy(h->layer.params[i], p->data, pd->numel * sizeof(float));
    }
    memcpy(h->x, x->data, x->n * sizeof(float));
    harness_forward(h);
    const FixtureTensor *y = fixture_get(&fx, "y"), *dy = fixture_get(&fx, "dy"), *dx = fixture_get(&fx, "dx");
    ck_assert(y && dy && dx && y->n == x->n && dy->n == x->n && dx->n == x->n);
    expect_close(mode, "y", h->y, y->data, y->n, 1e-4);

    memcpy(h->dy, dy->data, dy->n * sizeof(float));
    memset(h->dx, 0, x->n * sizeof(float));
    memset(h->grad_data, 0, h->params.total * sizeof(float));
    harness_backward(h);
    expect_close(mode, "dx", h->dx, dx->data, dx->n, 1e-4);
    for (int i = 0; i < h->params.count; i++) {
        const ParamDecl *pd = &h->params.items[i];
        char name[160];
        snprintf(name, sizeof name, "grad.%s", pd->name + prefix);
        const FixtureTensor *g = fixture_get(&fx, name);
        ck_assert_msg(g && g->n == pd->numel, "mode %s: %s missing or of another size", mode, name);
        expect_close(mode, name, h->layer.grads[i], g->data, g->n, 1e-4);
    }
    harness_free(h);
    fixture_free(&fx);
}
END_TEST

static Suite *gla_suite(void) {
    Suite *s = suite_create("gla");
    TCase *kernel = tcase_create("kernel");
    tcase_add_test(kernel, kernel_gradient_matches_finite_differences_ragged_chunks);
    tcase_add_test(kernel, kernel_gradient_matches_finite_differences_single_chunk);
    tcase_add_test(kernel, kernel_gradient_matches_finite_differences_strong_decay);
    tcase_add_test(kernel, kernel_matches_sequential_recurrence);
    tcase_add_test(kernel, kernel_matches_sequential_recurrence_when_threaded);
    tcase_add_test(kernel, kernel_gradient_matches_finite_differences_when_threaded);
    tcase_add_test(kernel, kernel_matches_sequential_recurrence_under_strong_decay);
    tcase_add_test(kernel, kernel_without_decay_is_causal_linear_attention);
    suite_add_tcase(s, kernel);
    TCase *layer = tcase_create("layer");
    tcase_add_loop_test(layer, layer_gradient_matches_finite_differences, 0, 3);
    tcase_add_test(layer, layer_backward_accumulates);
    tcase_add_test(layer, gate_parameters_exist_only_in_gla_mode);
    tcase_add_loop_test(layer, layer_matches_pytorch_reference, 0, 3);
    suite_add_tcase(s, layer);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(gla_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
