/* mqar.c — multi-query associative recall (Zoology, Arora et al. 2023).
 *
 * An example of length T with K key–value pairs over vocabulary V:
 *   positions 0 .. 2K−1:   k₁ v₁ k₂ v₂ … k_K v_K    keys from [1, V/2), values from [V/2, V),
 *                                                    each drawn without replacement
 *   positions 2K .. T−1:   the query region; key k_i reappears at position 2K + 2·gap_i,
 *                          gaps drawn without replacement from [0, (T−2K)/2) with
 *                          P(gap = g) ∝ a·(g+1)^(a−1) (Zoology's power law, a = power_a:
 *                          most queries come soon after the context, a few far away)
 *   targets:               at each query position, the value paired with that key;
 *                          −100 everywhere else (only answers are scored)
 * Other query-region positions hold random tokens from [0, V) (random_non_queries) or 0.
 * Matches zoology/data/associative_recall.py's multiquery_ar, with the label shift
 * already applied (targets[t] is the answer to inputs[t]). */
#include <math.h>
#include <string.h>

#include "task.h"

int mqar_example(const TaskConfig *cfg, Rng *rng, int T, int *inputs, int *targets, BraidError *err) {
    int V = cfg->vocab_size, K = cfg->num_kv_pairs;
    int context = 2 * K, space = (T - context) / 2;
    if (V < 4 || K > V / 2 - 1 || K > V - V / 2)
        return error_set(err, "task.num_kv_pairs = %d needs vocab_size ≥ %d distinct keys and values, "
                         "vocab_size is %d", K, 2 * K + 2, V);
    if (space < K)
        return error_set(err, "task: mqar with %d kv pairs needs seq_len ≥ %d (context %d + a query "
                         "slot per pair), seq_len is %d", K, context + 2 * K, context, T);
    int key_vocab = V / 2;
    /* Keys: K distinct from [1, key_vocab); values: K distinct from [key_vocab, V). A
     * partial Fisher–Yates over a small stack pool keeps this allocation-free. */
    int pool[4096];
    int n_keys = key_vocab - 1, n_values = V - key_vocab;
    if (n_keys > 4096 || n_values > 4096)
        return error_set(err, "task.vocab_size %d too large for mqar (at most 8192)", V);
    int keys[2048], values[2048];
    for (int i = 0; i < n_keys; i++) pool[i] = 1 + i;
    for (int i = 0; i < K; i++) {
        int j = i + (int)rng_below(rng, (uint32_t)(n_keys - i));
        int t = pool[i]; pool[i] = pool[j]; pool[j] = t;
        keys[i] = pool[i];
    }
    for (int i = 0; i < n_values; i++) pool[i] = key_vocab + i;
    for (int i = 0; i < K; i++) {
        int j = i + (int)rng_below(rng, (uint32_t)(n_values - i));
        int t = pool[i]; pool[i] = pool[j]; pool[j] = t;
        values[i] = pool[i];
    }
    for (int t = 0; t < T; t++) { inputs[t] = 0; targets[t] = -100; }
    for (int i = 0; i < K; i++) {
        inputs[2 * i] = keys[i];
        inputs[2 * i + 1] = values[i];
    }
    /* Gaps without replacement from the power law: sequential weighted draws, removing
     * each chosen gap (what numpy's choice(replace=False, p=...) does). */
    double weight[4096], total = 0.0;
    if (space > 4096) return error_set(err, "task.seq_len %d too long for mqar (at most 8192)", T);
    float a = cfg->power_a;
    for (int g = 0; g < space; g++) { weight[g] = a * pow(g + 1.0, a - 1.0); total += weight[g]; }
    for (int i = 0; i < K; i++) {
        double r = rng_uniform(rng) * total, acc = 0.0;
        int g = 0, last = -1;
        for (g = 0; g < space; g++) {
            if (weight[g] <= 0.0) continue;
            last = g;
            acc += weight[g];
            if (acc > r) break;
        }
        if (g == space) g = last;        /* rounding: fall back to the last available gap */
        total -= weight[g];
        weight[g] = 0.0;
        int pos = context + 2 * g;
        inputs[pos] = keys[i];
        targets[pos] = values[i];
    }
    if (cfg->random_non_queries) {
        for (int t = context; t < T; t++)
            if (inputs[t] == 0) inputs[t] = (int)rng_below(rng, (uint32_t)V);
    }
    return 0;
}

static int mqar_open(Task *task, BraidError *err) {
    if (task->cfg.num_kv_pairs < 1) return error_set(err, "task.num_kv_pairs must be ≥ 1");
    return 0;
}

static int mqar_make_batch(Task *task, Rng *rng, int B, int T, int *inputs, int *targets, BraidError *err) {
    for (int b = 0; b < B; b++)
        if (mqar_example(&task->cfg, rng, T, inputs + (size_t)b * T, targets + (size_t)b * T, err)) return -1;
    return 0;
}

const TaskKind mqar_task = {
    .name = "mqar",
    .description = "multi-query associative recall (Zoology)",
    .open = mqar_open,
    .make_batch = mqar_make_batch,
};
