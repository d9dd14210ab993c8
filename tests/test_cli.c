/* test_cli.c — the executables as a user meets them: --help, bad flags, bad configs.
 * Each case runs the real binary and checks its exit status and what it printed. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "core/device.h"

static char output[65536];

/* Runs `cmd` (stdout and stderr together) and returns its exit status. */
static int run(const char *cmd) {
    char full[4096];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_msg(p != NULL, "popen %s", cmd);
    size_t n = fread(output, 1, sizeof output - 1, p);
    output[n] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static const char *exes[] = {"train", "eval", "bench"};

START_TEST(every_executable_answers_help_with_its_options) {
    for (size_t i = 0; i < sizeof exes / sizeof exes[0]; i++) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "%s/%s --help", BRAID_BINARY_DIR, exes[i]);
        int rc = run(cmd);
        ck_assert_msg(rc == 0, "%s --help exited %d: %s", exes[i], rc, output);
        ck_assert_msg(strstr(output, "usage:") && strstr(output, "--"), "%s --help printed: %s", exes[i], output);
    }
}
END_TEST

START_TEST(unknown_flag_is_an_error_naming_it) {
    for (size_t i = 0; i < sizeof exes / sizeof exes[0]; i++) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "%s/%s --no-such-flag x", BRAID_BINARY_DIR, exes[i]);
        int rc = run(cmd);
        ck_assert_msg(rc == 1, "%s with an unknown flag exited %d", exes[i], rc);
        ck_assert_msg(strstr(output, "--no-such-flag"), "%s did not name the flag: %s", exes[i], output);
    }
}
END_TEST

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert(f != NULL);
    fputs(text, f);
    fclose(f);
}

START_TEST(train_reports_config_errors_with_file_line_column) {
    char path[512], cmd[1024];
    snprintf(path, sizeof path, "%s/cli-bad.yaml", BRAID_BINARY_DIR);
    write_file(path, "model:\n  d_model: 64\n  n_layer: 2\n");
    snprintf(cmd, sizeof cmd, "%s/train --config %s", BRAID_BINARY_DIR, path);
    ck_assert_int_eq(run(cmd), 1);
    ck_assert_msg(strstr(output, "cli-bad.yaml:3:3") && strstr(output, "model.n_layer") &&
                  strstr(output, "did you mean 'model.n_layers'"), "output: %s", output);

    write_file(path, "model:\n  d_model: [1, 2\n");
    ck_assert_int_eq(run(cmd), 1);
    ck_assert_msg(strstr(output, "cli-bad.yaml:"), "malformed YAML: %s", output);

    snprintf(cmd, sizeof cmd, "%s/train --config %s/no-such.yaml", BRAID_BINARY_DIR, BRAID_BINARY_DIR);
    ck_assert_int_eq(run(cmd), 1);
    ck_assert_msg(strstr(output, "no-such.yaml") && strstr(output, "No such file"), "output: %s", output);

    snprintf(cmd, sizeof cmd, "%s/train --config %s/configs/attention-tiny.yaml --set model.d_model=abc",
             BRAID_BINARY_DIR, BRAID_SOURCE_DIR);
    ck_assert_int_eq(run(cmd), 1);
    ck_assert_msg(strstr(output, "--set model.d_model=abc") && strstr(output, "integer"), "output: %s", output);
}
END_TEST

/* --device cuda: where it cannot run (no CUDA build, or no GPU, as on CI) one clear error
 * naming train.device and the way out; where it can, a short job on the GPU. */
START_TEST(device_cuda_runs_on_a_gpu_or_says_why_not) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s/train --config %s/configs/attention-tiny.yaml --device cuda --set train.steps=2 "
             "--set train.batch_size=4 --set train.eval_examples=8 --set train.warmup_steps=1 --set train.run_dir=",
             BRAID_BINARY_DIR, BRAID_SOURCE_DIR);
    int rc = run(cmd);
    if (device_cuda_available()) {
        ck_assert_msg(rc == 0 && strstr(output, "step 2/2") && strstr(output, "MFU"), "train on the GPU: rc %d: %s",
                      rc, output);
    } else {
        ck_assert_msg(rc == 1, "train --device cuda without a GPU exited %d: %s", rc, output);
        ck_assert_msg(strstr(output, "train.device: cuda") && strstr(output, "--device cpu"), "output: %s", output);
    }
}
END_TEST

START_TEST(train_runs_a_short_job_and_writes_its_run_directory) {
    char cmd[2048], path[1024];
    snprintf(cmd, sizeof cmd,
             "rm -rf %s/cli-run && %s/train --config %s/configs/attention-tiny.yaml --set train.steps=4 "
             "--set train.batch_size=4 --set train.eval_examples=8 --set train.log_every=2 --set train.warmup_steps=2 "
             "--set train.run_dir=%s/cli-run", BRAID_BINARY_DIR, BRAID_BINARY_DIR, BRAID_SOURCE_DIR, BRAID_BINARY_DIR);
    int rc = run(cmd);
    ck_assert_msg(rc == 0, "train exited %d: %s", rc, output);
    ck_assert_msg(strstr(output, "pattern: \"AA\"") && strstr(output, "step 4/4") && strstr(output, "eval step 4"),
                  "train output lacks the resolved config, progress or evaluation: %s", output);
    const char *files[] = {"config.yaml", "metrics.jsonl"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/cli-run/%s", BRAID_BINARY_DIR, files[i]);
        FILE *f = fopen(path, "r");
        ck_assert_msg(f != NULL, "run directory lacks %s", files[i]);
        fclose(f);
    }
    /* summary.json: the cost columns a sweep aggregates, the activations' memory among
     * them, which must be what the model summary printed (arena + scratch, MiB) */
    snprintf(path, sizeof path, "%s/cli-run/summary.json", BRAID_BINARY_DIR);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "run directory lacks summary.json");
    char summary[4096];
    size_t n = fread(summary, 1, sizeof summary - 1, f);
    summary[n] = '\0';
    fclose(f);
    const char *at = strstr(summary, "\"activation_bytes\": ");
    ck_assert_msg(at != NULL, "summary.json lacks activation_bytes: %s", summary);
    const double bytes = atof(at + strlen("\"activation_bytes\": "));
    double arena_mib = 0, scratch_mib = 0;
    const char *printed = strstr(output, "activations: ");
    ck_assert_msg(printed && sscanf(printed, "activations: %lf MiB arena + %lf MiB scratch", &arena_mib,
                                    &scratch_mib) == 2, "train output lacks the activations line: %s", output);
    ck_assert_msg(bytes > 0 && fabs(bytes / 1048576.0 - (arena_mib + scratch_mib)) < 0.2,
                  "summary.json activation_bytes %.0f, the model summary printed %.1f + %.1f MiB", bytes, arena_mib,
                  scratch_mib);
}
END_TEST

/* The tiny CPU moe_vs_dense sweep with this build's train, which the sweep tests extend. */
static void tiny_sweep_command(char *buf, size_t len) {
    snprintf(buf, len, "TRAIN=%s/train bash %s/experiments/moe_vs_dense.sh --scale tiny --device cpu",
             BRAID_BINARY_DIR, BRAID_SOURCE_DIR);
}

/* The sweep scripts' shared runner (experiments/lib.sh), through moe_vs_dense's dry run
 * (it probes nothing, so it is quick): --gpus spreads the points round-robin; bad values
 * and a MIXERS pattern of the wrong length are refused by name; another pattern names
 * its points for it; --only selects by regex, one starting with '-' too. */
START_TEST(sweep_dry_run_spreads_points_over_gpus_and_checks_its_flags) {
    char cmd[2048], base[1024];
    tiny_sweep_command(base, sizeof base);
    snprintf(cmd, sizeof cmd, "%s --gpus 2 --jobs 4 --dry-run", base);
    int rc = run(cmd);
    ck_assert_msg(rc == 0, "dry run exited %d: %s", rc, output);
    ck_assert_msg(strstr(output, "spread over 2 GPUs") && strstr(output, "dense-T128-kv16-s1 (GPU 0)") &&
                      strstr(output, "moe-e4-top2-T128-kv16-s1 (GPU 1)") &&
                      strstr(output, "moe-e4-top1-T128-kv16-s1 (GPU 0)"),
                  "points not spread round-robin over the GPUs: %s", output);
    snprintf(cmd, sizeof cmd, "%s --gpus 0 --dry-run", base);
    rc = run(cmd);
    ck_assert_msg(rc == 1 && strstr(output, "--gpus must be a positive integer"), "--gpus 0: exit %d: %s", rc, output);
    snprintf(cmd, sizeof cmd, "MIXERS=MMAMM %s --dry-run", base);
    rc = run(cmd);
    ck_assert_msg(rc == 1 && strstr(output, "MIXERS MMAMM is not 4 blocks long"), "MIXERS: exit %d: %s", rc, output);
    snprintf(cmd, sizeof cmd, "MIXERS=MAMA %s --dry-run", base);
    rc = run(cmd);
    ck_assert_msg(rc == 0 && strstr(output, "MAMA-jamba-T128-kv16-s1:") && !strstr(output, "\njamba-T128"),
                  "MIXERS=MAMA points not named for the pattern: %s", output);
    /* an --only regex that starts with '-' is a pattern, not a grep option */
    snprintf(cmd, sizeof cmd, "%s --seeds 2 --only '-s2$' --dry-run", base);
    rc = run(cmd);
    ck_assert_msg(rc == 0 && strstr(output, "dense-T128-kv16-s2:") && !strstr(output, "dense-T128-kv16-s1:") &&
                      !strstr(output, "grep"),
                  "--only '-s2$' did not select the seed-2 points: %s", output);
}
END_TEST

/* --gpu-offset K starts the round-robin at GPU K mod G (tools/gpu_sweep.sh staggers the sweeps
 * of a --and list with it); a value that is not a non-negative integer is refused by name. */
START_TEST(sweep_gpu_offset_starts_the_round_robin_there) {
    char cmd[2048], base[1024];
    tiny_sweep_command(base, sizeof base);
    snprintf(cmd, sizeof cmd, "%s --gpus 2 --gpu-offset 1 --jobs 4 --dry-run", base);
    int rc = run(cmd);
    ck_assert_msg(rc == 0, "dry run exited %d: %s", rc, output);
    ck_assert_msg(strstr(output, "round-robin from GPU 1") && strstr(output, "dense-T128-kv16-s1 (GPU 1)") &&
                      strstr(output, "moe-e4-top2-T128-kv16-s1 (GPU 0)") &&
                      strstr(output, "moe-e4-top1-T128-kv16-s1 (GPU 1)"),
                  "--gpu-offset 1 did not start the round-robin at GPU 1: %s", output);
    snprintf(cmd, sizeof cmd, "%s --gpus 2 --gpu-offset 3 --dry-run", base);   /* 3 mod 2 */
    rc = run(cmd);
    ck_assert_msg(rc == 0 && strstr(output, "dense-T128-kv16-s1 (GPU 1)"), "--gpu-offset 3 of 2 GPUs: exit %d: %s",
                  rc, output);
    const char *bad[] = {"-1", "x", "1.5"};
    for (int i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd, "%s --gpus 2 --gpu-offset %s --dry-run", base, bad[i]);
        rc = run(cmd);
        ck_assert_msg(rc == 1 && strstr(output, "--gpu-offset must be a non-negative integer"),
                      "--gpu-offset %s: exit %d: %s", bad[i], rc, output);
    }
}
END_TEST

/* A point that dies at start-up out of GPU memory (the points beside it hold the memory)
 * starts again after OOM_WAIT seconds, up to OOM_RETRIES times, then fails by name. The
 * TRAIN here is a stand-in: the sweep's parameter probes (--quiet) go to the real train;
 * a point's training prints train's arena error while the marker file says so. */
START_TEST(sweep_restarts_a_point_that_ran_out_of_gpu_memory) {
    char cmd[8192], base[6000], fake[1024], marker[1024];
    snprintf(fake, sizeof fake, "%s/fake-train-oom.sh", BRAID_BINARY_DIR);
    snprintf(marker, sizeof marker, "%s/fake-train-oom.count", BRAID_BINARY_DIR);
    FILE *f = fopen(fake, "w");
    ck_assert_msg(f != NULL, "cannot write %s", fake);
    fprintf(f,
            "#!/bin/sh\n"
            "for a in \"$@\"; do [ \"$a\" = --quiet ] && exec %s/train \"$@\"; done\n"
            "n=$(cat %s 2>/dev/null || echo 0); echo $((n + 1)) > %s\n"
            "if [ \"$n\" -lt \"${FAKE_OOMS:-1}\" ]; then\n"
            "  echo 'braid: fatal error at src/core/device.c:72: out of GPU memory allocating activation "
            "arena (29660.5 MiB): out of memory' >&2; exit 1\n"
            "fi\n"
            "echo 'fake training done'\n",
            BRAID_BINARY_DIR, marker, marker);
    fclose(f);
    ck_assert_msg(chmod(fake, 0755) == 0, "chmod %s", fake);
    snprintf(base, sizeof base,
             "OOM_WAIT=0 TRAIN=%s bash %s/experiments/moe_vs_dense.sh --scale tiny --device cpu --jobs 1 "
             "--only '^dense-T128-kv16-s1$' --out %s/oom-sweep",
             fake, BRAID_SOURCE_DIR, BRAID_BINARY_DIR);
    snprintf(cmd, sizeof cmd, "rm -f %s; rm -rf %s/oom-sweep; FAKE_OOMS=1 %s", marker, BRAID_BINARY_DIR, base);
    int rc = run(cmd);
    ck_assert_msg(rc == 0 && strstr(output, "dense-T128-kv16-s1: out of GPU memory at start-up") &&
                      strstr(output, "try 1 of 20") && strstr(output, "dense-T128-kv16-s1: finished") &&
                      strstr(output, "fake training done"),
                  "one start-up OOM, then success: exit %d: %s", rc, output);
    snprintf(cmd, sizeof cmd, "rm -f %s; rm -rf %s/oom-sweep; FAKE_OOMS=5 OOM_RETRIES=2 %s", marker,
             BRAID_BINARY_DIR, base);
    rc = run(cmd);
    ck_assert_msg(rc != 0 && strstr(output, "try 2 of 2") && !strstr(output, "try 3 of") &&
                      strstr(output, "dense-T128-kv16-s1: FAILED"),
                  "out of memory past the retries: exit %d: %s", rc, output);
}
END_TEST

/* tools/gpu_sweep.sh checks every sweep of a --and list before it builds or runs anything
 * (a bad one would otherwise surface minutes into a device call). */
START_TEST(gpu_sweep_checks_each_sweep_before_running) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "bash %s/tools/gpu_sweep.sh attention_ratio --scale small --and nosuch --steps 1",
             BRAID_SOURCE_DIR);
    int rc = run(cmd);
    ck_assert_msg(rc == 2 && strstr(output, "no experiments/nosuch.sh"), "unknown second sweep: exit %d: %s", rc,
                  output);
    snprintf(cmd, sizeof cmd, "bash %s/tools/gpu_sweep.sh attention_ratio --scale small --and", BRAID_SOURCE_DIR);
    rc = run(cmd);
    ck_assert_msg(rc == 2 && strstr(output, "an empty sweep around --and"), "empty sweep: exit %d: %s", rc, output);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_executable_answers_help_with_its_options);
    tcase_add_test(tc, unknown_flag_is_an_error_naming_it);
    tcase_add_test(tc, train_reports_config_errors_with_file_line_column);
    tcase_add_test(tc, train_runs_a_short_job_and_writes_its_run_directory);
    tcase_add_test(tc, device_cuda_runs_on_a_gpu_or_says_why_not);
    tcase_add_test(tc, sweep_dry_run_spreads_points_over_gpus_and_checks_its_flags);
    tcase_add_test(tc, sweep_gpu_offset_starts_the_round_robin_there);
    tcase_add_test(tc, gpu_sweep_checks_each_sweep_before_running);
    tcase_add_test(tc, sweep_restarts_a_point_that_ran_out_of_gpu_memory);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
