/* passkey.c — passkey / needle-in-a-haystack retrieval at a controlled depth.
 *
 * An example of length T over vocabulary V:
 *   haystack:   every position holds a filler token from [3, V/2)
 *   needle:     at position p, the marker 1 followed by the passkey v from [V/2, V):
 *                 inputs[p] = 1, inputs[p+1] = v,   p ∈ [0, T−3]
 *   query:      inputs[T−1] = 2, and targets[T−1] = v — the only scored position
 *                 (targets are −100 everywhere else)
 * The depth d = task.needle_depth places the needle at p = round(d·(T−3)): d = 0 right
 * at the start (the farthest from the query), d = 1 just before it. d = −1 (the
 * default) draws p uniformly per example, which is what training wants; evaluation
 * sweeps fixed depths with `eval --set task.needle_depth=0.25 --seq-lens 256,1024,...`.
 *
 * Filler and passkey come from disjoint ranges and the markers are reserved, so the
 * answer is unambiguous: the token after the only 1. */
#include <math.h>

#include "task.h"

#define PASSKEY_NEEDLE 1
#define PASSKEY_QUERY 2
#define PASSKEY_FIRST_FILLER 3

static int passkey_open(Task *task, BraidError *err) {
    float d = task->cfg.needle_depth;
    if (d != -1.0f && !(d >= 0.0f && d <= 1.0f))
        return error_set(err, "task.needle_depth = %g: expected a depth in [0, 1], or -1 for a uniform depth", d);
    if (task->cfg.vocab_size < 8)
        return error_set(err, "task.vocab_size = %d: passkey needs at least 8 (3 reserved tokens, filler "
                         "[3, V/2), passkeys [V/2, V))", task->cfg.vocab_size);
    return 0;
}

/* Fills one example; the needle's marker goes at round(depth·(T−3)) or uniformly. */
static void passkey_example(const TaskConfig *cfg, Rng *rng, int T, int *inputs, int *targets) {
    int V = cfg->vocab_size, half = V / 2;
    int last_needle = T - 3;   /* the needle's two tokens must end before the query */
    int p = cfg->needle_depth < 0.0f ? (int)rng_below(rng, (uint32_t)(last_needle + 1))
                                     : (int)lrintf(cfg->needle_depth * (float)last_needle);
    int passkey = half + (int)rng_below(rng, (uint32_t)(V - half));
    for (int t = 0; t < T; t++) {
        inputs[t] = PASSKEY_FIRST_FILLER + (int)rng_below(rng, (uint32_t)(half - PASSKEY_FIRST_FILLER));
        targets[t] = -100;
    }
    inputs[p] = PASSKEY_NEEDLE;
    inputs[p + 1] = passkey;
    inputs[T - 1] = PASSKEY_QUERY;
    targets[T - 1] = passkey;
}

static int passkey_make_batch(Task *task, Rng *rng, int B, int T, int *inputs, int *targets, BraidError *err) {
    if (T < 3)
        return error_set(err, "task passkey: seq_len %d is too short; it needs at least 3 (needle marker, "
                         "passkey, query)", T);
    for (int b = 0; b < B; b++)
        passkey_example(&task->cfg, rng, T, inputs + (size_t)b * T, targets + (size_t)b * T);
    return 0;
}

const TaskKind passkey_task = {
    .name = "passkey",
    .description = "passkey / needle-in-a-haystack retrieval at task.needle_depth",
    .open = passkey_open,
    .make_batch = passkey_make_batch,
};
