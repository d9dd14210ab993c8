/* gla.c — placeholder until its module lands: the symbol is reserved, and configs
 * that use it are rejected with a clear error (implemented = 0). */
#include "layer.h"

const LayerKind gla_kind = {
    .name = "gla", .symbol = 'G', .role = LAYER_MIXER, .hf_module = "gla", .implemented = 0,
};
