/* gradcheck.h — finite-difference gradient checks shared by the test suites.
 *
 * For an op out = f(inputs), take the scalar L = Σ_i out_i · w_i with w fixed and
 * random (never zero), so every output element matters. The analytic gradient comes
 * from the op's backward with dout = w; the numeric one from central differences
 * (L(x+ε) − L(x−ε)) / 2ε, with L accumulated in double. Elements are compared with
 * |analytic − numeric| ≤ tol · (|numeric| + max|grad of that tensor| · 0.1 + 1e-4);
 * the worst element of each tensor is reported, and a failure names the tensor, the
 * index, both values and the difference. */
#ifndef BRAID_GRADCHECK_H
#define BRAID_GRADCHECK_H
#include <stddef.h>

typedef struct GradcheckTensor {
    const char *name;
    float *value;      /* the input or parameter being perturbed */
    float *grad;       /* where backward accumulates its gradient (zeroed by gradcheck) */
    size_t n;
} GradcheckTensor;

typedef struct GradcheckOp {
    void (*forward)(void *state);    /* computes out from the current values */
    void (*backward)(void *state);   /* accumulates grads given dout (set by gradcheck) */
    void *state;
    float *out;                      /* forward's output */
    float *dout;                     /* backward's incoming gradient, filled by gradcheck */
    size_t n_out;
    /* Optional extra scalar added to L by forward (e.g. an auxiliary loss); its gradient
     * must be included by backward. NULL if none. */
    const double *extra_loss;
} GradcheckOp;

/* Returns 1 if every checked element passes. Checks at most max_checks elements per
 * tensor (spread over the tensor, deterministic), all of them if 0. Prints a line per
 * tensor (worst relative error) to stderr; on failure, a line naming the element. */
int gradcheck(const char *what, GradcheckOp *op, GradcheckTensor *tensors, int n_tensors,
              float eps, float tol, int max_checks);

/* Fills x with seeded normal values times scale (helpers for tests). */
void test_fill_normal(float *x, size_t n, unsigned long seed, float scale);
/* Largest |a-b| / (|b| + floor) over n elements; *where gets its index. */
double max_rel_diff(const float *a, const float *b, size_t n, double floor, size_t *where);

#endif
