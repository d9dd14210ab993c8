/* test_mamba.c — the Mamba-1 layer and its kernels (src/layers/mamba*.c):
 *  - the causal conv1d and the chunked selective scan against finite differences;
 *  - the chunked scan against an unchunked double-precision scan written here, and its
 *    backward against itself at other chunk lengths;
 *  - the whole layer through the layer harness (inner norms off and on), and its
 *    backward accumulating;
 *  - the layer against an independent PyTorch float64 implementation
 *    (tools/reference/mamba_reference.py → tests/fixtures/mamba_layer*.bin);
 *  - the inits (A_log, dt bias) and the config check.
 * Shapes are small and ragged (T = 37 with chunk 8, T = 19) so chunk tails show up. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/ops.h"
#include "fixture.h"
#include "gradcheck.h"
#include "layer_harness.h"
#include "layers/layer.h"
#include "layers/mamba_cpu.h"
#include "models/config.h"

extern const LayerKind mamba_kind;

static float *alloc_normal(size_t n, unsigned long seed, float scale) {
    float *p = braid_malloc(n * sizeof(float), "test tensor");
    test_fill_normal(p, n, seed, scale);
    return p;
}

static float *alloc_zero(size_t n) { return braid_calloc(n, sizeof(float), "test tensor"); }

/* Every |got − want| must be ≤ tol · (|want| + floor_frac · max|want|); the message
 * names the worst element, both values and the difference. */
static void assert_close(const char *what, const float *got, const float *want, size_t n,
                         double tol, double floor_frac) {
    double max_want = 0.0, worst = -1.0;
    size_t worst_i = 0;
    for (size_t i = 0; i < n; i++) max_want = fmax(max_want, fabs((double)want[i]));
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)got[i] - (double)want[i]);
        double ratio = diff / (fabs((double)want[i]) + floor_frac * max_want + 1e-30);
        if (!(ratio <= worst)) { worst = ratio; worst_i = i; }
    }
    ck_assert_msg(worst <= tol,
                  "%s: element %zu is %.8g, expected %.8g (|diff| %.3g, relative %.3g > %.1e; max|want| %.4g)",
                  what, worst_i, got[worst_i], want[worst_i],
                  fabs((double)got[worst_i] - (double)want[worst_i]), worst, tol, max_want);
}

/* ------------------------------------------------------------ causal conv1d */

typedef struct ConvCase {
    int B, T, C, K;
    float *x, *w, *b, *out, *dx, *dw, *db, *dout;
} ConvCase;

static void conv_case_forward(void *s) {
    ConvCase *c = s;
    causal_conv1d_forward(c->out, c->x, c->w, c->b, c->B, c->T, c->C, c->K);
}

static void conv_case_backward(void *s) {
    ConvCase *c = s;
    causal_conv1d_backward(c->dx, c->dw, c->db, c->dout, c->x, c->w, c->B, c->T, c->C, c->K);
}

START_TEST(test_conv1d_gradient_matches_finite_differences) {
    ConvCase c = {.B = 2, .T = 9, .C = 5, .K = 4};
    size_t n = (size_t)c.B * c.T * c.C;
    c.x = alloc_normal(n, 21, 1.0f);
    c.w = alloc_normal((size_t)c.C * c.K, 22, 0.5f);
    c.b = alloc_normal((size_t)c.C, 23, 0.5f);
    c.out = alloc_zero(n); c.dout = alloc_zero(n); c.dx = alloc_zero(n);
    c.dw = alloc_zero((size_t)c.C * c.K); c.db = alloc_zero((size_t)c.C);
    GradcheckOp op = {conv_case_forward, conv_case_backward, &c, c.out, c.dout, n, NULL};
    GradcheckTensor t[] = {{"x", c.x, c.dx, n}, {"weight", c.w, c.dw, (size_t)c.C * c.K},
                           {"bias", c.b, c.db, (size_t)c.C}};
    ck_assert_msg(gradcheck("causal_conv1d", &op, t, 3, 1e-2f, 1e-2f, 0),
                  "causal_conv1d backward differs from finite differences (see stderr)");
    free(c.x); free(c.w); free(c.b); free(c.out); free(c.dout); free(c.dx); free(c.dw); free(c.db);
}
END_TEST

/* The conv against its definition at one hand-picked element: out[b,t,c] reads x at
 * t−K+1 … t, and nothing before t = 0 (zero padding), nothing after t (causal). */
START_TEST(test_conv1d_is_causal_with_zero_padding) {
    int B = 1, T = 6, C = 2, K = 3;
    float *x = alloc_normal((size_t)B * T * C, 24, 1.0f), *w = alloc_normal((size_t)C * K, 25, 1.0f);
    float bias[2] = {0.25f, -0.5f}, out[12], out2[12];
    causal_conv1d_forward(out, x, w, bias, B, T, C, K);
    /* t = 1, c = 1: taps j = 1, 2 read x[0], x[1]; tap 0 reads the padding */
    float want = bias[1] + w[1 * K + 1] * x[0 * C + 1] + w[1 * K + 2] * x[1 * C + 1];
    ck_assert_msg(fabsf(out[1 * C + 1] - want) <= 1e-6f, "out[t=1,c=1] = %g, expected %g",
                  out[1 * C + 1], want);
    /* changing x at t = 4 must not change any output before t = 4 */
    x[4 * C + 0] += 3.0f;
    causal_conv1d_forward(out2, x, w, bias, B, T, C, K);
    for (int i = 0; i < 4 * C; i++)
        ck_assert_msg(out2[i] == out[i], "output %d (t=%d) changed when x at t=4 did", i, i / C);
    ck_assert_msg(out2[4 * C] != out[4 * C], "output at t=4 ignores x at t=4");
    free(x); free(w);
}
END_TEST

/* ------------------------------------------------------------ selective scan */

typedef struct ScanCase {
    int B, T, C, N, chunk;
    float *u, *delta, *A, *Bm, *Cm, *D, *y, *states;
    float *du, *ddelta, *dA, *dB, *dC, *dD, *dy;
    float *scratch;
    size_t scratch_floats;
} ScanCase;

static void scan_case_forward(void *s) {
    ScanCase *c = s;
    selective_scan_forward(c->y, c->states, c->u, c->delta, c->A, c->Bm, c->Cm, c->D, c->B, c->T,
                           c->C, c->N, c->chunk);
}

static void scan_case_backward(void *s) {
    ScanCase *c = s;
    selective_scan_backward(c->du, c->ddelta, c->dA, c->dB, c->dC, c->dD, c->dy, c->u, c->delta,
                            c->A, c->Bm, c->Cm, c->D, c->states, c->B, c->T, c->C, c->N, c->chunk,
                            c->scratch, c->scratch_floats);
}

/* Random scan inputs: δ = softplus(normal) > 0, A = −exp(0.5·normal) < 0, the rest normal. */
static ScanCase scan_case_make(int B, int T, int C, int N, int chunk) {
    ScanCase c = {.B = B, .T = T, .C = C, .N = N, .chunk = chunk};
    size_t seq = (size_t)B * T * C, bn = (size_t)B * T * N;
    c.u = alloc_normal(seq, 31, 1.0f);
    c.delta = alloc_normal(seq, 32, 1.0f);
    for (size_t i = 0; i < seq; i++) c.delta[i] = softplus_f(c.delta[i] - 0.5f);
    c.A = alloc_normal((size_t)C * N, 33, 0.5f);
    for (int i = 0; i < C * N; i++) c.A[i] = -expf(c.A[i]);
    c.Bm = alloc_normal(bn, 34, 1.0f);
    c.Cm = alloc_normal(bn, 35, 1.0f);
    c.D = alloc_normal((size_t)C, 36, 1.0f);
    c.y = alloc_zero(seq);
    c.dy = alloc_zero(seq);
    c.states = alloc_zero((size_t)B * selective_scan_n_chunks(T, chunk) * C * N);
    c.du = alloc_zero(seq); c.ddelta = alloc_zero(seq);
    c.dA = alloc_zero((size_t)C * N); c.dD = alloc_zero((size_t)C);
    c.dB = alloc_zero(bn); c.dC = alloc_zero(bn);
    c.scratch_floats = selective_scan_backward_scratch_floats(B, T, N, chunk, omp_get_max_threads());
    c.scratch = alloc_zero(c.scratch_floats);
    return c;
}

static void scan_case_free(ScanCase *c) {
    free(c->u); free(c->delta); free(c->A); free(c->Bm); free(c->Cm); free(c->D); free(c->y);
    free(c->dy); free(c->states); free(c->du); free(c->ddelta); free(c->dA); free(c->dD);
    free(c->dB); free(c->dC); free(c->scratch);
}

static int scan_gradcheck(ScanCase *c, const char *what) {
    size_t seq = (size_t)c->B * c->T * c->C, bn = (size_t)c->B * c->T * c->N;
    GradcheckOp op = {scan_case_forward, scan_case_backward, c, c->y, c->dy, seq, NULL};
    GradcheckTensor t[] = {{"u", c->u, c->du, seq}, {"delta", c->delta, c->ddelta, seq},
                           {"A", c->A, c->dA, (size_t)c->C * c->N}, {"B", c->Bm, c->dB, bn},
                           {"C", c->Cm, c->dC, bn}, {"D", c->D, c->dD, (size_t)c->C}};
    return gradcheck(what, &op, t, 6, 1e-2f, 2e-2f, 0);
}

START_TEST(test_scan_gradient_matches_finite_differences_ragged_chunks) {
    ScanCase c = scan_case_make(2, 37, 3, 4, 8);   /* 5 chunks, the last one 5 steps */
    ck_assert_msg(scan_gradcheck(&c, "scan T=37 chunk=8"),
                  "selective_scan backward (chunk 8, T 37) differs from finite differences (see stderr)");
    scan_case_free(&c);
}
END_TEST

START_TEST(test_scan_gradient_matches_finite_differences_one_chunk) {
    ScanCase c = scan_case_make(2, 37, 3, 4, 64);  /* chunk ≥ T: a single chunk */
    ck_assert_msg(scan_gradcheck(&c, "scan T=37 chunk=64"),
                  "selective_scan backward (chunk 64 ≥ T 37) differs from finite differences (see stderr)");
    scan_case_free(&c);
}
END_TEST

/* h_t = exp(δA)h + δuB, y = h·C + Du in double, one step at a time, every state kept:
 * states (B, T, C, N) is the state after step t. */
static void naive_scan_double(double *y, double *states, const ScanCase *c) {
    for (int b = 0; b < c->B; b++)
        for (int ch = 0; ch < c->C; ch++) {
            double h[64] = {0};
            for (int t = 0; t < c->T; t++) {
                size_t idx = ((size_t)b * c->T + t) * c->C + ch, row = (size_t)b * c->T + t;
                double acc = 0.0;
                for (int n = 0; n < c->N; n++) {
                    h[n] = exp((double)c->delta[idx] * c->A[ch * c->N + n]) * h[n] +
                           (double)c->delta[idx] * c->u[idx] * c->Bm[row * c->N + n];
                    acc += h[n] * c->Cm[row * c->N + n];
                    states[(row * c->C + ch) * c->N + n] = h[n];
                }
                y[idx] = acc + (double)c->D[ch] * c->u[idx];
            }
        }
}

START_TEST(test_chunked_scan_equals_naive_double_scan) {
    const int chunks[] = {1, 5, 8, 37, 64};
    for (int ci = 0; ci < 5; ci++) {
        ScanCase c = scan_case_make(2, 37, 3, 4, chunks[ci]);
        size_t seq = (size_t)c.B * c.T * c.C;
        double *y_ref = malloc(seq * sizeof(double));
        double *h_ref = malloc(seq * c.N * sizeof(double));
        naive_scan_double(y_ref, h_ref, &c);
        scan_case_forward(&c);
        double max_y = 0.0;
        for (size_t i = 0; i < seq; i++) max_y = fmax(max_y, fabs(y_ref[i]));
        for (size_t i = 0; i < seq; i++)
            ck_assert_msg(fabs(c.y[i] - y_ref[i]) <= 1e-5 * (fabs(y_ref[i]) + max_y),
                          "chunk %d: y[%zu] = %.8g, double scan %.8g (|diff| %.3g)", chunks[ci], i,
                          c.y[i], y_ref[i], fabs(c.y[i] - y_ref[i]));
        /* chunk k's saved state is the state after step k·chunk − 1 (zero for k = 0) */
        int n_chunks = selective_scan_n_chunks(c.T, c.chunk);
        for (int b = 0; b < c.B; b++)
            for (int k = 0; k < n_chunks; k++)
                for (int ch = 0; ch < c.C; ch++)
                    for (int n = 0; n < c.N; n++) {
                        float got = c.states[(((size_t)b * n_chunks + k) * c.C + ch) * c.N + n];
                        double want = k == 0 ? 0.0
                            : h_ref[((((size_t)b * c.T + k * c.chunk - 1) * c.C) + ch) * c.N + n];
                        ck_assert_msg(fabs(got - want) <= 1e-5 * (fabs(want) + 1.0),
                                      "chunk %d: saved state b=%d k=%d c=%d n=%d is %.8g, double scan %.8g",
                                      chunks[ci], b, k, ch, n, got, want);
                    }
        free(y_ref); free(h_ref);
        scan_case_free(&c);
    }
}
END_TEST

/* At this size the scan runs on several threads (small scans stay on one): the output
 * must still equal the double-precision scan, and backward on 2 threads must give the
 * 1-thread gradients (dB/dC up to the order of the per-thread partial sums). */
START_TEST(test_threaded_scan_matches_naive_and_single_thread) {
    ScanCase c = scan_case_make(4, 64, 128, 16, 16);
    size_t seq = (size_t)c.B * c.T * c.C, bn = (size_t)c.B * c.T * c.N;
    double *y_ref = malloc(seq * sizeof(double));
    double *h_ref = malloc(seq * c.N * sizeof(double));
    naive_scan_double(y_ref, h_ref, &c);
    omp_set_num_threads(2);
    scan_case_forward(&c);
    double max_y = 0.0;
    for (size_t i = 0; i < seq; i++) max_y = fmax(max_y, fabs(y_ref[i]));
    for (size_t i = 0; i < seq; i++)
        ck_assert_msg(fabs(c.y[i] - y_ref[i]) <= 1e-5 * (fabs(y_ref[i]) + max_y),
                      "threaded scan: y[%zu] = %.8g, double scan %.8g", i, c.y[i], y_ref[i]);
    for (size_t i = 0; i < seq; i++) c.dy[i] = (float)((i * 7919) % 13) / 13.0f - 0.4f;
    struct { const char *name; float *g; size_t n; } grads[] = {
        {"du", c.du, seq}, {"ddelta", c.ddelta, seq}, {"dA", c.dA, (size_t)c.C * c.N},
        {"dB", c.dB, bn}, {"dC", c.dC, bn}, {"dD", c.dD, (size_t)c.C}};
    float *one[6];
    omp_set_num_threads(1);
    scan_case_backward(&c);
    for (int g = 0; g < 6; g++) {
        one[g] = malloc(grads[g].n * sizeof(float));
        memcpy(one[g], grads[g].g, grads[g].n * sizeof(float));
        memset(grads[g].g, 0, grads[g].n * sizeof(float));
    }
    omp_set_num_threads(2);
    scan_case_backward(&c);
    for (int g = 0; g < 6; g++) {
        double max_ref = 0.0;
        for (size_t i = 0; i < grads[g].n; i++) max_ref = fmax(max_ref, fabs(one[g][i]));
        for (size_t i = 0; i < grads[g].n; i++)
            ck_assert_msg(fabs(grads[g].g[i] - one[g][i]) <= 1e-5 * max_ref,
                          "%s[%zu]: 2 threads %.8g, 1 thread %.8g", grads[g].name, i, grads[g].g[i], one[g][i]);
        free(one[g]);
    }
    free(y_ref); free(h_ref);
    scan_case_free(&c);
}
END_TEST

/* Backward recomputes states chunk by chunk: any chunk length must give the gradients
 * of the single-chunk run (up to float rounding of the recompute order). */
START_TEST(test_scan_backward_is_independent_of_chunk_length) {
    ScanCase ref = scan_case_make(2, 37, 3, 4, 37);
    size_t seq = (size_t)ref.B * ref.T * ref.C, bn = (size_t)ref.B * ref.T * ref.N;
    test_fill_normal(ref.dy, seq, 37, 1.0f);
    scan_case_forward(&ref);
    scan_case_backward(&ref);
    const int chunks[] = {1, 4, 8, 36};
    for (int ci = 0; ci < 4; ci++) {
        ScanCase c = scan_case_make(2, 37, 3, 4, chunks[ci]);
        memcpy(c.dy, ref.dy, seq * sizeof(float));
        scan_case_forward(&c);
        scan_case_backward(&c);
        char what[64];
        snprintf(what, sizeof what, "chunk %d du", chunks[ci]);
        assert_close(what, c.du, ref.du, seq, 1e-5, 1e-2);
        snprintf(what, sizeof what, "chunk %d ddelta", chunks[ci]);
        assert_close(what, c.ddelta, ref.ddelta, seq, 1e-5, 1e-2);
        snprintf(what, sizeof what, "chunk %d dA", chunks[ci]);
        assert_close(what, c.dA, ref.dA, (size_t)c.C * c.N, 1e-5, 1e-2);
        snprintf(what, sizeof what, "chunk %d dB", chunks[ci]);
        assert_close(what, c.dB, ref.dB, bn, 1e-5, 1e-2);
        snprintf(what, sizeof what, "chunk %d dC", chunks[ci]);
        assert_close(what, c.dC, ref.dC, bn, 1e-5, 1e-2);
        snprintf(what, sizeof what, "chunk %d dD", chunks[ci]);
        assert_close(what, c.dD, ref.dD, (size_t)c.C, 1e-5, 1e-2);
        scan_case_free(&c);
    }
    scan_case_free(&ref);
}
END_TEST

/* The gradchecks above can fail: a backward whose dδ is 10% off (as a dropped or
 * mis-scaled term would make it) must be caught at the same eps and tolerance. */
static void scan_case_backward_wrong(void *s) {
    ScanCase *c = s;
    scan_case_backward(c);
    size_t seq = (size_t)c->B * c->T * c->C;
    for (size_t i = 0; i < seq; i++) c->ddelta[i] *= 0.9f;
}

START_TEST(test_scan_gradcheck_catches_a_wrong_backward) {
    ScanCase c = scan_case_make(1, 11, 2, 3, 4);
    size_t seq = (size_t)c.B * c.T * c.C;
    GradcheckOp op = {scan_case_forward, scan_case_backward_wrong, &c, c.y, c.dy, seq, NULL};
    GradcheckTensor t[] = {{"delta", c.delta, c.ddelta, seq}};
    fprintf(stderr, "(the next gradcheck line is expected to FAIL)\n");
    ck_assert_msg(!gradcheck("scan, dδ scaled by 0.9", &op, t, 1, 1e-2f, 2e-2f, 0),
                  "gradcheck passed a backward whose dδ is 10%% off");
    scan_case_free(&c);
}
END_TEST

/* ------------------------------------------------------------ the layer */

static Config small_config(int inner_norms) {
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = 16;
    cfg.model.mamba.d_state = 4;
    cfg.model.mamba.chunk = 8;
    cfg.model.mamba.inner_norms = inner_norms;
    return cfg;
}

/* For finite differences: dt_rank 4, since RMSNorm of the default single δr column is
 * sign(δr)·w, a step that an ε-sized perturbation can flip; and δ drawn in [0.05, 0.5]
 * rather than [0.001, 0.1], so that the scan's state carries over the 19 steps and the
 * gradients of A_log and dt_proj are well above float32 finite-difference noise. */
static Config gradcheck_config(int inner_norms) {
    Config cfg = small_config(inner_norms);
    cfg.model.mamba.dt_rank = 4;
    cfg.model.mamba.dt_min = 0.05f;
    cfg.model.mamba.dt_max = 0.5f;
    return cfg;
}

START_TEST(test_layer_gradient_matches_finite_differences) {
    Config cfg = gradcheck_config(0);
    LayerHarness *h = harness_create(&mamba_kind, &cfg, 2, 19, 41, 0.05f);
    /* ε = 3e-2: dt_proj's and A_log's gradients are small beside L, so float32 rounding
     * of L (∝ 1/ε) dominates the finite-difference error here, not curvature (∝ ε²) */
    ck_assert_msg(harness_gradcheck(h, "mamba layer", 3e-2f, 3e-2f, 64),
                  "mamba layer backward differs from finite differences (see stderr)");
    harness_free(h);
}
END_TEST

START_TEST(test_layer_with_inner_norms_gradient_matches_finite_differences) {
    Config cfg = gradcheck_config(1);
    LayerHarness *h = harness_create(&mamba_kind, &cfg, 2, 19, 42, 0.05f);
    ck_assert_int_eq(harness_param(h, "c_layernorm.weight") >= 0, 1);
    ck_assert_msg(harness_gradcheck(h, "mamba layer inner_norms", 1e-2f, 3e-2f, 64),
                  "mamba layer (inner norms) backward differs from finite differences (see stderr)");
    harness_free(h);
}
END_TEST

/* Backward adds into dx and the parameter gradients: two calls give twice one call. */
START_TEST(test_layer_backward_accumulates) {
    Config cfg = small_config(1);
    LayerHarness *h = harness_create(&mamba_kind, &cfg, 2, 19, 43, 0.05f);
    size_t n = (size_t)h->B * h->T * h->d;
    test_fill_normal(h->dy, n, 44, 1.0f);
    harness_forward(h);
    harness_backward(h);
    float *dx_once = malloc(n * sizeof(float)), *grads_once = malloc(h->params.total * sizeof(float));
    memcpy(dx_once, h->dx, n * sizeof(float));
    memcpy(grads_once, h->grad_data, h->params.total * sizeof(float));
    harness_backward(h);
    for (size_t i = 0; i < n; i++) dx_once[i] *= 2.0f;
    for (size_t i = 0; i < h->params.total; i++) grads_once[i] *= 2.0f;
    assert_close("dx after two backwards", h->dx, dx_once, n, 1e-5, 1e-3);
    for (int p = 0; p < h->params.count; p++) {
        const ParamDecl *pd = &h->params.items[p];
        assert_close(pd->name, h->grad_data + pd->offset, grads_once + pd->offset, pd->numel, 1e-5, 1e-3);
    }
    free(dx_once); free(grads_once);
    harness_free(h);
}
END_TEST

/* ------------------------------------------------------------ PyTorch reference */

static void check_against_fixture(const char *file) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", BRAID_FIXTURE_DIR, file);
    Fixture fx;
    ck_assert_msg(fixture_load(&fx, path) == 0, "cannot load %s (python3 tools/reference/mamba_reference.py)", path);
    const FixtureTensor *x = fixture_get(&fx, "x"), *A_log = fixture_get(&fx, "A_log");
    const FixtureTensor *conv = fixture_get(&fx, "conv1d.weight"), *dt_w = fixture_get(&fx, "dt_proj.weight");
    ck_assert_msg(x && A_log && conv && dt_w, "%s lacks x, A_log, conv1d.weight or dt_proj.weight", path);

    /* the config from the tensors' shapes */
    Config cfg;
    config_defaults(&cfg);
    int B = x->shape[0], T = x->shape[1];
    cfg.model.d_model = x->shape[2];
    cfg.model.mamba.expand = A_log->shape[0] / x->shape[2];
    cfg.model.mamba.d_state = A_log->shape[1];
    cfg.model.mamba.d_conv = conv->shape[2];
    cfg.model.mamba.dt_rank = dt_w->shape[1];
    cfg.model.mamba.inner_norms = 0;
    for (int i = 0; i < fx.count; i++)
        if (strcmp(fx.tensors[i].name, "dt_layernorm.weight") == 0) cfg.model.mamba.inner_norms = 1;
    cfg.model.mamba.chunk = 8;   /* T = 19: two full chunks and a tail; the reference is unchunked */
    cfg.model.norm_eps = 1e-6f;

    LayerHarness *h = harness_create(&mamba_kind, &cfg, B, T, 51, 0.0f);
    size_t n = (size_t)B * T * h->d;
    memcpy(h->x, x->data, n * sizeof(float));
    memcpy(h->dy, fixture_get(&fx, "dy")->data, n * sizeof(float));
    for (int p = 0; p < h->params.count; p++) {
        const ParamDecl *pd = &h->params.items[p];
        const char *short_name = pd->name + strlen(h->layer.prefix) + 1;
        const FixtureTensor *ft = fixture_get(&fx, short_name);
        ck_assert_msg(ft && ft->n == pd->numel, "%s: parameter %s missing or %zu elements, expected %zu",
                      path, short_name, ft ? ft->n : 0, pd->numel);
        memcpy(h->layer.params[p], ft->data, pd->numel * sizeof(float));
    }
    memset(h->dx, 0, n * sizeof(float));
    memset(h->grad_data, 0, h->params.total * sizeof(float));
    harness_forward(h);
    harness_backward(h);

    char what[256];
    snprintf(what, sizeof what, "%s: y", file);
    assert_close(what, h->y, fixture_get(&fx, "y")->data, n, 1e-4, 1e-2);
    snprintf(what, sizeof what, "%s: dx", file);
    assert_close(what, h->dx, fixture_get(&fx, "dx")->data, n, 1e-4, 1e-2);
    for (int p = 0; p < h->params.count; p++) {
        const ParamDecl *pd = &h->params.items[p];
        char grad_name[PARAM_NAME_MAX + 8];
        snprintf(grad_name, sizeof grad_name, "grad.%s", pd->name + strlen(h->layer.prefix) + 1);
        const FixtureTensor *ft = fixture_get(&fx, grad_name);
        ck_assert_msg(ft && ft->n == pd->numel, "%s: %s missing or wrong size", path, grad_name);
        snprintf(what, sizeof what, "%s: %s", file, grad_name);
        assert_close(what, h->layer.grads[p], ft->data, pd->numel, 1e-4, 1e-2);
    }
    harness_free(h);
    fixture_free(&fx);
}

START_TEST(test_layer_matches_pytorch_reference) { check_against_fixture("mamba_layer.bin"); }
END_TEST

START_TEST(test_layer_with_inner_norms_matches_pytorch_reference) {
    check_against_fixture("mamba_layer_norms.bin");
}
END_TEST

/* ------------------------------------------------------------ inits and config */

START_TEST(test_inits_follow_mamba_ssm) {
    Config cfg = small_config(1);
    LayerHarness *h = harness_create(&mamba_kind, &cfg, 1, 4, 61, 0.0f);
    const MambaConfig *m = &cfg.model.mamba;
    int di = m->expand * cfg.model.d_model, N = m->d_state;

    const float *A_log = h->layer.params[harness_param(h, "A_log")];
    for (int i = 0; i < di; i++)
        for (int n = 0; n < N; n++)
            ck_assert_msg(A_log[i * N + n] == logf((float)(n + 1)), "A_log[%d,%d] = %g, expected log(%d) = %g",
                          i, n, A_log[i * N + n], n + 1, logf((float)(n + 1)));

    /* softplus(b_dt) lands in [dt_min, dt_max], and spreads over that range (log-uniform) */
    const float *dt_bias = h->layer.params[harness_param(h, "dt_proj.bias")];
    double lo = 1e30, hi = 0.0, geometric_mid = sqrt((double)m->dt_min * m->dt_max);
    for (int i = 0; i < di; i++) {
        double dt = log1p(exp((double)dt_bias[i]));
        ck_assert_msg(dt >= m->dt_min * (1 - 1e-4) && dt <= m->dt_max * (1 + 1e-4),
                      "softplus(dt_proj.bias[%d]) = %g, outside [%g, %g]", i, dt, (double)m->dt_min,
                      (double)m->dt_max);
        lo = fmin(lo, dt); hi = fmax(hi, dt);
    }
    ck_assert_msg(lo < geometric_mid && hi > geometric_mid,
                  "softplus(dt bias) spans only [%g, %g], all on one side of %g", lo, hi, geometric_mid);

    const float *D = h->layer.params[harness_param(h, "D")];
    for (int i = 0; i < di; i++) ck_assert_msg(D[i] == 1.0f, "D[%d] = %g, expected 1", i, D[i]);

    /* dt_proj.weight within ±R^-0.5, not all zero */
    int dt_w = harness_param(h, "dt_proj.weight");
    double bound = 1.0 / sqrt((double)config_dt_rank(&cfg)), max_abs = 0.0;
    for (size_t i = 0; i < h->params.items[dt_w].numel; i++)
        max_abs = fmax(max_abs, fabs((double)h->layer.params[dt_w][i]));
    ck_assert_msg(max_abs <= bound && max_abs > 0.1 * bound, "max |dt_proj.weight| = %g, bound %g", max_abs, bound);

    /* weight decay: none on A_log, D, biases and norm weights; on the projections */
    const char *no_decay[] = {"A_log", "D", "conv1d.bias", "dt_proj.bias", "dt_layernorm.weight",
                              "b_layernorm.weight", "c_layernorm.weight"};
    for (int i = 0; i < 7; i++)
        ck_assert_msg(h->params.items[harness_param(h, no_decay[i])].no_decay == 1, "%s should have no_decay",
                      no_decay[i]);
    const char *decay[] = {"in_proj.weight", "conv1d.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight"};
    for (int i = 0; i < 5; i++)
        ck_assert_msg(h->params.items[harness_param(h, decay[i])].no_decay == 0, "%s should be decayed", decay[i]);
    harness_free(h);
}
END_TEST

/* dt is floored at 1e-4 even when dt_min is below it (mamba-ssm's dt_init_floor). */
START_TEST(test_dt_bias_init_is_floored) {
    Config cfg = small_config(0);
    cfg.model.mamba.dt_min = 1e-6f;
    cfg.model.mamba.dt_max = 2e-4f;
    LayerHarness *h = harness_create(&mamba_kind, &cfg, 1, 4, 62, 0.0f);
    const float *dt_bias = h->layer.params[harness_param(h, "dt_proj.bias")];
    int floored = 0, di = cfg.model.mamba.expand * cfg.model.d_model;
    for (int i = 0; i < di; i++) {
        double dt = log1p(exp((double)dt_bias[i]));
        ck_assert_msg(dt >= 1e-4 * (1 - 1e-3), "softplus(dt_proj.bias[%d]) = %g, below the floor 1e-4", i, dt);
        floored += fabs(dt - 1e-4) < 1e-7;
    }
    ck_assert_msg(floored > 0, "no dt was floored although most draws lie below 1e-4");
    harness_free(h);
}
END_TEST

START_TEST(test_validate_rejects_bad_settings) {
    Config cfg = small_config(0);
    char err[256] = "";
    ck_assert_int_eq(mamba_kind.validate(&cfg, err, sizeof err), 0);
    cfg.model.mamba.d_state = 0;
    ck_assert_int_eq(mamba_kind.validate(&cfg, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "d_state (0)") != NULL, "error does not name d_state: %s", err);
    cfg = small_config(0);
    cfg.model.mamba.dt_min = 0.5f;
    ck_assert_int_eq(mamba_kind.validate(&cfg, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "dt_min") != NULL, "error does not name dt_min: %s", err);
}
END_TEST

static Suite *mamba_suite(void) {
    Suite *s = suite_create("mamba");
    TCase *kernels = tcase_create("kernels");
    tcase_add_test(kernels, test_conv1d_gradient_matches_finite_differences);
    tcase_add_test(kernels, test_conv1d_is_causal_with_zero_padding);
    tcase_add_test(kernels, test_scan_gradient_matches_finite_differences_ragged_chunks);
    tcase_add_test(kernels, test_scan_gradient_matches_finite_differences_one_chunk);
    tcase_add_test(kernels, test_chunked_scan_equals_naive_double_scan);
    tcase_add_test(kernels, test_threaded_scan_matches_naive_and_single_thread);
    tcase_add_test(kernels, test_scan_backward_is_independent_of_chunk_length);
    tcase_add_test(kernels, test_scan_gradcheck_catches_a_wrong_backward);
    suite_add_tcase(s, kernels);
    TCase *layer = tcase_create("layer");
    tcase_add_test(layer, test_layer_gradient_matches_finite_differences);
    tcase_add_test(layer, test_layer_with_inner_norms_gradient_matches_finite_differences);
    tcase_add_test(layer, test_layer_backward_accumulates);
    tcase_add_test(layer, test_layer_matches_pytorch_reference);
    tcase_add_test(layer, test_layer_with_inner_norms_matches_pytorch_reference);
    tcase_add_test(layer, test_inits_follow_mamba_ssm);
    tcase_add_test(layer, test_dt_bias_init_is_floored);
    tcase_add_test(layer, test_validate_rejects_bad_settings);
    suite_add_tcase(s, layer);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(mamba_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
