/* adamw.c — AdamW, global-norm clipping and the warm-up + cosine schedule.
 *
 *   g = grad · grad_scale (the clipping factor, folded in: adamw.h)
 *   m ← β₁m + (1−β₁)g;   v ← β₂v + (1−β₂)g²
 *   m̂ = m/(1−β₁ᵗ);       v̂ = v/(1−β₂ᵗ)
 *   θ ← θ − lr·(m̂/(√v̂ + ε) + λθ)      (λ = 0 for tensors declared no_decay) */
#include "adamw.h"

#include <math.h>

void adamw_update(float *params, const float *grads, float *m, float *v, const ParamList *list,
                  const AdamWSettings *s, long step) {
    float bc1 = 1.0f - powf(s->beta1, (float)step);
    float bc2 = 1.0f - powf(s->beta2, (float)step);
    for (int t = 0; t < list->count; t++) {
        const ParamDecl *pd = &list->items[t];
        float wd = pd->no_decay ? 0.0f : s->weight_decay;
        size_t lo = pd->offset, hi = pd->offset + pd->numel;
        #pragma omp parallel for if (pd->numel > 32768)
        for (size_t i = lo; i < hi; i++) {
            float g = grads[i] * s->grad_scale;
            m[i] = s->beta1 * m[i] + (1.0f - s->beta1) * g;
            v[i] = s->beta2 * v[i] + (1.0f - s->beta2) * g * g;
            float mhat = m[i] / bc1, vhat = v[i] / bc2;
            params[i] -= s->lr * (mhat / (sqrtf(vhat) + s->eps) + wd * params[i]);
        }
    }
}

double global_grad_norm(const float *grads, size_t n) {
    double ss = 0.0;
    #pragma omp parallel for reduction(+ : ss) if (n > 65536)
    for (size_t i = 0; i < n; i++) ss += (double)grads[i] * grads[i];
    return sqrt(ss);
}

float clip_grad_scale(double norm, float max_norm) {
    if (max_norm <= 0.0f || !(norm > max_norm)) return 1.0f;
    return (float)(max_norm / (norm + 1e-6));
}

float lr_schedule(long step, long warmup, long total, float lr, float min_ratio) {
    if (warmup > 0 && step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (total <= warmup) return lr;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    if (progress > 1.0) progress = 1.0;
    double cosine = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    return lr * (float)(min_ratio + (1.0 - min_ratio) * cosine);
}
