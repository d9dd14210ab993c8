/* embedding.c — token embedding lookup.
 * out[n,:] = table[tokens[n],:]        table (V, C)
 * dtable[tokens[n],:] += dout[n,:]     (serial: rows may repeat) */
#include <string.h>
#include "ops.h"

void embedding_forward(float *out, const int *tokens, const float *table, int N, int C) {
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, table + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
}

void embedding_backward(float *dtable, const float *dout, const int *tokens, int N, int C) {
    for (int n = 0; n < N; n++) {
        float *row = dtable + (size_t)tokens[n] * C;
        const float *g = dout + (size_t)n * C;
        for (int c = 0; c < C; c++) row[c] += g[c];
    }
}
