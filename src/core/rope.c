/* rope.c — rotary position embedding (Su et al.), in place on x[B,T,H,hd].
 *
 * For position t and pair index i in [0, hd/2), with the pair (x_i, x_{i+hd/2}) — the
 * "rotate_half" layout of HF Llama/Jamba, not the interleaved (2i, 2i+1) of the paper —
 *   θ_i = t · base^(−2i/hd)
 *   x_i'        = x_i cos θ_i − x_{i+hd/2} sin θ_i
 *   x_{i+hd/2}' = x_i sin θ_i + x_{i+hd/2} cos θ_i
 * A rotation's transpose is its inverse, so backward rotates the gradient by −θ.
 * cos/sin are computed per position into a small stack table (hd/2 entries) and reused
 * across batch rows and heads; angles are formed in double so large t keeps float accuracy. */
#include <math.h>
#include "ops.h"

/* direction +1: forward rotation; −1: the inverse (backward).
 * Loop order t outermost: each position's cos/sin table is computed once and applied to
 * every batch row and head (sincos/pow were 10% of a CPU training step when computed per
 * (b,t)). */
static void rope_rotate(float *x, int B, int T, int H, int hd, float base, int direction) {
    const int half = hd / 2;
    #pragma omp parallel for if ((long)B * T * H * hd > 32768)
    for (int t = 0; t < T; t++) {
        float cos_table[half], sin_table[half];
        for (int i = 0; i < half; i++) {
            double angle = (double)t * pow((double)base, -2.0 * i / hd);
            cos_table[i] = (float)cos(angle);
            sin_table[i] = (float)(direction * sin(angle));
        }
        for (int b = 0; b < B; b++) {
            float *row = x + ((size_t)b * T + t) * H * hd;
            for (int h = 0; h < H; h++) {
                float *x1 = row + (size_t)h * hd, *x2 = x1 + half;
                for (int i = 0; i < half; i++) {
                    float a = x1[i], c = x2[i];
                    x1[i] = a * cos_table[i] - c * sin_table[i];
                    x2[i] = a * sin_table[i] + c * cos_table[i];
                }
            }
        }
    }
}

void rope_forward(float *x, int B, int T, int H, int hd, float base) {
    rope_rotate(x, B, T, H, hd, base, +1);
}

void rope_backward(float *dx, int B, int T, int H, int hd, float base) {
    rope_rotate(dx, B, T, H, hd, base, -1);
}
