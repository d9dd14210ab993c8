/* grid.cuh — the launch size of the grid-stride kernels (host code), shared by the ops.
 * Enough blocks of `threads` to cover n elements, capped at `max_blocks`: that fills
 * any current GPU several times over, and each kernel's grid-stride loop takes the rest. */
#ifndef BRAID_GRID_CUH
#define BRAID_GRID_CUH
#include <stddef.h>

static inline unsigned grid_stride_blocks(size_t n, unsigned threads = 256, size_t max_blocks = 8192) {
    size_t blocks = (n + threads - 1) / threads;
    return (unsigned)(blocks < max_blocks ? blocks : max_blocks);
}

#endif
