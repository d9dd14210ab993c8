/* test_moe.c — the mixture-of-experts FFN (src/layers/moe.c) against its spec:
 *  - top-k routing picks hand-built winners (ties → lower index) with the right weights,
 *    renormalized or not;
 *  - gradients of y and of aux + z-loss match finite differences (routing margins are
 *    checked first, so no perturbation can flip the top-k choice);
 *  - the grouped-per-expert dispatch equals a naive per-token loop written here, and
 *    does not depend on the number of threads;
 *  - the expert_load statistics are the routed fractions and sum to 1;
 *  - forward and backward match PyTorch (tools/reference/moe_reference.py). */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "gradcheck.h"
#include "layer_harness.h"

extern const LayerKind moe_kind;

static Config moe_config(int d, int E, int k, int hidden, int renormalize, float aux_coef,
                         float z_coef) {
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = d;
    cfg.model.moe.experts = E;
    cfg.model.moe.top_k = k;
    cfg.model.moe.hidden = hidden;
    cfg.model.moe.renormalize = renormalize;
    cfg.model.moe.aux_loss_coef = aux_coef;
    cfg.model.moe.z_loss_coef = z_coef;
    return cfg;
}

static float *param(const LayerHarness *h, const char *fmt, int e) {
    char suffix[PARAM_NAME_MAX];
    snprintf(suffix, sizeof suffix, fmt, e);
    int i = harness_param(h, suffix);
    ck_assert_msg(i >= 0, "no parameter ending in %s", suffix);
    return h->layer.params[i];
}

/* FFN_e(x) = (silu(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ for one row, in double. */
static void naive_expert(const LayerHarness *h, int e, const float *x, double *out) {
    const Config *cfg = h->layer.cfg;
    int d = h->d, H = config_moe_hidden(cfg);
    const float *wg = param(h, "experts.%d.gate_proj.weight", e);
    const float *wu = param(h, "experts.%d.up_proj.weight", e);
    const float *wd = param(h, "experts.%d.down_proj.weight", e);
    double *act = malloc((size_t)H * sizeof(double));
    for (int o = 0; o < H; o++) {
        double g = 0.0, u = 0.0;
        for (int i = 0; i < d; i++) { g += (double)wg[o * d + i] * x[i]; u += (double)wu[o * d + i] * x[i]; }
        act[o] = g / (1.0 + exp(-g)) * u;
    }
    for (int i = 0; i < d; i++) {
        double s = 0.0;
        for (int o = 0; o < H; o++) s += (double)wd[i * H + o] * act[o];
        out[i] = s;
    }
    free(act);
}

/* The layer as a plain loop over tokens, in double: router logits, softmax, top-k by
 * sorting (p descending, ties to the lower index), each chosen expert's FFN, and the
 * aux + z losses. counts[e] = tokens routed to e. margin = smallest gap between the
 * k-th and (k+1)-th logit of any token (+inf when k == E). */
typedef struct NaiveResult {
    double *y;          /* (N, d) */
    double aux_plus_z;
    int counts[64];
    double margin;
} NaiveResult;

static NaiveResult naive_moe(const LayerHarness *h) {
    const MoeConfig *mc = &h->layer.cfg->model.moe;
    int N = h->B * h->T, d = h->d, E = mc->experts, k = mc->top_k;
    ck_assert_int_le(E, 64);
    NaiveResult r = {.y = calloc((size_t)N * d, sizeof(double)), .margin = INFINITY};
    const float *wr = param(h, "router.weight", 0);
    double *P = calloc((size_t)E, sizeof(double)), z = 0.0;
    double logits[64], p[64], ffn[256];
    int order[64];
    ck_assert_int_le(d, 256);
    for (int n = 0; n < N; n++) {
        const float *xn = h->x + (size_t)n * d;
        double maxv = -INFINITY, sum = 0.0;
        for (int e = 0; e < E; e++) {
            logits[e] = 0.0;
            for (int i = 0; i < d; i++) logits[e] += (double)wr[e * d + i] * xn[i];
            maxv = fmax(maxv, logits[e]);
        }
        for (int e = 0; e < E; e++) { p[e] = exp(logits[e] - maxv); sum += p[e]; }
        for (int e = 0; e < E; e++) { p[e] /= sum; P[e] += p[e] / N; }
        double lse = maxv + log(sum);
        z += lse * lse / N;
        for (int e = 0; e < E; e++) order[e] = e;
        for (int a = 1; a < E; a++)     /* insertion sort: stable, so ties keep index order */
            for (int b = a; b > 0 && p[order[b]] > p[order[b - 1]]; b--) {
                int t = order[b]; order[b] = order[b - 1]; order[b - 1] = t;
            }
        if (k < E) r.margin = fmin(r.margin, logits[order[k - 1]] - logits[order[k]]);
        double topk_sum = 0.0;
        for (int j = 0; j < k; j++) topk_sum += p[order[j]];
        for (int j = 0; j < k; j++) {
            int e = order[j];
            double w = mc->renormalize ? p[e] / topk_sum : p[e];
            naive_expert(h, e, xn, ffn);
            for (int i = 0; i < d; i++) r.y[(size_t)n * d + i] += w * ffn[i];
            r.counts[e]++;
        }
    }
    double aux = 0.0;
    for (int e = 0; e < E; e++) aux += (double)r.counts[e] / N * P[e];
    r.aux_plus_z = (double)mc->aux_loss_coef * E * aux + (double)mc->z_loss_coef * z;
    free(P);
    return r;
}

/* Worst |a - b| / (|b| + floor) of float a against double b; fails naming the element. */
static void assert_close(const char *what, const float *a, const double *b, size_t n,
                         double floor, double tol) {
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)a[i] - b[i]) / (fabs(b[i]) + floor);
        if (!(r <= worst)) { worst = r; wi = i; }
    }
    ck_assert_msg(worst <= tol, "%s[%zu]: got %.8g, expected %.8g (diff %.3g, rel %.3g > tol %.1g)",
                  what, wi, a[wi], b[wi], fabs((double)a[wi] - b[wi]), worst, tol);
}

/* ---- (1) top-k selection on hand-built logits -------------------------------------- */

/* With router.weight = [I₄ | 0], the logits of token n are x[n, 0..3]. Rows chosen with
 * clear margins; token 3 ties experts 0 and 1 exactly (the lower index must win). */
#define SEL_T 6
static const float selection_logits[SEL_T][4] = {
    {4.0f, 0.0f, 1.0f, -1.0f},
    {0.0f, 3.0f, -2.0f, 1.0f},
    {-1.0f, 0.0f, 1.0f, 5.0f},
    {2.0f, 2.0f, -3.0f, 0.0f},
    {-2.0f, 1.0f, 3.0f, 2.5f},
    {1.0f, -1.0f, 0.0f, 4.0f},
};
/* The winners, worked out by hand, best first. */
static const int selection_top2[SEL_T][2] = {{0, 2}, {1, 3}, {3, 2}, {0, 1}, {2, 3}, {3, 0}};
/* loop index → (k, renormalize) */
static const int selection_cases[4][2] = {{1, 0}, {1, 1}, {2, 0}, {2, 1}};

START_TEST(test_topk_selects_hand_built_winners) {
    int k = selection_cases[_i][0], renormalize = selection_cases[_i][1];
    const int d = 8, E = 4, H = 6;
    Config cfg = moe_config(d, E, k, H, renormalize, 0.0f, 0.0f);
    LayerHarness *h = harness_create(&moe_kind, &cfg, 1, SEL_T, 11, 0.3f);
    float *wr = param(h, "router.weight", 0);
    for (int e = 0; e < E; e++)
        for (int i = 0; i < d; i++) wr[e * d + i] = (i == e) ? 1.0f : 0.0f;
    for (int n = 0; n < SEL_T; n++)
        for (int e = 0; e < E; e++) h->x[n * d + e] = selection_logits[n][e];
    harness_forward(h);

    double *expected = calloc((size_t)SEL_T * d, sizeof(double)), ffn[8];
    int counts[4] = {0};
    for (int n = 0; n < SEL_T; n++) {
        double p[4], sum = 0.0, topk_sum = 0.0;
        for (int e = 0; e < E; e++) { p[e] = exp((double)selection_logits[n][e]); sum += p[e]; }
        for (int e = 0; e < E; e++) p[e] /= sum;
        for (int j = 0; j < k; j++) topk_sum += p[selection_top2[n][j]];
        for (int j = 0; j < k; j++) {
            int e = selection_top2[n][j];
            double w = renormalize ? p[e] / topk_sum : p[e];
            naive_expert(h, e, h->x + n * d, ffn);
            for (int i = 0; i < d; i++) expected[n * d + i] += w * ffn[i];
            counts[e]++;
        }
    }
    char what[64];
    snprintf(what, sizeof what, "y (k=%d renormalize=%d)", k, renormalize);
    assert_close(what, h->y, expected, (size_t)SEL_T * d, 1e-3, 1e-4);
    for (int e = 0; e < E; e++)
        ck_assert_msg(fabsf(h->layer.stats[e] - (float)counts[e] / (SEL_T * k)) < 1e-6f,
                      "k=%d: expert_load[%d] = %g, expected %d of %d slots", k, e,
                      h->layer.stats[e], counts[e], SEL_T * k);
    free(expected);
    harness_free(h);
}
END_TEST

/* ---- (2) gradients ----------------------------------------------------------------- */

/* loop index → (k, renormalize) */
static const int gradcheck_cases[4][2] = {{2, 1}, {2, 0}, {1, 0}, {1, 1}};

START_TEST(test_gradients_match_finite_differences) {
    int k = gradcheck_cases[_i][0], renormalize = gradcheck_cases[_i][1];
    const int d = 8, E = 4, H = 12, B = 2, T = 5;
    const float eps = 2e-3f;
    Config cfg = moe_config(d, E, k, H, renormalize, 0.1f, 0.01f);
    LayerHarness *h = harness_create(&moe_kind, &cfg, B, T, 42, 0.3f);
    /* A larger router spreads the logits so the top-k margins are clear. */
    float *wr = param(h, "router.weight", 0), max_w = 0.0f, max_x = 0.0f;
    for (int i = 0; i < E * d; i++) { wr[i] *= 4.0f; max_w = fmaxf(max_w, fabsf(wr[i])); }
    for (int i = 0; i < B * T * d; i++) max_x = fmaxf(max_x, fabsf(h->x[i]));
    /* One ±eps step moves a logit by at most eps·max|W_r| (x perturbed) or eps·max|x|
     * (W_r perturbed), so the gap between the k-th and (k+1)-th logit moves by at most
     * twice that; the expert FFN weights do not touch the routing. */
    NaiveResult r = naive_moe(h);
    double worst_shift = 2.0 * eps * fmax(max_w, max_x);
    ck_assert_msg(r.margin > 2.0 * worst_shift,
                  "routing margin %.4g too small for eps %.1g (a step can shift it by %.4g): "
                  "finite differences could flip the top-k", r.margin, eps, worst_shift);
    free(r.y);

    char what[64];
    snprintf(what, sizeof what, "moe k=%d renormalize=%d", k, renormalize);
    ck_assert_msg(harness_gradcheck(h, what, eps, 2e-2f, 0), "%s: gradient check failed (see above)", what);
    ck_assert_msg(h->aux_loss > 0.0, "%s: aux + z loss is %g, so its gradient went unchecked",
                  what, h->aux_loss);
    harness_free(h);
}
END_TEST

/* ---- (3) grouping invariance and determinism --------------------------------------- */

static LayerHarness *grouping_harness(Config *cfg) {
    *cfg = moe_config(16, 6, 2, 20, 1, 0.05f, 0.02f);
    LayerHarness *h = harness_create(&moe_kind, cfg, 3, 7, 7, 0.3f);
    float *wr = param(h, "router.weight", 0);
    for (int i = 0; i < 6 * 16; i++) wr[i] *= 3.0f;
    return h;
}

START_TEST(test_grouped_dispatch_equals_per_token_loop) {
    Config cfg;
    LayerHarness *h = grouping_harness(&cfg);
    harness_forward(h);
    NaiveResult r = naive_moe(h);
    ck_assert_msg(r.margin > 1e-4, "routing margin %.3g too small to compare float to double", r.margin);
    int busy = 0;
    for (int e = 0; e < 6; e++) busy += r.counts[e] >= 2;
    ck_assert_msg(busy >= 3, "only %d experts got two or more tokens: grouping barely exercised", busy);
    assert_close("y", h->y, r.y, (size_t)h->B * h->T * h->d, 1e-3, 1e-4);
    ck_assert_msg(fabs(h->aux_loss - r.aux_plus_z) <= 1e-5 * fabs(r.aux_plus_z),
                  "aux + z loss %.8g, per-token loop gives %.8g", h->aux_loss, r.aux_plus_z);
    free(r.y);
    harness_free(h);
}
END_TEST

/* Runs forward and backward with `threads` OpenMP threads; copies y, dx, grads out. */
static void run_with_threads(LayerHarness *h, int threads, float *y, float *dx, float *grads) {
    size_t n = (size_t)h->B * h->T * h->d;
    omp_set_num_threads(threads);
    test_fill_normal(h->dy, n, 99, 1.0f);
    memset(h->dx, 0, n * sizeof(float));
    memset(h->grad_data, 0, h->params.total * sizeof(float));
    harness_forward(h);
    harness_backward(h);
    memcpy(y, h->y, n * sizeof(float));
    memcpy(dx, h->dx, n * sizeof(float));
    memcpy(grads, h->grad_data, h->params.total * sizeof(float));
}

/* Large enough (N = 1024 tokens, N·k·d = 65536) that moe.c's per-token loops do run
 * in parallel (they stay serial below MOE_PARALLEL_MIN_TOKENS / _FLOATS). */
START_TEST(test_results_do_not_depend_on_thread_count) {
    Config cfg = moe_config(32, 6, 2, 40, 1, 0.05f, 0.02f);
    LayerHarness *h = harness_create(&moe_kind, &cfg, 4, 256, 5, 0.3f);
    size_t n = (size_t)h->B * h->T * h->d, np = h->params.total;
    float *y1 = malloc(n * 4), *dx1 = malloc(n * 4), *g1 = malloc(np * 4);
    float *y3 = malloc(n * 4), *dx3 = malloc(n * 4), *g3 = malloc(np * 4);
    int saved_threads = omp_get_max_threads();
    run_with_threads(h, 1, y1, dx1, g1);
    run_with_threads(h, 3, y3, dx3, g3);
    omp_set_num_threads(saved_threads);
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(y1[i] == y3[i], "y[%zu]: %.9g with 1 thread, %.9g with 3", i, y1[i], y3[i]);
        ck_assert_msg(dx1[i] == dx3[i], "dx[%zu]: %.9g with 1 thread, %.9g with 3", i, dx1[i], dx3[i]);
    }
    for (size_t i = 0; i < np; i++)
        ck_assert_msg(g1[i] == g3[i], "grad[%zu]: %.9g with 1 thread, %.9g with 3", i, g1[i], g3[i]);
    free(y1); free(dx1); free(g1); free(y3); free(dx3); free(g3);
    harness_free(h);
}
END_TEST

/* ---- (4) expert load statistics ---------------------------------------------------- */

START_TEST(test_expert_load_matches_counts_and_sums_to_one) {
    Config cfg;
    LayerHarness *h = grouping_harness(&cfg);
    harness_forward(h);
    NaiveResult r = naive_moe(h);
    int E = cfg.model.moe.experts, slots = h->B * h->T * cfg.model.moe.top_k;
    ck_assert_str_eq(h->layer.stats_name, "expert_load");
    ck_assert_int_eq(h->layer.stats_count, E);
    double sum = 0.0;
    for (int e = 0; e < E; e++) {
        sum += h->layer.stats[e];
        ck_assert_msg(fabsf(h->layer.stats[e] - (float)r.counts[e] / slots) < 1e-6f,
                      "expert_load[%d] = %g, but %d of %d slots went to expert %d",
                      e, h->layer.stats[e], r.counts[e], slots, e);
    }
    ck_assert_msg(fabs(sum - 1.0) < 1e-5, "expert_load sums to %.8g, not 1", sum);
    free(r.y);
    harness_free(h);
}
END_TEST

/* ---- (5) PyTorch reference --------------------------------------------------------- */

static const FixtureTensor *need(const Fixture *fx, const char *name) {
    const FixtureTensor *t = fixture_get(fx, name);
    ck_assert_msg(t != NULL, "fixture moe_layer.bin has no tensor '%s'", name);
    return t;
}

/* Compares n floats against the reference to float32 rounding: |got − ref| ≤
 * 1e-4·(|ref| + 0.01·max|ref|), so entries that are sums of cancelling terms (dx gets
 * both the expert and the router paths) are judged on the tensor's scale. Measured
 * worst: 2e-5 (dx), the rest below 1e-5. */
static void assert_matches_reference(const char *what, const float *got, const FixtureTensor *ref) {
    double scale = 0.0;
    for (size_t i = 0; i < ref->n; i++) scale = fmax(scale, fabs((double)ref->data[i]));
    size_t wi;
    double worst = max_rel_diff(got, ref->data, ref->n, 1e-2 * scale + 1e-12, &wi);
    ck_assert_msg(worst <= 1e-4, "%s[%zu]: C %.8g, PyTorch %.8g (diff %.3g, rel %.3g > 1e-4)", what, wi,
                  got[wi], ref->data[wi], fabs((double)got[wi] - ref->data[wi]), worst);
}

START_TEST(test_matches_pytorch_reference) {
    Fixture fx;
    ck_assert_msg(fixture_load(&fx, BRAID_FIXTURE_DIR "/moe_layer.bin") == 0,
                  "cannot load moe_layer.bin (python3 tools/reference/moe_reference.py writes it)");
    const float *c = need(&fx, "config")->data;
    int d = (int)c[0], E = (int)c[1], k = (int)c[2], H = (int)c[3], B = (int)c[7], T = (int)c[8];
    Config cfg = moe_config(d, E, k, H, (int)c[4], c[5], c[6]);
    LayerHarness *h = harness_create(&moe_kind, &cfg, B, T, 1, 0.0f);
    size_t n = (size_t)B * T * d;
    ck_assert_int_eq(need(&fx, "x")->n, n);
    memcpy(h->x, need(&fx, "x")->data, n * sizeof(float));
    memcpy(h->dy, need(&fx, "dy")->data, n * sizeof(float));
    size_t prefix_len = strlen(h->layer.prefix) + 1;
    for (int i = 0; i < h->params.count; i++) {
        const ParamDecl *pd = &h->params.items[i];
        const FixtureTensor *t = need(&fx, pd->name + prefix_len);
        ck_assert_msg(t->n == pd->numel, "%s: fixture has %zu elements, layer declares %zu",
                      pd->name, t->n, pd->numel);
        memcpy(h->layer.params[i], t->data, pd->numel * sizeof(float));
    }

    harness_forward(h);
    assert_matches_reference("y", h->y, need(&fx, "y"));
    double ref_aux = need(&fx, "aux_loss")->data[0];
    ck_assert_msg(fabs(h->aux_loss - ref_aux) <= 2e-6 * fabs(ref_aux),
                  "aux + z loss: C %.8g, PyTorch %.8g", h->aux_loss, ref_aux);

    harness_backward(h);   /* dx and grads start at zero (harness_create) */
    assert_matches_reference("dx", h->dx, need(&fx, "dx"));
    char name[PARAM_NAME_MAX + 8];
    for (int i = 0; i < h->params.count; i++) {
        snprintf(name, sizeof name, "grad.%s", h->params.items[i].name + prefix_len);
        assert_matches_reference(name, h->layer.grads[i], need(&fx, name));
    }
    harness_free(h);
    fixture_free(&fx);
}
END_TEST

/* ---- config validation ------------------------------------------------------------- */

START_TEST(test_validate_rejects_top_k_outside_range) {
    char err[256];
    Config cfg = moe_config(8, 4, 2, 12, 1, 0.01f, 0.0f);
    ck_assert_msg(moe_kind.validate(&cfg, err, sizeof err) == 0, "k=2 of 4 rejected: %s", err);
    cfg.model.moe.top_k = 4;
    ck_assert_msg(moe_kind.validate(&cfg, err, sizeof err) == 0, "k=4 of 4 rejected: %s", err);
    cfg.model.moe.top_k = 5;
    ck_assert_msg(moe_kind.validate(&cfg, err, sizeof err) == -1, "top_k 5 > experts 4 accepted");
    ck_assert_msg(strstr(err, "top_k") != NULL, "error does not name top_k: %s", err);
    cfg.model.moe.top_k = 0;
    ck_assert_msg(moe_kind.validate(&cfg, err, sizeof err) == -1, "top_k 0 accepted");
}
END_TEST

static Suite *moe_suite(void) {
    Suite *s = suite_create("moe");
    TCase *tc = tcase_create("moe");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_topk_selects_hand_built_winners, 0, 4);
    tcase_add_loop_test(tc, test_gradients_match_finite_differences, 0, 4);
    tcase_add_test(tc, test_grouped_dispatch_equals_per_token_loop);
    tcase_add_test(tc, test_results_do_not_depend_on_thread_count);
    tcase_add_test(tc, test_expert_load_matches_counts_and_sums_to_one);
    tcase_add_test(tc, test_matches_pytorch_reference);
    tcase_add_test(tc, test_validate_rejects_top_k_outside_range);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(moe_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
