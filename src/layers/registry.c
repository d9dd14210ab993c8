/* registry.c — the one table of layer kinds. Adding a kind: write its module
 * (src/layers/<kind>.c defining a LayerKind) and add one line here. */
#include <string.h>
#include "layer.h"

extern const LayerKind attention_kind, sliding_window_kind, mamba_kind, gla_kind;
extern const LayerKind ffn_dense_kind, moe_kind;

static const LayerKind *const registry[] = {
    &mamba_kind,           /* M */
    &attention_kind,       /* A */
    &sliding_window_kind,  /* W */
    &gla_kind,             /* G */
    &ffn_dense_kind,       /* D */
    &moe_kind,             /* E */
};

int layer_kind_count(void) { return (int)(sizeof registry / sizeof registry[0]); }
const LayerKind *layer_kind_at(int i) { return registry[i]; }

const LayerKind *layer_kind_by_symbol(char symbol) {
    for (int i = 0; i < layer_kind_count(); i++)
        if (registry[i]->symbol == symbol) return registry[i];
    return NULL;
}

const LayerKind *layer_kind_by_name(const char *name) {
    for (int i = 0; i < layer_kind_count(); i++)
        if (strcmp(registry[i]->name, name) == 0) return registry[i];
    return NULL;
}
