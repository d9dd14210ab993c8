/* column_sum.cu — the host side shared by column_sum.cuh's users: the partial sums'
 * device buffer and the number of row slices. */
#include "column_sum.cuh"

static void *partials = NULL;
static size_t partials_bytes = 0;

float *column_sum_partials(size_t floats) {
    return (float *)grow_device_buffer(&partials, &partials_bytes, floats * sizeof(float));
}

/* About four blocks per SM in all, but at least 16 rows per thread (8 row groups × 16):
 * below that the second pass's reads outweigh what the extra blocks gain. */
int column_sum_slices(int N, int C) {
    const int sms = cuda_sm_count();
    const int col_blocks = (C + COLUMN_SUM_COLS - 1) / COLUMN_SUM_COLS;
    const int want = (4 * sms + col_blocks - 1) / col_blocks;
    const int most = (N + 16 * COLUMN_SUM_GROUPS - 1) / (16 * COLUMN_SUM_GROUPS);
    const int slices = want < most ? want : most;
    return slices > 1 ? slices : 1;
}
