/* layer_harness.h — runs one LayerKind outside a model, for its tests.
 *
 * harness_create does what model_build does for one layer: kind->init, declare_params
 * (prefix "layers.0.<hf_module>"), one parameter and one gradient buffer, pointers in
 * declaration order, params initialised by their declared rules and then perturbed
 * (so ones/zeros inits such as norm weights and D are checked at generic points),
 * the saved-activation and scratch buffers sized by the kind, and a random input x.
 * harness_gradcheck checks dx and every parameter's gradient by finite differences. */
#ifndef BRAID_LAYER_HARNESS_H
#define BRAID_LAYER_HARNESS_H
#include "layers/layer.h"
#include "models/config.h"

typedef struct LayerHarness {
    Layer layer;
    ParamList params;
    float *param_data, *grad_data;
    float *x, *dx, *y, *dy;
    int B, T, d;
    Ctx ctx;
    double aux_loss;   /* copy of layer.aux_loss after each forward (for gradcheck) */
} LayerHarness;

/* perturb: std of noise added to every parameter after init (0.05 is typical). */
LayerHarness *harness_create(const LayerKind *kind, const Config *cfg, int B, int T,
                             unsigned long seed, float perturb);
void harness_forward(LayerHarness *h);           /* y = layer(x) */
void harness_backward(LayerHarness *h);          /* dx, grads += from dy */
/* Checks dx and all parameter gradients (max_checks elements each). Returns 1 if ok. */
int harness_gradcheck(LayerHarness *h, const char *what, float eps, float tol, int max_checks);
/* Index of the parameter whose name ends with suffix (e.g. "in_proj.weight"), -1 if none. */
int harness_param(const LayerHarness *h, const char *suffix);
void harness_free(LayerHarness *h);

#endif
