/* layer_harness.c — see layer_harness.h. */
#include "layer_harness.h"

#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "core/common.h"

LayerHarness *harness_create(const LayerKind *kind, const Config *cfg, int B, int T,
                             unsigned long seed, float perturb) {
    LayerHarness *h = braid_calloc(1, sizeof *h, "layer harness");
    h->B = B; h->T = T; h->d = cfg->model.d_model;
    Layer *L = &h->layer;
    L->kind = kind;
    L->cfg = cfg;
    L->index = 0;
    L->d_model = h->d;
    snprintf(L->prefix, sizeof L->prefix, "layers.0.%s", kind->hf_module);
    if (kind->init) kind->init(L);
    kind->declare_params(L, &h->params);
    L->first_param = 0;
    L->n_params = h->params.count;
    h->param_data = braid_calloc(h->params.total, sizeof(float), "harness params");
    h->grad_data = braid_calloc(h->params.total, sizeof(float), "harness grads");
    L->params = braid_calloc((size_t)L->n_params, sizeof(float *), "harness param pointers");
    L->grads = braid_calloc((size_t)L->n_params, sizeof(float *), "harness grad pointers");
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < L->n_params; i++) {
        ParamDecl *pd = &h->params.items[i];
        L->params[i] = h->param_data + pd->offset;
        L->grads[i] = h->grad_data + pd->offset;
        param_init_tensor(L->params[i], pd, L, &rng);
        for (size_t j = 0; j < pd->numel; j++) L->params[i][j] += perturb * rng_normal(&rng);
    }
    size_t saved = kind->saved_floats ? kind->saved_floats(L, B, T) : 0;
    size_t scratch = kind->scratch_floats ? kind->scratch_floats(L, B, T) : 0;
    L->saved = braid_calloc(saved + 1, sizeof(float), "harness saved");
    h->ctx.device = DEVICE_CPU;
    h->ctx.scratch = braid_calloc(scratch + 1, sizeof(float), "harness scratch");
    h->ctx.scratch_floats = scratch;
    h->ctx.training = 1;
    h->ctx.aux_grad_scale = 1.0f;
    size_t n = (size_t)B * T * h->d;
    h->x = braid_malloc(n * sizeof(float), "harness x");
    h->dx = braid_calloc(n, sizeof(float), "harness dx");
    h->y = braid_calloc(n, sizeof(float), "harness y");
    h->dy = braid_calloc(n, sizeof(float), "harness dy");
    rng_fill_normal(&rng, h->x, n, 1.0f);
    return h;
}

void harness_forward(LayerHarness *h) {
    h->layer.aux_loss = 0.0;
    h->layer.kind->forward(&h->layer, h->y, h->x, h->B, h->T, &h->ctx);
    h->aux_loss = h->layer.aux_loss;
}

void harness_backward(LayerHarness *h) {
    h->layer.kind->backward(&h->layer, h->dx, h->dy, h->x, h->B, h->T, &h->ctx);
}

static void forward_cb(void *s) { harness_forward(s); }
static void backward_cb(void *s) { harness_backward(s); }

int harness_gradcheck(LayerHarness *h, const char *what, float eps, float tol, int max_checks) {
    int n = 1 + h->layer.n_params;
    GradcheckTensor *t = braid_calloc((size_t)n, sizeof *t, "gradcheck tensors");
    t[0] = (GradcheckTensor){"x", h->x, h->dx, (size_t)h->B * h->T * h->d};
    for (int i = 0; i < h->layer.n_params; i++) {
        const ParamDecl *pd = &h->params.items[i];
        const char *short_name = pd->name + strlen(h->layer.prefix) + 1;
        t[1 + i] = (GradcheckTensor){short_name, h->layer.params[i], h->layer.grads[i], pd->numel};
    }
    GradcheckOp op = {forward_cb, backward_cb, h, h->y, h->dy, (size_t)h->B * h->T * h->d,
                      &h->aux_loss};
    int ok = gradcheck(what, &op, t, n, eps, tol, max_checks);
    free(t);
    return ok;
}

int harness_param(const LayerHarness *h, const char *suffix) {
    size_t ls = strlen(suffix);
    for (int i = 0; i < h->params.count; i++) {
        size_t ln = strlen(h->params.items[i].name);
        if (ln >= ls && strcmp(h->params.items[i].name + ln - ls, suffix) == 0) return i;
    }
    return -1;
}

void harness_free(LayerHarness *h) {
    if (h->layer.kind->destroy) h->layer.kind->destroy(&h->layer);
    free(h->param_data); free(h->grad_data);
    free(h->layer.params); free(h->layer.grads); free(h->layer.saved);
    free(h->ctx.scratch);
    free(h->x); free(h->dx); free(h->y); free(h->dy);
    param_list_free(&h->params);
    free(h);
}
