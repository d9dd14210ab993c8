/* test_tasks.c — the recall-benchmark generators (passkey, selective_copy, induction)
 * and the byte-level text task: each example's layout as the file comment of its module
 * states it, only the answers scored (every other target −100), the same seed giving the
 * same batch and another seed another, and a clear error for each bad setting. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/config.h"
#include "train/task.h"

#define MAX_TOKENS (64 * 1024)

static int inputs[MAX_TOKENS], targets[MAX_TOKENS];

/* A task from the defaults with the given name and vocabulary; fails the test on error. */
static Task open_task(const char *name, int vocab, void (*adjust)(TaskConfig *)) {
    Config cfg;
    config_defaults(&cfg);
    snprintf(cfg.task.name, sizeof cfg.task.name, "%s", name);
    cfg.task.vocab_size = vocab;
    if (adjust) adjust(&cfg.task);
    Task task;
    BraidError err = {{0}};
    ck_assert_msg(task_open(&task, &cfg.task, &err) == 0, "task_open(%s): %s", name, err.message);
    return task;
}

static void make_batch_ok(Task *task, uint64_t seed, int B, int T) {
    Rng rng;
    rng_seed(&rng, seed);
    BraidError err = {{0}};
    ck_assert_msg(task->kind->make_batch(task, &rng, B, T, inputs, targets, &err) == 0, "make_batch(%s, B=%d, T=%d): %s",
                  task->kind->name, B, T, err.message);
}

/* Returns the error message of one make_batch call that must fail. */
static const char *make_batch_error(Task *task, int B, int T) {
    static BraidError err;
    Rng rng;
    rng_seed(&rng, 1);
    memset(&err, 0, sizeof err);
    ck_assert_msg(task->kind->make_batch(task, &rng, B, T, inputs, targets, &err) == -1,
                  "make_batch(%s, T=%d) accepted a bad setting", task->kind->name, T);
    return err.message;
}

static const char *open_error(const char *name, int vocab, void (*adjust)(TaskConfig *)) {
    static BraidError err;
    Config cfg;
    config_defaults(&cfg);
    snprintf(cfg.task.name, sizeof cfg.task.name, "%s", name);
    cfg.task.vocab_size = vocab;
    if (adjust) adjust(&cfg.task);
    Task task;
    memset(&err, 0, sizeof err);
    ck_assert_msg(task_open(&task, &cfg.task, &err) == -1, "task_open(%s) accepted a bad setting", name);
    return err.message;
}

#define ASSERT_MENTIONS(msg, word) ck_assert_msg(strstr((msg), (word)) != NULL, "error '%s' does not mention '%s'", (msg), (word))

/* ---------------------------------------------------------------- passkey */

START_TEST(passkey_hides_one_needle_in_filler_and_scores_only_the_query) {
    Task task = open_task("passkey", 64, NULL);
    const int B = 200, T = 40, V = 64;
    make_batch_ok(&task, 3, B, T);
    for (int b = 0; b < B; b++) {
        const int *in = inputs + b * T, *tg = targets + b * T;
        int needles = 0, p = -1;
        for (int t = 0; t < T; t++) if (in[t] == 1) { needles++; p = t; }
        ck_assert_msg(needles == 1, "example %d: %d needle markers, expected 1", b, needles);
        ck_assert_msg(p <= T - 3, "example %d: needle marker at %d, past the last slot %d", b, p, T - 3);
        ck_assert_msg(in[p + 1] >= V / 2 && in[p + 1] < V, "example %d: passkey %d not in [%d, %d)", b, in[p + 1], V / 2, V);
        ck_assert_msg(in[T - 1] == 2, "example %d: last input %d, expected the query token 2", b, in[T - 1]);
        ck_assert_msg(tg[T - 1] == in[p + 1], "example %d: target %d, expected the passkey %d", b, tg[T - 1], in[p + 1]);
        for (int t = 0; t < T - 1; t++) {
            ck_assert_msg(tg[t] == -100, "example %d: position %d scored (target %d)", b, t, tg[t]);
            if (t != p && t != p + 1)
                ck_assert_msg(in[t] >= 3 && in[t] < V / 2, "example %d: filler %d at %d not in [3, %d)", b, in[t], t, V / 2);
        }
    }
    task_close(&task);
}
END_TEST

static int needle_position(int T) {
    for (int t = 0; t < T; t++) if (inputs[t] == 1) return t;
    return -1;
}

static void depth_zero(TaskConfig *t) { t->needle_depth = 0.0f; }
static void depth_half(TaskConfig *t) { t->needle_depth = 0.5f; }
static void depth_one(TaskConfig *t) { t->needle_depth = 1.0f; }

START_TEST(passkey_needle_depth_sets_the_needle_position) {
    /* depth d puts the marker at round(d·(T−3)): 0 → first position, 1 → just before the query */
    void (*adjust[3])(TaskConfig *) = {depth_zero, depth_half, depth_one};
    const int T = 103, expected[3] = {0, 50, 100};
    for (int d = 0; d < 3; d++) {
        Task task = open_task("passkey", 256, adjust[d]);
        for (uint64_t seed = 1; seed <= 20; seed++) {
            make_batch_ok(&task, seed, 1, T);
            ck_assert_msg(needle_position(T) == expected[d], "depth %g seed %d: needle at %d, expected %d",
                          task.cfg.needle_depth, (int)seed, needle_position(T), expected[d]);
        }
        task_close(&task);
    }
}
END_TEST

START_TEST(passkey_default_depth_is_uniform_over_the_haystack) {
    Task task = open_task("passkey", 256, NULL);
    const int T = 13, B = 4000, slots = T - 2;
    int count[16] = {0};
    make_batch_ok(&task, 8, B, T);
    for (int b = 0; b < B; b++) {
        int p = -1;
        for (int t = 0; t < T; t++) if (inputs[b * T + t] == 1) p = t;
        count[p]++;
    }
    for (int p = 0; p < slots; p++)   /* expected 4000/11 ≈ 364 each; ±25% is ~8 standard deviations */
        ck_assert_msg(count[p] > 0.75 * B / slots && count[p] < 1.25 * B / slots,
                      "needle at position %d in %d of %d examples, expected about %d", p, count[p], B, B / slots);
    task_close(&task);
}
END_TEST

static void depth_negative(TaskConfig *t) { t->needle_depth = -0.5f; }

START_TEST(passkey_rejects_bad_settings) {
    ASSERT_MENTIONS(open_error("passkey", 256, depth_negative), "task.needle_depth");
    ASSERT_MENTIONS(open_error("passkey", 6, NULL), "task.vocab_size");
    Task task = open_task("passkey", 256, NULL);
    ASSERT_MENTIONS(make_batch_error(&task, 1, 2), "seq_len 2");
    task_close(&task);
}
END_TEST

/* ---------------------------------------------------------------- selective copy */

static void copy_eight(TaskConfig *t) { t->copy_len = 8; }

START_TEST(selective_copy_asks_for_the_scattered_tokens_in_order) {
    Task task = open_task("selective_copy", 16, copy_eight);
    const int B = 200, T = 40, K = 8, V = 16;
    make_batch_ok(&task, 4, B, T);
    for (int b = 0; b < B; b++) {
        const int *in = inputs + b * T, *tg = targets + b * T;
        int content[8], n = 0;
        for (int t = 0; t < T - K; t++) {
            ck_assert_msg(tg[t] == -100, "example %d: data position %d scored", b, t);
            ck_assert_msg(in[t] != 1, "example %d: marker inside the data region at %d", b, t);
            if (in[t] == 0) continue;
            ck_assert_msg(in[t] >= 2 && in[t] < V, "example %d: content token %d out of [2, %d)", b, in[t], V);
            ck_assert_msg(n < K, "example %d: more than %d content tokens", b, K);
            content[n++] = in[t];
        }
        ck_assert_msg(n == K, "example %d: %d content tokens, expected %d", b, n, K);
        for (int i = 0; i < K; i++) {
            ck_assert_msg(in[T - K + i] == 1, "example %d: answer position %d holds %d, expected the marker 1", b,
                          T - K + i, in[T - K + i]);
            ck_assert_msg(tg[T - K + i] == content[i], "example %d: answer %d is %d, expected content token %d", b, i,
                          tg[T - K + i], content[i]);
        }
    }
    task_close(&task);
}
END_TEST

START_TEST(selective_copy_spreads_tokens_over_the_whole_data_region) {
    /* Selection sampling must reach every position of the region, the last ones too. */
    Task task = open_task("selective_copy", 16, copy_eight);
    const int B = 500, T = 48, K = 8, region = T - K;
    int hits[48] = {0};
    make_batch_ok(&task, 6, B, T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < region; t++) hits[t] += inputs[b * T + t] != 0;
    for (int t = 0; t < region; t++)   /* expected 500·8/40 = 100 each */
        ck_assert_msg(hits[t] > 60 && hits[t] < 140, "data position %d holds content in %d of %d examples, expected ~100",
                      t, hits[t], B);
    task_close(&task);
}
END_TEST

START_TEST(selective_copy_rejects_too_short_sequences) {
    Task task = open_task("selective_copy", 16, copy_eight);
    ASSERT_MENTIONS(make_batch_error(&task, 1, 15), "seq_len ≥ 16");
    task_close(&task);
    ASSERT_MENTIONS(open_error("selective_copy", 2, NULL), "task.vocab_size");
}
END_TEST

/* ---------------------------------------------------------------- induction */

static void segment_six(TaskConfig *t) { t->copy_len = 6; }

START_TEST(induction_scores_each_continuation_of_the_repeated_segment) {
    /* The defining property: a scored target is the token that followed the earlier
     * (and only earlier) occurrence of the current input. */
    Task task = open_task("induction", 32, segment_six);
    const int B = 200, T = 30, m = 6, V = 32;
    make_batch_ok(&task, 5, B, T);
    for (int b = 0; b < B; b++) {
        const int *in = inputs + b * T, *tg = targets + b * T;
        int scored = 0, high = 0;
        for (int t = 0; t < T; t++) {
            high += in[t] >= V / 2;
            if (tg[t] == -100) continue;
            scored++;
            int earlier = -1;
            for (int u = 0; u < t; u++)
                if (in[u] == in[t]) {
                    ck_assert_msg(earlier == -1, "example %d: token %d at %d occurs twice before", b, in[t], t);
                    earlier = u;
                }
            ck_assert_msg(earlier >= 0, "example %d: scored position %d (token %d) has no earlier occurrence", b, t, in[t]);
            ck_assert_msg(tg[t] == in[earlier + 1], "example %d: target at %d is %d, the earlier occurrence was followed "
                          "by %d", b, t, tg[t], in[earlier + 1]);
            ck_assert_msg(t + 1 < T && in[t + 1] == tg[t], "example %d: target at %d is %d but the next input is %d", b, t,
                          tg[t], t + 1 < T ? in[t + 1] : -1);
        }
        ck_assert_msg(scored == m - 1, "example %d: %d scored positions, expected %d", b, scored, m - 1);
        ck_assert_msg(high == 2 * m, "example %d: %d segment-range tokens, expected %d (two copies)", b, high, 2 * m);
    }
    task_close(&task);
}
END_TEST

static void segment_one(TaskConfig *t) { t->copy_len = 1; }
static void segment_twenty(TaskConfig *t) { t->copy_len = 20; }

START_TEST(induction_rejects_bad_settings) {
    ASSERT_MENTIONS(open_error("induction", 32, segment_one), "at least 2");
    ASSERT_MENTIONS(open_error("induction", 32, segment_twenty), "task.vocab_size ≥ 40");
    Task task = open_task("induction", 32, segment_six);
    ASSERT_MENTIONS(make_batch_error(&task, 1, 11), "seq_len ≥ 12");
    task_close(&task);
}
END_TEST

/* ---------------------------------------------------------------- all synthetic tasks */

START_TEST(synthetic_tasks_are_deterministic_in_the_seed) {
    const char *names[3] = {"passkey", "selective_copy", "induction"};
    static int first_in[MAX_TOKENS], first_tg[MAX_TOKENS];
    const int B = 8, T = 64, n = B * T;
    for (int k = 0; k < 3; k++) {
        Task task = open_task(names[k], 64, copy_eight);
        make_batch_ok(&task, 11, B, T);
        memcpy(first_in, inputs, n * sizeof(int));
        memcpy(first_tg, targets, n * sizeof(int));
        make_batch_ok(&task, 11, B, T);
        for (int i = 0; i < n; i++)
            ck_assert_msg(inputs[i] == first_in[i] && targets[i] == first_tg[i],
                          "%s: seed 11 twice differs at token %d: input %d vs %d, target %d vs %d", names[k], i,
                          inputs[i], first_in[i], targets[i], first_tg[i]);
        make_batch_ok(&task, 12, B, T);
        int differ = 0;
        for (int i = 0; i < n; i++) differ += inputs[i] != first_in[i];
        ck_assert_msg(differ > n / 8, "%s: seeds 11 and 12 differ in only %d of %d tokens", names[k], differ, n);
        task_close(&task);
    }
}
END_TEST

START_TEST(synthetic_tasks_generate_longer_evaluation_lengths) {
    /* Evaluation runs a task trained at task.seq_len at longer lengths (eval --seq-lens). */
    const char *names[3] = {"passkey", "selective_copy", "induction"};
    for (int k = 0; k < 3; k++) {
        Task task = open_task(names[k], 64, copy_eight);
        make_batch_ok(&task, 2, 2, 4096);
        int scored = 0;
        for (int i = 0; i < 2 * 4096; i++) scored += targets[i] != -100;
        int expected = k == 0 ? 2 : k == 1 ? 16 : 14;
        ck_assert_msg(scored == expected, "%s at T=4096: %d scored targets, expected %d", names[k], scored, expected);
        task_close(&task);
    }
}
END_TEST

START_TEST(config_accepts_the_new_tasks_and_rejects_bad_values) {
    Config cfg;
    BraidError err = {{0}};
    const char *good[] = {"task.name=passkey", "task.needle_depth=0.25", "task.copy_len=8", "task.split=heldout"};
    ck_assert_msg(config_load(&cfg, NULL, good, 4, &err) == 0, "config: %s", err.message);
    ck_assert_str_eq(cfg.task.name, "passkey");
    ck_assert_float_eq(cfg.task.needle_depth, 0.25f);
    ck_assert_int_eq(cfg.task.copy_len, 8);
    ck_assert_str_eq(cfg.task.split, "heldout");
    const char *bad_depth[] = {"task.name=passkey", "task.needle_depth=1.5"};
    ck_assert_int_eq(config_load(&cfg, NULL, bad_depth, 2, &err), -1);
    ASSERT_MENTIONS(err.message, "task.needle_depth");
    const char *bad_split[] = {"task.name=text", "task.split=test"};
    ck_assert_int_eq(config_load(&cfg, NULL, bad_split, 2, &err), -1);
    ASSERT_MENTIONS(err.message, "task.split");
    const char *bad_name[] = {"task.name=needle"};
    ck_assert_int_eq(config_load(&cfg, NULL, bad_name, 1, &err), -1);
    ASSERT_MENTIONS(err.message, "task.name");
}
END_TEST

/* ---------------------------------------------------------------- text */

static char corpus_path[64];
#define CORPUS_BYTES 5000

/* A corpus of pseudo-random printable bytes: every 12-byte window occurs once, so a
 * window's offset in the file identifies it. */
static unsigned char corpus[CORPUS_BYTES];

static void write_corpus(void) {
    snprintf(corpus_path, sizeof corpus_path, "/tmp/braid_test_tasks_%d.txt", (int)getpid());
    Rng rng;
    rng_seed(&rng, 77);
    for (int i = 0; i < CORPUS_BYTES; i++) corpus[i] = (unsigned char)(32 + rng_below(&rng, 95));
    FILE *f = fopen(corpus_path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", corpus_path);
    ck_assert_int_eq(fwrite(corpus, 1, CORPUS_BYTES, f), CORPUS_BYTES);
    fclose(f);
}

static void use_corpus(TaskConfig *t) { snprintf(t->data_path, sizeof t->data_path, "%s", corpus_path); t->seq_len = 12; }
static void use_corpus_heldout(TaskConfig *t) { use_corpus(t); strcpy(t->split, "heldout"); }

/* Offset of the window in the corpus, or −1. */
static long window_offset(const int *in, int T) {
    for (long s = 0; s + T <= CORPUS_BYTES; s++) {
        int t = 0;
        while (t < T && corpus[s + t] == in[t]) t++;
        if (t == T) return s;
    }
    return -1;
}

START_TEST(text_windows_predict_the_next_byte_inside_their_split) {
    write_corpus();
    const int B = 100, T = 12, cut = CORPUS_BYTES - CORPUS_BYTES / 10;
    for (int heldout = 0; heldout < 2; heldout++) {
        Task task = open_task("text", 256, heldout ? use_corpus_heldout : use_corpus);
        make_batch_ok(&task, 9, B, T);
        long lowest = CORPUS_BYTES, highest = -1;
        for (int b = 0; b < B; b++) {
            const int *in = inputs + b * T, *tg = targets + b * T;
            long s = window_offset(in, T);
            ck_assert_msg(s >= 0, "split %d example %d: window not found in the corpus", heldout, b);
            for (int t = 0; t < T; t++)
                ck_assert_msg(tg[t] == corpus[s + t + 1], "split %d example %d: target %d is %d, the next byte is %d",
                              heldout, b, t, tg[t], corpus[s + t + 1]);
            if (heldout) ck_assert_msg(s >= cut, "held-out window starts at %ld, before the split at %d", s, cut);
            else ck_assert_msg(s + T + 1 <= cut, "training window [%ld, %ld] reaches the held-out bytes from %d", s,
                               s + T, cut);
            if (s < lowest) lowest = s;
            if (s > highest) highest = s;
        }
        if (!heldout) ck_assert_msg(lowest < 500 && highest > cut - 500, "training windows span only [%ld, %ld]", lowest, highest);
        task_close(&task);
    }
    unlink(corpus_path);
}
END_TEST

static void missing_corpus(TaskConfig *t) { strcpy(t->data_path, "/nonexistent/corpus.txt"); }
static void long_windows(TaskConfig *t) { use_corpus_heldout(t); t->seq_len = 600; }

START_TEST(text_rejects_bad_settings) {
    write_corpus();
    ASSERT_MENTIONS(open_error("text", 256, missing_corpus), "/nonexistent/corpus.txt");
    ASSERT_MENTIONS(open_error("text", 128, use_corpus), "needs 256");
    ASSERT_MENTIONS(open_error("text", 256, NULL), "task.data_path");
    ASSERT_MENTIONS(open_error("text", 256, long_windows), "held-out split holds 500 bytes");
    Task task = open_task("text", 256, use_corpus_heldout);
    ASSERT_MENTIONS(make_batch_error(&task, 1, 500), "seq_len 500");
    task_close(&task);
    unlink(corpus_path);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tasks");
    TCase *tc = tcase_create("tasks");
    tcase_add_test(tc, passkey_hides_one_needle_in_filler_and_scores_only_the_query);
    tcase_add_test(tc, passkey_needle_depth_sets_the_needle_position);
    tcase_add_test(tc, passkey_default_depth_is_uniform_over_the_haystack);
    tcase_add_test(tc, passkey_rejects_bad_settings);
    tcase_add_test(tc, selective_copy_asks_for_the_scattered_tokens_in_order);
    tcase_add_test(tc, selective_copy_spreads_tokens_over_the_whole_data_region);
    tcase_add_test(tc, selective_copy_rejects_too_short_sequences);
    tcase_add_test(tc, induction_scores_each_continuation_of_the_repeated_segment);
    tcase_add_test(tc, induction_rejects_bad_settings);
    tcase_add_test(tc, synthetic_tasks_are_deterministic_in_the_seed);
    tcase_add_test(tc, synthetic_tasks_generate_longer_evaluation_lengths);
    tcase_add_test(tc, config_accepts_the_new_tasks_and_rejects_bad_values);
    tcase_add_test(tc, text_windows_predict_the_next_byte_inside_their_split);
    tcase_add_test(tc, text_rejects_bad_settings);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
