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
