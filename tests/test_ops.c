/* test_ops.c — every op in src/core/ops.h against finite differences, the attention op
 * against a naive O(T²) double-precision reference, the attention and dense-FFN layers
 * through the layer harness, and both layers against PyTorch-made fixtures
 * (tools/reference/ops_reference.py).
 *
 * Gradient checks use a random weighted sum of the outputs as the loss (gradcheck.h).
 * Shapes are small and ragged (T = 7, 13) so off-by-one masks and tails show up. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/ops.h"
#include "fixture.h"
#include "gradcheck.h"
#include "layer_harness.h"
#include "layers/layer.h"
#include "models/config.h"

extern const LayerKind attention_kind, sliding_window_kind, ffn_dense_kind;

#define EPS 1e-2f
#define TOL 2e-2f

static float *alloc_normal(size_t n, unsigned long seed, float scale) {
    float *p = braid_malloc(n * sizeof(float), "test tensor");
    test_fill_normal(p, n, seed, scale);
    return p;
}

static float *alloc_zero(size_t n) { return braid_calloc(n, sizeof(float), "test tensor"); }

/* Largest |got − want| over n elements must be ≤ tol · max|want|; the message names the
 * element and both values. */
static void assert_close(const char *what, const float *got, const float *want, size_t n, double tol) {
    double max_want = 0.0, worst = -1.0;
    size_t worst_i = 0;
    for (size_t i = 0; i < n; i++) max_want = fmax(max_want, fabs((double)want[i]));
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)got[i] - (double)want[i]);
        if (!(diff <= worst)) { worst = diff; worst_i = i; }
    }
    ck_assert_msg(worst <= tol * max_want,
                  "%s: element %zu is %.8g, expected %.8g (|diff| %.3g > %.3g = %.0e of max %.4g)",
                  what, worst_i, got[worst_i], want[worst_i], worst, tol * max_want, tol, max_want);
}

/* ---------------------------------------------------------------- matmul */

typedef struct MatmulCase {
    int N, C, OC, use_bias;
    float *inp, *weight, *bias, *out, *dinp, *dweight, *dbias, *dout;
    float wrong_scale;   /* 1: correct backward; ≠1: deliberately wrong (gradcheck self-test) */
} MatmulCase;

static void matmul_case_forward(void *s) {
    MatmulCase *m = s;
    matmul_forward(m->out, m->inp, m->weight, m->use_bias ? m->bias : NULL, m->N, m->C, m->OC, 0);
}

static void matmul_case_backward(void *s) {
    MatmulCase *m = s;
    matmul_backward(m->dinp, m->dweight, m->use_bias ? m->dbias : NULL, m->dout, m->inp, m->weight,
                    m->N, m->C, m->OC);
    if (m->wrong_scale != 1.0f)
        for (int i = 0; i < m->N * m->C; i++) m->dinp[i] *= m->wrong_scale;
}

static MatmulCase matmul_case_make(int N, int C, int OC, int use_bias) {
    MatmulCase m = {N, C, OC, use_bias, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1.0f};
    m.inp = alloc_normal((size_t)N * C, 11, 1.0f);
    m.weight = alloc_normal((size_t)OC * C, 12, 0.5f);
    m.bias = alloc_normal((size_t)OC, 13, 0.5f);
    m.out = alloc_zero((size_t)N * OC);
    m.dout = alloc_zero((size_t)N * OC);
    m.dinp = alloc_zero((size_t)N * C);
    m.dweight = alloc_zero((size_t)OC * C);
    m.dbias = alloc_zero((size_t)OC);
    return m;
}

static void matmul_case_free(MatmulCase *m) {
    free(m->inp); free(m->weight); free(m->bias); free(m->out); free(m->dout);
    free(m->dinp); free(m->dweight); free(m->dbias);
}

static int matmul_gradcheck(MatmulCase *m, const char *what) {
    GradcheckOp op = {matmul_case_forward, matmul_case_backward, m, m->out, m->dout,
                      (size_t)m->N * m->OC, NULL};
    GradcheckTensor t[3] = {
        {"inp", m->inp, m->dinp, (size_t)m->N * m->C},
        {"weight", m->weight, m->dweight, (size_t)m->OC * m->C},
        {"bias", m->bias, m->dbias, (size_t)m->OC},
    };
    return gradcheck(what, &op, t, m->use_bias ? 3 : 2, EPS, TOL, 0);
}

START_TEST(test_matmul_with_bias_gradient_matches_finite_differences) {
    MatmulCase m = matmul_case_make(7, 5, 6, 1);
    ck_assert_msg(matmul_gradcheck(&m, "matmul+bias"), "matmul with bias: gradient mismatch (element above)");
    matmul_case_free(&m);
}
END_TEST

START_TEST(test_matmul_without_bias_gradient_matches_finite_differences) {
    MatmulCase m = matmul_case_make(9, 6, 4, 0);
    ck_assert_msg(matmul_gradcheck(&m, "matmul"), "matmul without bias: gradient mismatch (element above)");
    matmul_case_free(&m);
}
END_TEST

/* A check that cannot fail proves nothing: a backward 10% off must be caught. */
START_TEST(test_gradcheck_rejects_a_backward_scaled_by_1_1) {
    MatmulCase m = matmul_case_make(7, 5, 6, 1);
    m.wrong_scale = 1.1f;
    fprintf(stderr, "(the next FAIL line is expected: gradcheck self-test)\n");
    ck_assert_msg(!matmul_gradcheck(&m, "matmul wrong on purpose"),
                  "gradcheck accepted a backward whose dinp is scaled by 1.1");
    matmul_case_free(&m);
}
END_TEST

/* ---------------------------------------------------------------- embedding */

typedef struct EmbeddingCase {
    int N, C, V;
    int *tokens;
    float *table, *dtable, *out, *dout;
} EmbeddingCase;

static void embedding_case_forward(void *s) {
    EmbeddingCase *e = s;
    embedding_forward(e->out, e->tokens, e->table, e->N, e->C);
}
static void embedding_case_backward(void *s) {
    EmbeddingCase *e = s;
    embedding_backward(e->dtable, e->dout, e->tokens, e->N, e->C);
}

START_TEST(test_embedding_table_gradient_matches_finite_differences) {
    /* tokens repeat (3 and 1 twice): repeated rows must sum their gradients */
    int tokens[8] = {3, 1, 4, 1, 5, 0, 3, 2};
    EmbeddingCase e = {8, 5, 6, tokens, NULL, NULL, NULL, NULL};
    e.table = alloc_normal((size_t)e.V * e.C, 21, 1.0f);
    e.dtable = alloc_zero((size_t)e.V * e.C);
    e.out = alloc_zero((size_t)e.N * e.C);
    e.dout = alloc_zero((size_t)e.N * e.C);
    GradcheckOp op = {embedding_case_forward, embedding_case_backward, &e, e.out, e.dout,
                      (size_t)e.N * e.C, NULL};
    GradcheckTensor t[1] = {{"table", e.table, e.dtable, (size_t)e.V * e.C}};
    ck_assert_msg(gradcheck("embedding", &op, t, 1, EPS, TOL, 0), "embedding: table gradient mismatch");
    free(e.table); free(e.dtable); free(e.out); free(e.dout);
}
END_TEST

/* ---------------------------------------------------------------- rmsnorm */

typedef struct RmsnormCase {
    int N, C;
    float *x, *w, *out, *rstd, *dx, *dw, *dout;
} RmsnormCase;

static void rmsnorm_case_forward(void *s) {
    RmsnormCase *r = s;
    rmsnorm_forward(r->out, r->rstd, r->x, r->w, r->N, r->C, 1e-6f);
}
static void rmsnorm_case_backward(void *s) {
    RmsnormCase *r = s;
    rmsnorm_backward(r->dx, r->dw, r->dout, r->x, r->w, r->rstd, r->N, r->C);
}

START_TEST(test_rmsnorm_gradient_matches_finite_differences) {
    RmsnormCase r = {6, 8, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    r.x = alloc_normal(48, 31, 1.0f);
    r.w = alloc_normal(8, 32, 1.0f);
    for (int c = 0; c < 8; c++) r.w[c] += 1.0f;
    r.out = alloc_zero(48); r.rstd = alloc_zero(6); r.dx = alloc_zero(48);
    r.dw = alloc_zero(8); r.dout = alloc_zero(48);
    GradcheckOp op = {rmsnorm_case_forward, rmsnorm_case_backward, &r, r.out, r.dout, 48, NULL};
    GradcheckTensor t[2] = {{"x", r.x, r.dx, 48}, {"weight", r.w, r.dw, 8}};
    ck_assert_msg(gradcheck("rmsnorm", &op, t, 2, 3e-3f, TOL, 0), "rmsnorm: gradient mismatch");
    free(r.x); free(r.w); free(r.out); free(r.rstd); free(r.dx); free(r.dw); free(r.dout);
}
END_TEST

/* ---------------------------------------------------------------- swiglu */

typedef struct SwigluCase {
    size_t n;
    float *gate, *up, *out, *dgate, *dup, *dout;
} SwigluCase;

static void swiglu_case_forward(void *s) {
    SwigluCase *w = s;
    swiglu_forward(w->out, w->gate, w->up, w->n);
}
static void swiglu_case_backward(void *s) {
    SwigluCase *w = s;
    swiglu_backward(w->dgate, w->dup, w->dout, w->gate, w->up, w->n);
}

START_TEST(test_swiglu_gradient_matches_finite_differences) {
    SwigluCase w = {40, NULL, NULL, NULL, NULL, NULL, NULL};
    w.gate = alloc_normal(40, 41, 2.0f);
    w.up = alloc_normal(40, 42, 1.0f);
    w.out = alloc_zero(40); w.dgate = alloc_zero(40); w.dup = alloc_zero(40); w.dout = alloc_zero(40);
    GradcheckOp op = {swiglu_case_forward, swiglu_case_backward, &w, w.out, w.dout, 40, NULL};
    GradcheckTensor t[2] = {{"gate", w.gate, w.dgate, 40}, {"up", w.up, w.dup, 40}};
    ck_assert_msg(gradcheck("swiglu", &op, t, 2, 3e-3f, TOL, 0), "swiglu: gradient mismatch");
    free(w.gate); free(w.up); free(w.out); free(w.dgate); free(w.dup); free(w.dout);
}
END_TEST

/* ---------------------------------------------------------------- cross-entropy */

/* The op returns a scalar, so the gradcheck has no output tensor: the loss goes in
 * through extra_loss (double), scaled by grad_scale so a forgotten scale is caught. */
typedef struct CrossEntropyCase {
    int N, V;
    const int *targets;
    float grad_scale;
    float *logits, *dlogits, *dlogits_tmp;
    double loss;
} CrossEntropyCase;

static void cross_entropy_case_forward(void *s) {
    CrossEntropyCase *c = s;
    c->loss = c->grad_scale * cross_entropy_forward_backward(NULL, c->logits, c->targets, c->N, c->V,
                                                              c->grad_scale, NULL, NULL);
}
static void cross_entropy_case_backward(void *s) {
    CrossEntropyCase *c = s;
    cross_entropy_forward_backward(c->dlogits_tmp, c->logits, c->targets, c->N, c->V, c->grad_scale,
                                   NULL, NULL);
    for (int i = 0; i < c->N * c->V; i++) c->dlogits[i] += c->dlogits_tmp[i];
}

static const int ce_targets[6] = {2, -100, 0, 4, -100, 3};

START_TEST(test_cross_entropy_logits_gradient_matches_finite_differences) {
    CrossEntropyCase c = {6, 5, ce_targets, 0.25f, NULL, NULL, NULL, 0.0};
    c.logits = alloc_normal(30, 51, 2.0f);
    c.dlogits = alloc_zero(30);
    c.dlogits_tmp = alloc_zero(30);
    float dummy_out = 0, dummy_dout = 0;
    GradcheckOp op = {cross_entropy_case_forward, cross_entropy_case_backward, &c, &dummy_out,
                      &dummy_dout, 0, &c.loss};
    GradcheckTensor t[1] = {{"logits", c.logits, c.dlogits, 30}};
    ck_assert_msg(gradcheck("cross_entropy", &op, t, 1, 3e-3f, TOL, 0), "cross_entropy: gradient mismatch");
    free(c.logits); free(c.dlogits); free(c.dlogits_tmp);
}
END_TEST

START_TEST(test_cross_entropy_loss_matches_direct_double_computation) {
    const int N = 6, V = 5;
    float *logits = alloc_normal(30, 52, 3.0f);
    logits[3 * V + 4] = 50.0f;   /* a large logit: a naive exp would lose the other terms */
    float *dlogits = alloc_normal(30, 53, 1.0f);   /* garbage: must be overwritten */
    double want = 0.0;
    int want_correct = 0;
    for (int n = 0; n < N; n++) {
        if (ce_targets[n] == -100) continue;
        double sum = 0.0;
        int argmax = 0;
        for (int v = 0; v < V; v++) {
            sum += exp((double)logits[n * V + v]);
            if (logits[n * V + v] > logits[n * V + argmax]) argmax = v;
        }
        want += log(sum) - logits[n * V + ce_targets[n]];
        want_correct += argmax == ce_targets[n];
    }
    int valid = -1, correct = -1;
    double got = cross_entropy_forward_backward(dlogits, logits, ce_targets, N, V, 1.0f, &valid, &correct);
    ck_assert_msg(fabs(got - want) <= 1e-5 * fabs(want), "loss sum %.10g, direct double %.10g (diff %.3g)",
                  got, want, fabs(got - want));
    ck_assert_msg(valid == 4, "n_valid %d, expected 4 (two targets are -100)", valid);
    ck_assert_msg(correct == want_correct, "n_correct %d, expected %d", correct, want_correct);
    ck_assert_msg(want_correct > 0, "test data should have at least one correct argmax");
    for (int n = 0; n < N; n++) {
        double row_sum = 0.0;
        for (int v = 0; v < V; v++) row_sum += dlogits[n * V + v];
        if (ce_targets[n] == -100) {
            for (int v = 0; v < V; v++)
                ck_assert_msg(dlogits[n * V + v] == 0.0f, "ignored row %d: dlogits[%d] = %g, expected 0",
                              n, v, dlogits[n * V + v]);
        } else {
            ck_assert_msg(fabs(row_sum) < 1e-6, "row %d: dlogits sum to %g, expected 0 (softmax − onehot)",
                          n, row_sum);
        }
    }
    free(logits); free(dlogits);
}
END_TEST

/* ---------------------------------------------------------------- rope */

static double dot_double(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

START_TEST(test_rope_backward_is_the_transpose_of_forward) {
    const int B = 2, T = 13, H = 3, hd = 8;
    size_t n = (size_t)B * T * H * hd;
    float *x = alloc_normal(n, 61, 1.0f), *y = alloc_normal(n, 62, 1.0f);
    float *rx = braid_malloc(n * sizeof(float), "rx"), *ry = braid_malloc(n * sizeof(float), "ry");
    memcpy(rx, x, n * sizeof(float));
    memcpy(ry, y, n * sizeof(float));
    rope_forward(rx, B, T, H, hd, 10000.0f);
    rope_backward(ry, B, T, H, hd, 10000.0f);
    double lhs = dot_double(rx, y, n), rhs = dot_double(x, ry, n);
    ck_assert_msg(fabs(lhs - rhs) <= 1e-5 * (fabs(lhs) + 1.0),
                  "<rope(x), y> = %.9g but <x, rope_backward(y)> = %.9g (diff %.3g)", lhs, rhs, fabs(lhs - rhs));
    /* and the rotation actually did something (a no-op would pass the line above) */
    size_t where;
    double moved = max_rel_diff(rx, x, n, 1.0, &where);
    ck_assert_msg(moved > 1e-2, "rope_forward left x unchanged (max rel change %.3g)", moved);
    free(x); free(y); free(rx); free(ry);
}
END_TEST

START_TEST(test_rope_preserves_the_norm_of_every_rotated_pair) {
    const int B = 1, T = 13, H = 2, hd = 8, half = hd / 2;
    size_t n = (size_t)B * T * H * hd;
    float *x = alloc_normal(n, 63, 1.0f), *rx = braid_malloc(n * sizeof(float), "rx");
    memcpy(rx, x, n * sizeof(float));
    rope_forward(rx, B, T, H, hd, 10000.0f);
    for (size_t row = 0; row < n / hd; row++)
        for (int i = 0; i < half; i++) {
            const float *a = x + row * hd, *r = rx + row * hd;
            double before = (double)a[i] * a[i] + (double)a[i + half] * a[i + half];
            double after = (double)r[i] * r[i] + (double)r[i + half] * r[i + half];
            ck_assert_msg(fabs(after - before) <= 1e-5 * (before + 1e-3),
                          "row %zu pair %d: norm² %.8g became %.8g", row, i, before, after);
        }
    free(x); free(rx);
}
END_TEST

START_TEST(test_rope_rotates_pair_i_by_position_times_base_power) {
    /* Position 0 is untouched; position t rotates (x_i, x_{i+hd/2}) by t·base^(−2i/hd). */
    const int B = 1, T = 13, H = 2, hd = 8, half = hd / 2;
    const double base = 500.0;
    size_t n = (size_t)B * T * H * hd;
    float *x = alloc_normal(n, 64, 1.0f), *rx = braid_malloc(n * sizeof(float), "rx");
    memcpy(rx, x, n * sizeof(float));
    rope_forward(rx, B, T, H, hd, (float)base);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < half; i++) {
                size_t o = ((size_t)t * H + h) * hd;
                double angle = t * pow(base, -2.0 * i / hd);
                double a = x[o + i], c = x[o + i + half];
                double want1 = a * cos(angle) - c * sin(angle), want2 = a * sin(angle) + c * cos(angle);
                ck_assert_msg(fabs(rx[o + i] - want1) < 1e-5 && fabs(rx[o + i + half] - want2) < 1e-5,
                              "t=%d h=%d i=%d: got (%.7g, %.7g), expected (%.7g, %.7g)", t, h, i,
                              rx[o + i], rx[o + i + half], want1, want2);
            }
    free(x); free(rx);
}
END_TEST

/* ---------------------------------------------------------------- attention op */

typedef struct AttentionCase {
    int B, T, H, Hkv, hd, window;
    float *q, *k, *v, *out, *lse, *dq, *dk, *dv, *dout;
} AttentionCase;

static AttentionCase attention_case_make(int B, int T, int H, int Hkv, int hd, int window, unsigned long seed) {
    AttentionCase a = {B, T, H, Hkv, hd, window, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    size_t qn = (size_t)B * T * H * hd, kvn = (size_t)B * T * Hkv * hd;
    a.q = alloc_normal(qn, seed, 1.0f);
    a.k = alloc_normal(kvn, seed + 1, 1.0f);
    a.v = alloc_normal(kvn, seed + 2, 1.0f);
    a.out = alloc_zero(qn); a.dout = alloc_zero(qn); a.dq = alloc_zero(qn);
    a.lse = alloc_zero((size_t)B * H * T);
    a.dk = alloc_zero(kvn); a.dv = alloc_zero(kvn);
    return a;
}

static void attention_case_free(AttentionCase *a) {
    free(a->q); free(a->k); free(a->v); free(a->out); free(a->lse);
    free(a->dq); free(a->dk); free(a->dv); free(a->dout);
}

static void attention_case_forward(void *s) {
    AttentionCase *a = s;
    attention_forward(a->out, a->lse, a->q, a->k, a->v, a->B, a->T, a->H, a->Hkv, a->hd, a->window);
}
static void attention_case_backward(void *s) {
    AttentionCase *a = s;
    attention_backward(a->dq, a->dk, a->dv, a->dout, a->q, a->k, a->v, a->out, a->lse,
                       a->B, a->T, a->H, a->Hkv, a->hd, a->window);
}

/* Naive reference: the full T×T score matrix in double, masked, softmaxed. */
static void attention_naive(double *out, double *lse, const AttentionCase *a) {
    int B = a->B, T = a->T, H = a->H, Hkv = a->Hkv, hd = a->hd;
    double scale = 1.0 / sqrt((double)hd);
    double *s = malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / Hkv);
            for (int t = 0; t < T; t++) {
                double m = -INFINITY;
                for (int j = 0; j < T; j++) {
                    int visible = j <= t && (a->window <= 0 || j > t - a->window);
                    s[j] = -INFINITY;
                    if (!visible) continue;
                    double d = 0.0;
                    for (int c = 0; c < hd; c++)
                        d += (double)a->q[(((size_t)b * T + t) * H + h) * hd + c] *
                             a->k[(((size_t)b * T + j) * Hkv + g) * hd + c];
                    s[j] = d * scale;
                    m = fmax(m, s[j]);
                }
                double z = 0.0;
                for (int j = 0; j < T; j++) z += exp(s[j] - m);
                lse[((size_t)b * H + h) * T + t] = m + log(z);
                for (int c = 0; c < hd; c++) {
                    double acc = 0.0;
                    for (int j = 0; j < T; j++)
                        acc += exp(s[j] - m) / z * a->v[(((size_t)b * T + j) * Hkv + g) * hd + c];
                    out[(((size_t)b * T + t) * H + h) * hd + c] = acc;
                }
            }
        }
    free(s);
}

static void check_attention_against_naive(AttentionCase *a, const char *what) {
    size_t qn = (size_t)a->B * a->T * a->H * a->hd, ln = (size_t)a->B * a->H * a->T;
    double *out = malloc(qn * sizeof(double)), *lse = malloc(ln * sizeof(double));
    attention_naive(out, lse, a);
    attention_case_forward(a);
    for (size_t i = 0; i < qn; i++)
        ck_assert_msg(fabs(a->out[i] - out[i]) < 2e-5 * (1.0 + fabs(out[i])),
                      "%s: out[%zu] = %.8g, naive double %.8g (diff %.3g)", what, i, a->out[i], out[i],
                      fabs(a->out[i] - out[i]));
    for (size_t i = 0; i < ln; i++)
        ck_assert_msg(fabs(a->lse[i] - lse[i]) < 2e-5 * (1.0 + fabs(lse[i])),
                      "%s: lse[%zu] = %.8g, naive double %.8g (diff %.3g)", what, i, a->lse[i], lse[i],
                      fabs(a->lse[i] - lse[i]));
    free(out); free(lse);
}

static int attention_gradcheck(AttentionCase *a, const char *what) {
    size_t qn = (size_t)a->B * a->T * a->H * a->hd, kvn = (size_t)a->B * a->T * a->Hkv * a->hd;
    GradcheckOp op = {attention_case_forward, attention_case_backward, a, a->out, a->dout, qn, NULL};
    GradcheckTensor t[3] = {{"q", a->q, a->dq, qn}, {"k", a->k, a->dk, kvn}, {"v", a->v, a->dv, kvn}};
    return gradcheck(what, &op, t, 3, 3e-3f, TOL, 0);
}

START_TEST(test_attention_forward_matches_naive_reference_full_gqa_and_window) {
    struct { int B, T, H, Hkv, hd, window; const char *what; } cases[] = {
        {2, 7, 2, 2, 8, 0, "full T=7"},
        {2, 13, 4, 2, 8, 0, "gqa H=4 Hkv=2 T=13"},
        {2, 13, 4, 1, 4, 0, "multi-query H=4 Hkv=1 T=13"},
        {2, 13, 4, 2, 8, 3, "window w=3 T=13"},
        {1, 7, 2, 2, 8, 1, "window w=1 T=7"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        AttentionCase a = attention_case_make(cases[c].B, cases[c].T, cases[c].H, cases[c].Hkv,
                                              cases[c].hd, cases[c].window, 70 + c);
        check_attention_against_naive(&a, cases[c].what);
        attention_case_free(&a);
    }
}
END_TEST

START_TEST(test_attention_window_at_least_T_equals_full_attention) {
    AttentionCase full = attention_case_make(2, 13, 4, 2, 8, 0, 80);
    AttentionCase wide = attention_case_make(2, 13, 4, 2, 8, 13, 80);
    attention_case_forward(&full);
    attention_case_forward(&wide);
    assert_close("window=T out vs full", wide.out, full.out, (size_t)2 * 13 * 4 * 8, 0.0);
    attention_case_free(&full);
    attention_case_free(&wide);
}
END_TEST

START_TEST(test_attention_full_gradient_matches_finite_differences) {
    AttentionCase a = attention_case_make(2, 7, 2, 2, 8, 0, 90);
    ck_assert_msg(attention_gradcheck(&a, "attention full T=7"), "attention full: gradient mismatch");
    attention_case_free(&a);
}
END_TEST

START_TEST(test_attention_gqa_gradient_matches_finite_differences) {
    AttentionCase a = attention_case_make(2, 13, 4, 2, 8, 0, 91);
    ck_assert_msg(attention_gradcheck(&a, "attention gqa T=13"), "attention GQA: gradient mismatch");
    attention_case_free(&a);
}
END_TEST

START_TEST(test_attention_sliding_window_gradient_matches_finite_differences) {
    AttentionCase a = attention_case_make(2, 13, 4, 2, 8, 3, 92);
    ck_assert_msg(attention_gradcheck(&a, "attention window=3 T=13"), "sliding window: gradient mismatch");
    attention_case_free(&a);
}
END_TEST

START_TEST(test_attention_backward_accumulates_into_gradients) {
    AttentionCase a = attention_case_make(1, 7, 2, 1, 4, 0, 93);
    size_t qn = 7 * 2 * 4, kvn = 7 * 1 * 4;
    test_fill_normal(a.dout, qn, 94, 1.0f);
    attention_case_forward(&a);
    attention_case_backward(&a);
    float *once = braid_malloc((qn + 2 * kvn) * sizeof(float), "once");
    memcpy(once, a.dq, qn * sizeof(float));
    memcpy(once + qn, a.dk, kvn * sizeof(float));
    memcpy(once + qn + kvn, a.dv, kvn * sizeof(float));
    attention_case_backward(&a);
    for (size_t i = 0; i < qn; i++) once[i] *= 2.0f;
    for (size_t i = qn; i < qn + 2 * kvn; i++) once[i] *= 2.0f;
    assert_close("dq after two backwards", a.dq, once, qn, 1e-6);
    assert_close("dk after two backwards", a.dk, once + qn, kvn, 1e-6);
    assert_close("dv after two backwards", a.dv, once + qn + kvn, kvn, 1e-6);
    free(once);
    attention_case_free(&a);
}
END_TEST

/* ---------------------------------------------------------------- layers (harness) */

static Config layer_config(int d, int H, int Hkv, const char *position, int window) {
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = d;
    cfg.model.n_layers = 2;
    cfg.model.init_std = 0.3f;   /* larger than training's 0.02 so softmax rows are not flat */
    cfg.model.attention.n_heads = H;
    cfg.model.attention.n_kv_heads = Hkv;
    cfg.model.attention.window = window;
    snprintf(cfg.model.attention.position, sizeof cfg.model.attention.position, "%s", position);
    return cfg;
}

static void layer_gradcheck(const LayerKind *kind, const Config *cfg, int B, int T, const char *what) {
    LayerHarness *h = harness_create(kind, cfg, B, T, 100, 0.05f);
    ck_assert_msg(harness_gradcheck(h, what, EPS, TOL, 24), "%s: gradient mismatch (element above)", what);
    harness_free(h);
}

START_TEST(test_attention_layer_gradient_matches_finite_differences_without_rope) {
    Config cfg = layer_config(16, 4, 0, "none", 0);
    layer_gradcheck(&attention_kind, &cfg, 2, 7, "attention layer, no rope");
}
END_TEST

START_TEST(test_attention_layer_gradient_matches_finite_differences_with_rope) {
    Config cfg = layer_config(16, 2, 0, "rope", 0);
    layer_gradcheck(&attention_kind, &cfg, 2, 7, "attention layer, rope");
}
END_TEST

START_TEST(test_attention_layer_gqa_gradient_matches_finite_differences) {
    Config cfg = layer_config(16, 4, 2, "rope", 0);
    layer_gradcheck(&attention_kind, &cfg, 2, 13, "attention layer, gqa+rope");
}
END_TEST

START_TEST(test_sliding_window_layer_gradient_matches_finite_differences) {
    Config cfg = layer_config(16, 4, 2, "rope", 3);
    layer_gradcheck(&sliding_window_kind, &cfg, 2, 13, "sliding_window layer w=3");
}
END_TEST

START_TEST(test_sliding_window_layer_differs_from_full_attention) {
    /* the kind, not only the config's window, decides whether a window applies */
    Config cfg = layer_config(16, 4, 2, "none", 3);
    LayerHarness *full = harness_create(&attention_kind, &cfg, 1, 13, 101, 0.05f);
    LayerHarness *win = harness_create(&sliding_window_kind, &cfg, 1, 13, 101, 0.05f);
    harness_forward(full);
    harness_forward(win);
    size_t d = 16;
    /* rows t < w see the same keys in both; later rows must differ */
    assert_close("first w rows of window vs full", win->y, full->y, 3 * d, 1e-6);
    size_t where;
    double diff = max_rel_diff(win->y + 3 * d, full->y + 3 * d, 10 * d, 1e-3, &where);
    ck_assert_msg(diff > 1e-3, "sliding_window output equals full attention beyond the window (max rel %.3g)", diff);
    harness_free(full);
    harness_free(win);
}
END_TEST

START_TEST(test_ffn_dense_layer_gradient_matches_finite_differences) {
    Config cfg = layer_config(16, 4, 0, "none", 0);
    cfg.model.ffn_dense.hidden = 24;
    layer_gradcheck(&ffn_dense_kind, &cfg, 2, 7, "ffn_dense layer");
}
END_TEST

/* Backward must add to dx and the parameter grads (residual branches and gradient
 * accumulation rely on it): a second backward from prefilled buffers gives prefill + once. */
static void check_layer_backward_accumulates(const LayerKind *kind, const Config *cfg, const char *what) {
    LayerHarness *h = harness_create(kind, cfg, 2, 7, 102, 0.05f);
    size_t n = (size_t)h->B * h->T * h->d, np = h->params.total;
    test_fill_normal(h->dy, n, 103, 1.0f);
    harness_forward(h);
    harness_backward(h);
    float *once = braid_malloc((n + np) * sizeof(float), "once");
    memcpy(once, h->dx, n * sizeof(float));
    memcpy(once + n, h->grad_data, np * sizeof(float));
    float *prefill = alloc_normal(n + np, 104, 1.0f);
    memcpy(h->dx, prefill, n * sizeof(float));
    memcpy(h->grad_data, prefill + n, np * sizeof(float));
    harness_backward(h);
    float *want = braid_malloc((n + np) * sizeof(float), "want");
    for (size_t i = 0; i < n + np; i++) want[i] = prefill[i] + once[i];
    char label[128];
    snprintf(label, sizeof label, "%s dx after prefill", what);
    assert_close(label, h->dx, want, n, 1e-6);
    snprintf(label, sizeof label, "%s param grads after prefill", what);
    assert_close(label, h->grad_data, want + n, np, 1e-6);
    free(once); free(prefill); free(want);
    harness_free(h);
}

START_TEST(test_attention_layer_backward_accumulates_into_dx_and_grads) {
    Config cfg = layer_config(16, 4, 2, "rope", 3);
    check_layer_backward_accumulates(&attention_kind, &cfg, "attention");
    check_layer_backward_accumulates(&sliding_window_kind, &cfg, "sliding_window");
}
END_TEST

START_TEST(test_ffn_dense_layer_backward_accumulates_into_dx_and_grads) {
    Config cfg = layer_config(16, 4, 0, "none", 0);
    cfg.model.ffn_dense.hidden = 24;
    check_layer_backward_accumulates(&ffn_dense_kind, &cfg, "ffn_dense");
}
END_TEST

/* ---------------------------------------------------------------- PyTorch fixtures */

static const FixtureTensor *fixture_tensor(const Fixture *fx, const char *case_name, const char *name,
                                           size_t expect_n) {
    char full[256];
    snprintf(full, sizeof full, "%s.%s", case_name, name);
    const FixtureTensor *t = fixture_get(fx, full);
    ck_assert_msg(t != NULL, "fixture has no tensor %s", full);
    ck_assert_msg(expect_n == 0 || t->n == expect_n, "fixture %s has %zu elements, the layer expects %zu",
                  full, t->n, expect_n);
    return t;
}

/* Loads inputs and weights of one case into a harness, runs forward and backward and
 * compares y, dx and every weight gradient with PyTorch's (float64, rounded to float32). */
static void check_layer_against_fixture(const LayerKind *kind, const Fixture *fx, const char *case_name,
                                        const char *const *params, int n_params) {
    /* config = [B, T, d_model, n_heads, n_kv_heads, rope, window, rope_base, ffn_hidden] */
    const FixtureTensor *meta = fixture_tensor(fx, case_name, "config", 9);
    int B = (int)meta->data[0], T = (int)meta->data[1];
    Config cfg = layer_config((int)meta->data[2], (int)meta->data[3], (int)meta->data[4],
                              meta->data[5] != 0.0f ? "rope" : "none", (int)meta->data[6]);
    cfg.model.attention.rope_base = meta->data[7];
    cfg.model.ffn_dense.hidden = (int)meta->data[8];
    LayerHarness *h = harness_create(kind, &cfg, B, T, 1, 0.0f);
    size_t n = (size_t)B * T * h->d;
    ck_assert_int_eq(h->layer.n_params, n_params);
    memcpy(h->x, fixture_tensor(fx, case_name, "x", n)->data, n * sizeof(float));
    for (int i = 0; i < n_params; i++) {
        int p = harness_param(h, params[i]);
        ck_assert_msg(p >= 0, "layer %s has no parameter %s", kind->name, params[i]);
        const ParamDecl *pd = &h->params.items[p];
        memcpy(h->layer.params[p], fixture_tensor(fx, case_name, params[i], pd->numel)->data,
               pd->numel * sizeof(float));
    }
    harness_forward(h);
    char what[256];
    snprintf(what, sizeof what, "%s y", case_name);
    assert_close(what, h->y, fixture_tensor(fx, case_name, "y", n)->data, n, 1e-4);

    memcpy(h->dy, fixture_tensor(fx, case_name, "dy", n)->data, n * sizeof(float));
    memset(h->dx, 0, n * sizeof(float));
    memset(h->grad_data, 0, h->params.total * sizeof(float));
    harness_backward(h);
    snprintf(what, sizeof what, "%s dx", case_name);
    assert_close(what, h->dx, fixture_tensor(fx, case_name, "grad.x", n)->data, n, 1e-4);
    for (int i = 0; i < n_params; i++) {
        int p = harness_param(h, params[i]);
        char gname[160];
        snprintf(gname, sizeof gname, "grad.%s", params[i]);
        snprintf(what, sizeof what, "%s %s", case_name, gname);
        const ParamDecl *pd = &h->params.items[p];
        assert_close(what, h->layer.grads[p], fixture_tensor(fx, case_name, gname, pd->numel)->data,
                     pd->numel, 1e-4);
    }
    harness_free(h);
}

START_TEST(test_attention_layer_matches_pytorch_reference) {
    Fixture fx;
    ck_assert_msg(fixture_load(&fx, BRAID_FIXTURE_DIR "/attention_layer.bin") == 0,
                  "cannot load attention_layer.bin (run tools/reference/make_fixtures.sh)");
    static const char *const params[] = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"};
    check_layer_against_fixture(&attention_kind, &fx, "full_norope", params, 4);
    check_layer_against_fixture(&attention_kind, &fx, "gqa_rope", params, 4);
    check_layer_against_fixture(&sliding_window_kind, &fx, "window_gqa_rope", params, 4);
    fixture_free(&fx);
}
END_TEST

START_TEST(test_ffn_dense_layer_matches_pytorch_reference) {
    Fixture fx;
    ck_assert_msg(fixture_load(&fx, BRAID_FIXTURE_DIR "/ffn_dense_layer.bin") == 0,
                  "cannot load ffn_dense_layer.bin (run tools/reference/make_fixtures.sh)");
    static const char *const params[] = {"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
    check_layer_against_fixture(&ffn_dense_kind, &fx, "swiglu", params, 3);
    fixture_free(&fx);
}
END_TEST

/* ---------------------------------------------------------------- suite */

static Suite *ops_suite(void) {
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("ops");
    tcase_add_test(tc, test_matmul_with_bias_gradient_matches_finite_differences);
    tcase_add_test(tc, test_matmul_without_bias_gradient_matches_finite_differences);
    tcase_add_test(tc, test_gradcheck_rejects_a_backward_scaled_by_1_1);
    tcase_add_test(tc, test_embedding_table_gradient_matches_finite_differences);
    tcase_add_test(tc, test_rmsnorm_gradient_matches_finite_differences);
    tcase_add_test(tc, test_swiglu_gradient_matches_finite_differences);
    tcase_add_test(tc, test_cross_entropy_logits_gradient_matches_finite_differences);
    tcase_add_test(tc, test_cross_entropy_loss_matches_direct_double_computation);
    tcase_add_test(tc, test_rope_backward_is_the_transpose_of_forward);
    tcase_add_test(tc, test_rope_preserves_the_norm_of_every_rotated_pair);
    tcase_add_test(tc, test_rope_rotates_pair_i_by_position_times_base_power);
    tcase_add_test(tc, test_attention_forward_matches_naive_reference_full_gqa_and_window);
    tcase_add_test(tc, test_attention_window_at_least_T_equals_full_attention);
    tcase_add_test(tc, test_attention_full_gradient_matches_finite_differences);
    tcase_add_test(tc, test_attention_gqa_gradient_matches_finite_differences);
    tcase_add_test(tc, test_attention_sliding_window_gradient_matches_finite_differences);
    tcase_add_test(tc, test_attention_backward_accumulates_into_gradients);
    tcase_add_test(tc, test_attention_layer_gradient_matches_finite_differences_without_rope);
    tcase_add_test(tc, test_attention_layer_gradient_matches_finite_differences_with_rope);
    tcase_add_test(tc, test_attention_layer_gqa_gradient_matches_finite_differences);
    tcase_add_test(tc, test_sliding_window_layer_gradient_matches_finite_differences);
    tcase_add_test(tc, test_sliding_window_layer_differs_from_full_attention);
    tcase_add_test(tc, test_ffn_dense_layer_gradient_matches_finite_differences);
    tcase_add_test(tc, test_attention_layer_backward_accumulates_into_dx_and_grads);
    tcase_add_test(tc, test_ffn_dense_layer_backward_accumulates_into_dx_and_grads);
    tcase_add_test(tc, test_attention_layer_matches_pytorch_reference);
    tcase_add_test(tc, test_ffn_dense_layer_matches_pytorch_reference);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(ops_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
