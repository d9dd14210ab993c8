/* induction.c — induction heads (Olsson et al. 2022): a segment seen once must be
 * continued when it starts again — "A B … A → B", for every position of the segment.
 *
 * An example of length T with a segment of m = task.copy_len tokens, vocabulary V:
 *   filler:      every position holds a token from [0, V/2)
 *   segment S:   m DISTINCT tokens from [V/2, V), written at s1 and again at s2:
 *                  inputs[s1+i] = inputs[s2+i] = S_i,
 *                  s1 uniform in [0, T−2m], s2 uniform in [s1+m, T−m]
 *   targets:     targets[s2+i] = S_{i+1} for i = 0 … m−2 (m−1 scored positions);
 *                −100 elsewhere. The first token of the repeat is not predictable and
 *                is not scored.
 * Why distinct tokens from a range disjoint from the filler: then every segment token
 * occurs exactly once before the repeat, so "find the previous occurrence of this token,
 * output its successor" has one right answer and a perfect model scores 100% at any T.
 * Needs m ≥ 2, m ≤ V − V/2 and T ≥ 2m. */
#include <stdlib.h>

#include "task.h"

typedef struct InductionPool {
    int *tokens;   /* V − V/2 candidates for the segment, reset before each example */
} InductionPool;

static int induction_open(Task *task, BraidError *err) {
    int V = task->cfg.vocab_size, m = task->cfg.copy_len;
    if (m < 2) return error_set(err, "task.copy_len = %d: induction needs a segment of at least 2 tokens", m);
    if (m > V - V / 2)
        return error_set(err, "task.copy_len = %d: induction draws the segment's distinct tokens from [V/2, V), "
                         "which holds only %d at task.vocab_size = %d; set task.vocab_size ≥ %d", m, V - V / 2, V,
                         2 * m);
    InductionPool *pool = braid_calloc(1, sizeof *pool, "induction task");
    pool->tokens = braid_malloc((size_t)(V - V / 2) * sizeof(int), "induction token pool");
    task->priv = pool;
    return 0;
}

static void induction_close(Task *task) {
    InductionPool *pool = task->priv;
    if (!pool) return;
    free(pool->tokens);
    free(pool);
    task->priv = NULL;
}

static void induction_example(const TaskConfig *cfg, int *pool, Rng *rng, int T, int *inputs, int *targets) {
    int V = cfg->vocab_size, half = V / 2, m = cfg->copy_len, n_pool = V - half;
    for (int t = 0; t < T; t++) {
        inputs[t] = (int)rng_below(rng, (uint32_t)half);
        targets[t] = -100;
    }
    int s1 = (int)rng_below(rng, (uint32_t)(T - 2 * m + 1));
    int s2 = s1 + m + (int)rng_below(rng, (uint32_t)(T - m - (s1 + m) + 1));
    /* The pool is reset each time so that an example depends only on the Rng state
     * (evaluation and resume replay it exactly); a partial Fisher–Yates draws m. */
    for (int i = 0; i < n_pool; i++) pool[i] = half + i;
    for (int i = 0; i < m; i++) {
        int j = i + (int)rng_below(rng, (uint32_t)(n_pool - i));
        int swap = pool[i]; pool[i] = pool[j]; pool[j] = swap;
        inputs[s1 + i] = inputs[s2 + i] = pool[i];
    }
    for (int i = 0; i + 1 < m; i++) targets[s2 + i] = pool[i + 1];
}

static int induction_make_batch(Task *task, Rng *rng, int B, int T, int *inputs, int *targets, BraidError *err) {
    InductionPool *pool = task->priv;
    int m = task->cfg.copy_len;
    if (T < 2 * m)
        return error_set(err, "task induction: a segment of task.copy_len = %d tokens seen twice needs seq_len ≥ %d, "
                         "seq_len is %d", m, 2 * m, T);
    for (int b = 0; b < B; b++)
        induction_example(&task->cfg, pool->tokens, rng, T, inputs + (size_t)b * T, targets + (size_t)b * T);
    return 0;
}

const TaskKind induction_task = {
    .name = "induction",
    .description = "induction heads: continue a segment of task.copy_len distinct tokens when it repeats",
    .open = induction_open,
    .make_batch = induction_make_batch,
    .close = induction_close,
};
