/* test_core.c — the seeded generator (src/core/rng.c): the same seed gives the same
 * numbers on every build (pinned against an independent Python implementation of
 * SplitMix64 → xoshiro256**), its four-word state resumes a stream exactly (what a
 * checkpoint relies on), and the derived distributions stay in range. */
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

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

static Suite *core_suite(void) {
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("rng");
    tcase_add_test(tc, test_rng_seed_42_gives_the_pinned_xoshiro256_sequence);
    tcase_add_test(tc, test_rng_same_seed_same_stream_and_different_seed_different_stream);
    tcase_add_test(tc, test_rng_copied_state_resumes_the_stream_exactly);
    tcase_add_test(tc, test_rng_below_stays_in_range_and_covers_every_value);
    tcase_add_test(tc, test_rng_uniform_and_normal_have_the_right_moments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(core_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
