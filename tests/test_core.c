/* test_core.c — rng, the MQAR generator, the schedule, AdamW and clipping. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "models/config.h"
#include "train/adamw.h"
#include "train/task.h"

START_TEST(rng_is_deterministic_and_seed_dependent) {
    Rng a, b, c;
    rng_seed(&a, 42); rng_seed(&b, 42); rng_seed(&c, 43);
    int same_c = 1;
    for (int i = 0; i < 100; i++) {
        uint64_t x = rng_u64(&a), y = rng_u64(&b), z = rng_u64(&c);
        ck_assert_msg(x == y, "same seed gave different draw %d", i);
        if (x != z) same_c = 0;
    }
    ck_assert_msg(!same_c, "different seeds gave the same stream");
    double sum = 0, sq = 0;
    for (int i = 0; i < 20000; i++) { double v = rng_normal(&a); sum += v; sq += v * v; }
    ck_assert_msg(fabs(sum / 20000) < 0.05 && fabs(sq / 20000 - 1) < 0.05, "normal mean %g var %g",
                  sum / 20000, sq / 20000);
    for (int i = 0; i < 1000; i++) ck_assert(rng_below(&a, 7) < 7);
}
END_TEST

START_TEST(mqar_examples_follow_zoology_layout) {
    Config cfg;
    config_defaults(&cfg);
    TaskConfig *t = &cfg.task;
    t->vocab_size = 64; t->num_kv_pairs = 6;
    int T = 48, inputs[48], targets[48];
    Rng rng;
    rng_seed(&rng, 5);
    BraidError err;
    for (int ex = 0; ex < 200; ex++) {
        ck_assert_int_eq(mqar_example(t, &rng, T, inputs, targets, &err), 0);
        int answers = 0;
        for (int i = 0; i < 6; i++) {
            ck_assert_msg(inputs[2 * i] >= 1 && inputs[2 * i] < 32, "key %d out of range", inputs[2 * i]);
            ck_assert_msg(inputs[2 * i + 1] >= 32 && inputs[2 * i + 1] < 64, "value out of range");
            ck_assert_int_eq(targets[2 * i], -100);
            ck_assert_int_eq(targets[2 * i + 1], -100);
            for (int j = 0; j < i; j++) ck_assert_msg(inputs[2 * j] != inputs[2 * i], "repeated key");
        }
        for (int p = 12; p < T; p++) {
            if (targets[p] == -100) continue;
            answers++;
            ck_assert_msg((p - 12) % 2 == 0, "query at odd offset %d", p);
            int found = 0;
            for (int i = 0; i < 6; i++)
                if (inputs[2 * i] == inputs[p]) { found = 1; ck_assert_int_eq(targets[p], inputs[2 * i + 1]); }
            ck_assert_msg(found, "query key %d not in the context", inputs[p]);
        }
        ck_assert_int_eq(answers, 6);
    }
    Rng r1, r2;
    int a[48], b[48], ta[48], tb[48];
    rng_seed(&r1, 9); rng_seed(&r2, 9);
    mqar_example(t, &r1, T, a, ta, &err);
    mqar_example(t, &r2, T, b, tb, &err);
    ck_assert(memcmp(a, b, sizeof a) == 0 && memcmp(ta, tb, sizeof ta) == 0);
}
END_TEST

START_TEST(mqar_queries_favour_early_gaps) {
    Config cfg;
    config_defaults(&cfg);
    int T = 256, inputs[256], targets[256], early = 0, late = 0;
    Rng rng;
    rng_seed(&rng, 1);
    BraidError err;
    for (int ex = 0; ex < 200; ex++) {
        mqar_example(&cfg.task, &rng, T, inputs, targets, &err);
        for (int p = 8; p < T; p++)
            if (targets[p] != -100) { if (p < 8 + 62) early++; else if (p >= T - 62) late++; }
    }
    ck_assert_msg(early > 2 * late, "power law: %d early vs %d late queries", early, late);
}
END_TEST

START_TEST(mqar_rejects_too_short_sequences) {
    Config cfg;
    config_defaults(&cfg);
    cfg.task.num_kv_pairs = 8;
    int inputs[20], targets[20];
    Rng rng;
    rng_seed(&rng, 1);
    BraidError err;
    ck_assert_int_eq(mqar_example(&cfg.task, &rng, 20, inputs, targets, &err), -1);
    ck_assert_msg(strstr(err.message, "seq_len") != NULL, "message: %s", err.message);
}
END_TEST

START_TEST(schedule_warms_up_then_decays_to_min) {
    ck_assert_float_eq_tol(lr_schedule(0, 10, 100, 1.0f, 0.1f), 0.1f, 1e-6);
    ck_assert_float_eq_tol(lr_schedule(9, 10, 100, 1.0f, 0.1f), 1.0f, 1e-6);
    ck_assert_float_eq_tol(lr_schedule(55, 10, 100, 1.0f, 0.1f), 0.55f, 1e-5);
    ck_assert_float_eq_tol(lr_schedule(100, 10, 100, 1.0f, 0.1f), 0.1f, 1e-6);
    for (int s = 10; s < 100; s++)
        ck_assert(lr_schedule(s + 1, 10, 100, 1.0f, 0.1f) <= lr_schedule(s, 10, 100, 1.0f, 0.1f));
}
END_TEST

START_TEST(adamw_matches_hand_computation) {
    ParamList list = {0};
    int shape[1] = {2};
    param_list_add(&list, "", "w", 1, shape, INIT_ZEROS, 0, 0);
    param_list_add(&list, "", "norm", 1, shape, INIT_ONES, 0, 1);
    float p[4] = {1.0f, -2.0f, 0.5f, 3.0f}, g[4] = {0.1f, -0.3f, 0.2f, 0.4f};
    float m[4] = {0}, v[4] = {0};
    AdamWSettings s = {0.01f, 0.9f, 0.99f, 1e-8f, 0.1f};
    adamw_update(p, g, m, v, &list, &s, 1);
    /* step 1: m̂ = g, v̂ = g², update = sign(g) (up to eps); decay only on "w" */
    float expect[4] = {1.0f - 0.01f * (1 + 0.1f * 1.0f), -2.0f - 0.01f * (-1 + 0.1f * -2.0f),
                       0.5f - 0.01f, 3.0f - 0.01f};
    for (int i = 0; i < 4; i++) ck_assert_msg(fabsf(p[i] - expect[i]) < 1e-6, "p[%d] = %g, expected %g", i, p[i], expect[i]);
    param_list_free(&list);
}
END_TEST

START_TEST(clipping_bounds_the_global_norm) {
    float g[3] = {3.0f, 4.0f, 0.0f};
    double n = global_grad_norm(g, 3);
    ck_assert_float_eq_tol(n, 5.0, 1e-9);
    clip_grad_norm(g, 3, n, 1.0f);
    ck_assert_float_eq_tol(global_grad_norm(g, 3), 1.0, 1e-5);
    float h[2] = {0.3f, 0.4f};
    ck_assert_float_eq(clip_grad_norm(h, 2, 0.5, 1.0f), 1.0f);
}
END_TEST

int main(void) {
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, rng_is_deterministic_and_seed_dependent);
    tcase_add_test(tc, mqar_examples_follow_zoology_layout);
    tcase_add_test(tc, mqar_queries_favour_early_gaps);
    tcase_add_test(tc, mqar_rejects_too_short_sequences);
    tcase_add_test(tc, schedule_warms_up_then_decays_to_min);
    tcase_add_test(tc, adamw_matches_hand_computation);
    tcase_add_test(tc, clipping_bounds_the_global_norm);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
