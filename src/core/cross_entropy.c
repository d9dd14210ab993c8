/* cross_entropy.c — softmax cross-entropy over a vocabulary, fused with its gradient.
 *
 * Per row n with target y ≠ −100 (ignored rows contribute nothing):
 *   lse_n   = m + log Σ_v exp(logits[n,v] − m),   m = max_v logits[n,v]   (stable)
 *   loss_n  = lse_n − logits[n,y]
 *   dlogits[n,v] = grad_scale · (exp(logits[n,v] − lse_n) − [v == y])
 * Returns Σ_n loss_n (the caller divides by the number of valid targets, possibly
 * over several micro-batches: that is why the sum, not the mean, comes back).
 * The loss is accumulated in double so a sum over many tokens stays exact to float. */
#include <math.h>
#include "common.h"
#include "ops.h"

#define IGNORE_INDEX (-100)

double cross_entropy_forward_backward(float *dlogits, const float *logits, const int *targets,
                                      int N, int V, float grad_scale, int *n_valid, int *n_correct) {
    double loss_sum = 0.0;
    int valid = 0, correct = 0;
    #pragma omp parallel for reduction(+:loss_sum, valid, correct) if ((long)N * V > 32768)
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        float *drow = dlogits ? dlogits + (size_t)n * V : NULL;
        int y = targets[n];
        if (y == IGNORE_INDEX) {
            if (drow) for (int v = 0; v < V; v++) drow[v] = 0.0f;
            continue;
        }
        BRAID_CHECK(y >= 0 && y < V, "cross_entropy: target %d at row %d outside [0, %d)", y, n, V);
        int argmax = 0;
        float m = row[0];
        for (int v = 1; v < V; v++)
            if (row[v] > m) { m = row[v]; argmax = v; }
        double sum = 0.0;
        for (int v = 0; v < V; v++) sum += exp((double)(row[v] - m));
        double lse = (double)m + log(sum);
        loss_sum += lse - (double)row[y];
        valid += 1;
        correct += argmax == y;
        if (drow) {
            for (int v = 0; v < V; v++) drow[v] = grad_scale * (float)exp((double)row[v] - lse);
            drow[y] -= grad_scale;
        }
    }
    if (n_valid) *n_valid = valid;
    if (n_correct) *n_correct = correct;
    return loss_sum;
}
