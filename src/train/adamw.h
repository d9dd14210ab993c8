/* adamw.h — the optimizer, gradient-norm clipping and the learning-rate schedule, each a
 * loop over the model's one parameter buffer. */
#ifndef BRAID_ADAMW_H
#define BRAID_ADAMW_H
#include <stddef.h>
#include "../layers/layer.h"

typedef struct AdamWSettings {
    float lr, beta1, beta2, eps, weight_decay;
} AdamWSettings;

/* AdamW (Loshchilov & Hutter): decoupled weight decay, bias-corrected moments.
 * step is 1-based. decay_mask[i] says whether tensor i of the list is decayed. */
void adamw_update(float *params, const float *grads, float *m, float *v, const ParamList *list,
                  const AdamWSettings *s, long step);
/* sqrt(Σ g²), accumulated in double. */
double global_grad_norm(const float *grads, size_t n);
/* The factor that brings a global norm down to max_norm: max_norm / (norm + 1e-6) when
 * norm exceeds it (and max_norm > 0), else 1. Both devices clip by it. */
float clip_grad_scale(double norm, float max_norm);
/* Scales grads so their global norm is at most max_norm; returns the scale applied. */
float clip_grad_norm(float *grads, size_t n, double norm, float max_norm);
/* Linear warm-up over warmup steps to lr, then cosine decay to min_ratio·lr at total. */
float lr_schedule(long step, long warmup, long total, float lr, float min_ratio);

#endif
