/* bench — times whole training steps (forward, backward, AdamW) of a config on the CPU.
 *
 *   bench --config configs/attention-tiny.yaml [--set k=v ...] [--steps 20] [--warmup 3]
 *
 * Prints tokens/s and ms/step as a table line and as JSON (--json), so tools/bench_cpu.sh
 * can put it beside the PyTorch reference measured in the same run. Evaluation and
 * logging are off while timing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/config.h"
#include "train/trainer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench --config FILE [--set KEY=VALUE ...] [--steps N] [--warmup N] [--json]\n"
            "\n"
            "Times full training steps (forward + backward + AdamW) of the model in FILE on the\n"
            "task's batch shape, after --warmup untimed steps (default 3), over --steps (default 20).\n"
            "Reports the median step time and tokens/s.\n");
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *config_path = NULL, *overrides[128];
    int n_overrides = 0, steps = 20, warmup = 3, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--json")) { json = 1; continue; }
        if (!v) { fprintf(stderr, "bench: %s needs a value (see --help)\n", a); return 1; }
        if (!strcmp(a, "--config")) config_path = v;
        else if (!strcmp(a, "--set") && n_overrides < 120) overrides[n_overrides++] = v;
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else { fprintf(stderr, "bench: unknown option '%s' (see --help)\n", a); return 1; }
        i++;
    }
    if (!config_path || steps < 1 || warmup < 0) { usage(stderr); return 1; }
    overrides[n_overrides++] = "train.run_dir=";
    Config cfg;
    BraidError err;
    if (config_load(&cfg, config_path, overrides, n_overrides, &err) || config_resolve_device(&cfg, &err)) {
        fprintf(stderr, "bench: %s\n", err.message);
        return 1;
    }
    Trainer t;
    if (trainer_init(&t, &cfg, &err)) { fprintf(stderr, "bench: %s\n", err.message); return 1; }
    t.quiet = 1;
    double *times = malloc(sizeof(double) * steps);
    for (int s = 0; s < warmup + steps; s++) {
        StepStats st;
        double t0 = time_seconds();
        if (trainer_step(&t, &st, &err)) { fprintf(stderr, "bench: %s\n", err.message); return 1; }
        double dt = time_seconds() - t0;
        if (s >= warmup) times[s - warmup] = dt;
    }
    qsort(times, steps, sizeof(double), compare_doubles);
    double median = times[steps / 2];
    double tokens = (double)cfg.train.batch_size * cfg.task.seq_len * cfg.train.grad_accum;
    printf("%-32s pattern %-10s params %9zu  step %8.2f ms  %10.0f tokens/s\n", config_path,
           cfg.model.pattern, t.model.params.total, 1e3 * median, tokens / median);
    if (json)
        printf("{\"config\": \"%s\", \"pattern\": \"%s\", \"params\": %zu, \"batch\": %d, \"seq_len\": %d, "
               "\"step_ms\": %.3f, \"tokens_per_s\": %.1f}\n", config_path, cfg.model.pattern,
               t.model.params.total, cfg.train.batch_size, cfg.task.seq_len, 1e3 * median, tokens / median);
    free(times);
    trainer_free(&t);
    return 0;
}
