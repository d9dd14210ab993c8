/* params.c — the list of parameter tensors (names, shapes, inits) every layer declares
 * into; the model then lays them out back to back in one buffer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"
#include "../layers/layer.h"

int param_list_add(ParamList *list, const char *prefix, const char *suffix, int ndim,
                   const int *shape, InitKind init, float init_scale, int no_decay) {
    BRAID_CHECK(ndim >= 1 && ndim <= PARAM_MAX_DIMS, "parameter %s: bad ndim %d", suffix, ndim);
    if (list->count == list->capacity) {
        list->capacity = list->capacity ? 2 * list->capacity : 64;
        list->items = realloc(list->items, (size_t)list->capacity * sizeof(ParamDecl));
        BRAID_CHECK(list->items, "out of memory growing the parameter list");
    }
    ParamDecl *d = &list->items[list->count];
    memset(d, 0, sizeof *d);
    if (prefix && prefix[0]) snprintf(d->name, sizeof d->name, "%s.%s", prefix, suffix);
    else snprintf(d->name, sizeof d->name, "%s", suffix);
    d->ndim = ndim;
    d->numel = 1;
    for (int i = 0; i < ndim; i++) {
        BRAID_CHECK(shape[i] > 0, "parameter %s: dimension %d is %d", d->name, i, shape[i]);
        d->shape[i] = shape[i];
        d->numel *= (size_t)shape[i];
    }
    d->offset = list->total;
    d->init = init;
    d->init_scale = init_scale;
    d->no_decay = no_decay;
    d->layer_index = -1;
    list->total += d->numel;
    return list->count++;
}

int param_list_find(const ParamList *list, const char *name) {
    for (int i = 0; i < list->count; i++)
        if (strcmp(list->items[i].name, name) == 0) return i;
    return -1;
}

void param_list_free(ParamList *list) {
    free(list->items);
    memset(list, 0, sizeof *list);
}

/* Fills one tensor by its declared init rule. Custom rules (Mamba's A_log, dt bias)
 * get the declaring layer so they can read its settings. */
void param_init_tensor(float *p, const ParamDecl *d, const Layer *layer, Rng *rng) {
    switch (d->init) {
    case INIT_ZEROS: for (size_t i = 0; i < d->numel; i++) p[i] = 0.0f; break;
    case INIT_ONES: for (size_t i = 0; i < d->numel; i++) p[i] = 1.0f; break;
    case INIT_NORMAL: rng_fill_normal(rng, p, d->numel, d->init_scale); break;
    case INIT_UNIFORM: rng_fill_uniform(rng, p, d->numel, -d->init_scale, d->init_scale); break;
    case INIT_CUSTOM:
        BRAID_CHECK(d->init_fn, "parameter %s: INIT_CUSTOM without init_fn", d->name);
        d->init_fn(p, d, layer, rng);
        break;
    }
}
