/* gradcheck.c — see gradcheck.h. */
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/core/rng.h"

static double weighted_loss(GradcheckOp *op) {
    op->forward(op->state);
    double loss = 0.0;
    for (size_t i = 0; i < op->n_out; i++) loss += (double)op->out[i] * (double)op->dout[i];
    if (op->extra_loss) loss += *op->extra_loss;
    return loss;
}

int gradcheck(const char *what, GradcheckOp *op, GradcheckTensor *tensors, int n_tensors,
              float eps, float tol, int max_checks) {
    Rng rng;
    rng_seed(&rng, 1234);
    for (size_t i = 0; i < op->n_out; i++) op->dout[i] = rng_normal(&rng);

    for (int t = 0; t < n_tensors; t++) memset(tensors[t].grad, 0, tensors[t].n * sizeof(float));
    op->forward(op->state);
    op->backward(op->state);

    int ok = 1;
    for (int t = 0; t < n_tensors; t++) {
        GradcheckTensor *g = &tensors[t];
        float *analytic = malloc(g->n * sizeof(float));
        memcpy(analytic, g->grad, g->n * sizeof(float));
        double max_grad = 0.0;
        for (size_t i = 0; i < g->n; i++) max_grad = fmax(max_grad, fabs(analytic[i]));

        size_t checks = (max_checks > 0 && (size_t)max_checks < g->n) ? (size_t)max_checks : g->n;
        double worst = 0.0;
        size_t worst_i = 0;
        double worst_a = 0, worst_n = 0;
        for (size_t c = 0; c < checks; c++) {
            size_t i = checks == g->n ? c : (c * g->n) / checks + (c * 7919) % (g->n / checks);
            float saved = g->value[i];
            g->value[i] = saved + eps;
            double lp = weighted_loss(op);
            g->value[i] = saved - eps;
            double lm = weighted_loss(op);
            g->value[i] = saved;
            double numeric = (lp - lm) / (2.0 * (double)eps);
            double a = analytic[i];
            double bound = tol * (fabs(numeric) + 0.1 * max_grad + 1e-4);
            double ratio = fabs(a - numeric) / bound;
            if (ratio > worst) { worst = ratio; worst_i = i; worst_a = a; worst_n = numeric; }
        }
        int pass = worst <= 1.0;
        fprintf(stderr, "gradcheck %-28s %-14s %s  worst |a-n|/bound %.3f (checked %zu of %zu)\n",
                what, g->name, pass ? "ok  " : "FAIL", worst, checks, g->n);
        if (!pass) {
            fprintf(stderr, "  %s: %s[%zu] analytic %.6g numeric %.6g diff %.3g (max |grad| %.3g)\n",
                    what, g->name, worst_i, worst_a, worst_n, fabs(worst_a - worst_n), max_grad);
            ok = 0;
        }
        free(analytic);
    }
    op->forward(op->state);   /* leave outputs consistent with the unperturbed inputs */
    return ok;
}

void test_fill_normal(float *x, size_t n, unsigned long seed, float scale) {
    Rng rng;
    rng_seed(&rng, seed);
    rng_fill_normal(&rng, x, n, scale);
}

double max_rel_diff(const float *a, const float *b, size_t n, double floor, size_t *where) {
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / (fabs((double)b[i]) + floor);
        if (!(d <= worst)) { worst = d; wi = i; }   /* NaN counts as worst */
    }
    if (where) *where = wi;
    return worst;
}
