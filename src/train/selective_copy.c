/* selective_copy.c — selective copying (Gu & Dao 2023, Mamba §4.1.1): copy the content
 * tokens scattered among blanks, in order, ignoring the blanks.
 *
 * An example of length T with K = task.copy_len tokens to copy, vocabulary V:
 *   positions 0 .. T−K−1:   the data region: K positions chosen uniformly without
 *                           replacement hold content tokens drawn from [2, V) (with
 *                           replacement); every other position holds the blank 0
 *   positions T−K .. T−1:   the marker 1 ("copy now"); targets[T−K+i] = the i-th content
 *                           token in order of position — the only scored positions
 * The label shift is applied (targets[t] is the answer at inputs[t]); the answer region
 * is all markers, not teacher-forced, as in the Mamba paper, so the model must keep all
 * K tokens in its state, not just the next one. Needs T ≥ 2K. */
#include "task.h"

#define COPY_BLANK 0
#define COPY_MARKER 1
#define COPY_FIRST_CONTENT 2

static int selective_copy_open(Task *task, BraidError *err) {
    if (task->cfg.vocab_size < 3)
        return error_set(err, "task.vocab_size = %d: selective_copy needs at least 3 (blank, marker, and "
                         "content tokens from [2, V))", task->cfg.vocab_size);
    return 0;
}

static void selective_copy_example(const TaskConfig *cfg, Rng *rng, int T, int *inputs, int *targets) {
    int V = cfg->vocab_size, K = cfg->copy_len, region = T - K;
    for (int t = 0; t < T; t++) { inputs[t] = COPY_BLANK; targets[t] = -100; }
    /* Selection sampling (Knuth's algorithm S): visit the region in order, taking each
     * position with probability (still needed)/(still left) — K sorted positions,
     * uniformly, with no allocation. */
    int needed = K, copied = 0;
    for (int t = 0; t < region && needed > 0; t++) {
        if ((int)rng_below(rng, (uint32_t)(region - t)) < needed) {
            int token = COPY_FIRST_CONTENT + (int)rng_below(rng, (uint32_t)(V - COPY_FIRST_CONTENT));
            inputs[t] = token;
            targets[region + copied++] = token;
            needed--;
        }
    }
    for (int t = region; t < T; t++) inputs[t] = COPY_MARKER;
}

static int selective_copy_make_batch(Task *task, Rng *rng, int B, int T, int *inputs, int *targets,
                                     BraidError *err) {
    int K = task->cfg.copy_len;
    if (T < 2 * K)
        return error_set(err, "task selective_copy: copying task.copy_len = %d tokens needs seq_len ≥ %d (a data "
                         "region of at least %d positions, then %d answer positions), seq_len is %d",
                         K, 2 * K, K, K, T);
    for (int b = 0; b < B; b++)
        selective_copy_example(&task->cfg, rng, T, inputs + (size_t)b * T, targets + (size_t)b * T);
    return 0;
}

const TaskKind selective_copy_task = {
    .name = "selective_copy",
    .description = "selective copying of task.copy_len tokens scattered among blanks (Mamba)",
    .open = selective_copy_open,
    .make_batch = selective_copy_make_batch,
};
