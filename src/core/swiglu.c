/* swiglu.c — the SwiGLU gate: out = silu(g) ⊙ u, silu(g) = g·σ(g).
 * d/dg silu(g) = σ(g)·(1 + g·(1 − σ(g))). Backward WRITES dgate, dup. */
#include "ops.h"

void swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    #pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = silu_f(gate[i]) * up[i];
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, size_t n) {
    #pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = sigmoid_f(g);
        dup[i] = dout[i] * g * s;
        dgate[i] = dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
    }
}
