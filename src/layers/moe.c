/* moe.c — placeholder until its module lands: the symbol is reserved, and configs
 * that use it are rejected with a clear error (implemented = 0). */
#include "layer.h"

const LayerKind moe_kind = {
    .name = "moe", .symbol = 'E', .role = LAYER_FFN, .hf_module = "feed_forward", .implemented = 0,
};
