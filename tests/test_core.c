/* test_core.c — the seeded generator (pinned against an independent Python xoshiro256**; its
 * four-word state resumes a stream exactly, as checkpoints rely on), the MQAR generator,
 * the schedule, AdamW and clipping. */
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/rng.h"
#include "models/config.h"
#include "train/adamw.h"
#include "train/task.h"

START_TEST(test_rng_seed_42_gives_the_pinned_xoshiro256_sequence) {
    /* computed by a separate Python implementation of SplitMix64 seeding + xoshiro256** */
    static const uint64_t want[4] = {0x15780b2e0c2ec716ull, 0x6104d9866d113a7eull,
                                     0xae17533239e499a1ull, 0xecb8ad4703b360a1ull};
    Rng r;
    rng_seed(&r, 42);
    for (int i = 0; i < 4; i++) {
        uint64_t got = rng_u64(&r);
        ck_assert_msg(got == want[i], "draw %d: 0x%016" PRIx64 ", expected 0x%016" PRIx64, i, got, want[i]);
    }
}
END_TEST

START_TEST(test_rng_same_seed_same_stream_and_different_seed_different_stream) {
    Rng a, b, c;
    rng_seed(&a, 7);
    rng_seed(&b, 7);
    rng_seed(&c, 8);
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = rng_u64(&a), y = rng_u64(&b), z = rng_u64(&c);
        ck_assert_msg(x == y, "draw %d: seed 7 gave 0x%016" PRIx64 " then 0x%016" PRIx64, i, x, y);
        differ += x != z;
    }
    ck_assert_msg(differ > 990, "seeds 7 and 8 agree on %d of 1000 draws", 1000 - differ);
}
END_TEST

START_TEST(test_rng_copied_state_resumes_the_stream_exactly) {
    Rng r;
    rng_seed(&r, 123);
    for (int i = 0; i < 17; i++) rng_u64(&r);
    Rng saved;
    memcpy(&saved, &r, sizeof r);   /* what a checkpoint stores */
    float expect[64], got[64];
    rng_fill_normal(&r, expect, 64, 1.0f);
    rng_fill_normal(&saved, got, 64, 1.0f);
    for (int i = 0; i < 64; i++)
        ck_assert_msg(got[i] == expect[i], "normal %d after resume: %.9g, expected %.9g", i, got[i], expect[i]);
}
END_TEST

START_TEST(test_rng_below_stays_in_range_and_covers_every_value) {
    Rng r;
    rng_seed(&r, 5);
    int counts[7] = {0};
    for (int i = 0; i < 7000; i++) {
        uint32_t v = rng_below(&r, 7);
        ck_assert_msg(v < 7, "rng_below(7) returned %u", v);
        counts[v]++;
    }
    for (int v = 0; v < 7; v++)   /* expected 1000 each; 5 sigma ≈ 150 */
        ck_assert_msg(abs(counts[v] - 1000) < 150, "value %d drawn %d times of 7000, expected about 1000",
                      v, counts[v]);
}
END_TEST

START_TEST(test_rng_uniform_and_normal_have_the_right_moments) {
    Rng r;
    rng_seed(&r, 9);
    const int n = 20000;
    double su = 0, sn = 0, sn2 = 0;
    for (int i = 0; i < n; i++) {
        float u = rng_uniform(&r);
        ck_assert_msg(u >= 0.0f && u < 1.0f, "rng_uniform returned %.9g outside [0,1)", u);
        su += u;
        double g = rng_normal(&r);
        sn += g;
        sn2 += g * g;
    }
    double mean_u = su / n, mean_n = sn / n, var_n = sn2 / n - mean_n * mean_n;
    ck_assert_msg(fabs(mean_u - 0.5) < 0.01, "uniform mean %.4f, expected 0.5", mean_u);
    ck_assert_msg(fabs(mean_n) < 0.04, "normal mean %.4f, expected 0", mean_n);
    ck_assert_msg(fabs(var_n - 1.0) < 0.05, "normal variance %.4f, expected 1", var_n);
}
END_TEST

START_TEST(test_json_write_string_escapes_quotes_backslashes_and_controls) {
    char *out = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&out, &size);
    json_write_string(f, "runs/a \"b\"\\c\n\x01.yaml");
    fclose(f);
    ck_assert_str_eq(out, "\"runs/a \\\"b\\\"\\\\c\\u000a\\u0001.yaml\"");
    free(out);
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
    AdamWSettings s = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f, .weight_decay = 0.1f,
                       .grad_scale = 1.0f};
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
    float scale = clip_grad_scale(n, 1.0f);
    for (int i = 0; i < 3; i++) g[i] *= scale;
    ck_assert_float_eq_tol(global_grad_norm(g, 3), 1.0, 1e-5);
    ck_assert_float_eq(clip_grad_scale(0.5, 1.0f), 1.0f);   /* under the bound: untouched */
    ck_assert_float_eq(clip_grad_scale(5.0, 0.0f), 1.0f);   /* max_norm 0: no clipping */
}
END_TEST

/* AdamW with grad_scale s on gradients g moves parameters and moments exactly as with
 * grad_scale 1 on the gradients s·g (what the trainer's clipping used to do in a pass). */
START_TEST(adamw_grad_scale_is_clipping) {
    ParamList list = {0};
    int shape[1] = {3};
    param_list_add(&list, "", "w", 1, shape, INIT_ZEROS, 0, 0);
    const float s = 0.37f;
    float g[3] = {0.5f, -1.25f, 2.0f}, gs[3];
    for (int i = 0; i < 3; i++) gs[i] = g[i] * s;
    float p1[3] = {1.0f, -2.0f, 0.5f}, m1[3] = {0.1f, 0.2f, -0.3f}, v1[3] = {0.01f, 0.02f, 0.03f};
    float p2[3], m2[3], v2[3];
    memcpy(p2, p1, sizeof p1); memcpy(m2, m1, sizeof m1); memcpy(v2, v1, sizeof v1);
    AdamWSettings folded = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f, .weight_decay = 0.1f,
                            .grad_scale = s};
    AdamWSettings plain = folded;
    plain.grad_scale = 1.0f;
    adamw_update(p1, g, m1, v1, &list, &folded, 3);
    adamw_update(p2, gs, m2, v2, &list, &plain, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(p1[i] == p2[i] && m1[i] == m2[i] && v1[i] == v2[i],
                      "element %d: folded scale gives p %g m %g v %g, scaled gradients p %g m %g v %g", i,
                      p1[i], m1[i], v1[i], p2[i], m2[i], v2[i]);
    }
    param_list_free(&list);
}
END_TEST

int main(void) {
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_rng_seed_42_gives_the_pinned_xoshiro256_sequence);
    tcase_add_test(tc, test_json_write_string_escapes_quotes_backslashes_and_controls);
    tcase_add_test(tc, test_rng_same_seed_same_stream_and_different_seed_different_stream);
    tcase_add_test(tc, test_rng_copied_state_resumes_the_stream_exactly);
    tcase_add_test(tc, test_rng_below_stays_in_range_and_covers_every_value);
    tcase_add_test(tc, test_rng_uniform_and_normal_have_the_right_moments);
    tcase_add_test(tc, mqar_examples_follow_zoology_layout);
    tcase_add_test(tc, mqar_queries_favour_early_gaps);
    tcase_add_test(tc, mqar_rejects_too_short_sequences);
    tcase_add_test(tc, schedule_warms_up_then_decays_to_min);
    tcase_add_test(tc, adamw_matches_hand_computation);
    tcase_add_test(tc, clipping_bounds_the_global_norm);
    tcase_add_test(tc, adamw_grad_scale_is_clipping);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
