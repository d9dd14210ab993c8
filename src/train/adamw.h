/* adamw.h — the optimizer, gradient-norm clipping and the learning-rate schedule, each a
 * loop over the model's one parameter buffer. */
#ifndef BRAID_ADAMW_H
#define BRAID_ADAMW_H
#include <stddef.h>
#include "../layers/layer.h"

/* grad_scale multiplies every gradient as the update reads it: the clipping factor
 * (clip_grad_scale), so clipping costs no pass over the gradients of its own; 1 for none. */
typedef struct AdamWSettings {
    float lr, beta1, beta2, eps, weight_decay, grad_scale;
} AdamWSettings;

/* AdamW (Loshchilov & Hutter): decoupled weight decay, bias-corrected moments, on the
 * gradients times s->grad_scale (the gradients themselves are not changed).
 * step is 1-based; each tensor of the list is decayed unless declared no_decay. */
void adamw_update(float *params, const float *grads, float *m, float *v, const ParamList *list,
                  const AdamWSettings *s, long step);
/* sqrt(Σ g²), accumulated in double. */
double global_grad_norm(const float *grads, size_t n);
/* The factor that brings a global norm down to max_norm: max_norm / (norm + 1e-6) when
 * norm exceeds it (and max_norm > 0), else 1. Both devices clip by it. */
float clip_grad_scale(double norm, float max_norm);
/* Linear warm-up over warmup steps to lr, then cosine decay to min_ratio·lr at total. */
float lr_schedule(long step, long warmup, long total, float lr, float min_ratio);

#endif
