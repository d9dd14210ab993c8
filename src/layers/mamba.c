/* mamba.c — placeholder until its module lands: the symbol is reserved, and configs
 * that use it are rejected with a clear error (implemented = 0). */
#include "layer.h"

const LayerKind mamba_kind = {
    .name = "mamba", .symbol = 'M', .role = LAYER_MIXER, .hf_module = "mamba", .implemented = 0,
};
