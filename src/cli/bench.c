/* bench — times whole training steps (forward, backward, AdamW) of a config on the CPU,
 * or with --ops single GPU ops and layers at the config's shapes.
 *
 *   bench --config configs/attention-tiny.yaml [--set k=v ...] [--steps 20] [--warmup N]
 *   bench --ops [--config configs/jamba-small.yaml] [--set k=v ...] [--json]
 *
 * Prints tokens/s and ms/step as a table line and as JSON (--json), so tools/bench_cpu.sh
 * can put it beside the PyTorch reference measured in the same run. Evaluation and
 * logging are off while timing. --ops is core/bench_ops.c: one line per op (and one JSON
 * line with --json), beside tools/bench_torch_gpu.py --ops-only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bench_ops.h"
#include "models/config.h"
#include "train/trainer.h"

#define OPS_DEFAULT_CONFIG "configs/jamba-small.yaml"
#define STR_(x) #x
#define STR(x) STR_(x)

/* Untimed steps before a step timing: a step's time settles after 3 on the CPU. On CUDA,
 * the first call of each matmul shape runs cuBLAS's heuristics and loads its kernel
 * (lazily, up to ~20 ms), and an MoE expert's row count changes nearly every call: at
 * jamba-small's shape 13 steps met ~2,500 shapes, 56–71 of whose first calls took over
 * 1 ms, and the bf16 step's median after 3 warmup steps varied 89–104 ms between
 * processes; after 15 it stays within 87–90 ms (H100, docs/performance.md). */
#define CPU_STEP_WARMUP 3
#define CUDA_STEP_WARMUP 15

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench --config FILE [--set KEY=VALUE ...] [--steps N] [--warmup N] [--json]\n"
            "       bench --ops [--config FILE] [--set KEY=VALUE ...] [--steps N] [--warmup N] [--json]\n"
            "\n"
            "Times full training steps (forward + backward + AdamW) of the model in FILE on the\n"
            "task's batch shape, after --warmup untimed steps, over --steps (default 20).\n"
            "Reports the median step time and tokens/s. The default warmup is " STR(CPU_STEP_WARMUP) " steps on the\n"
            "CPU and " STR(CUDA_STEP_WARMUP) " on CUDA, where each matmul shape's first call loads its\n"
            "kernels and MoE experts see new row counts for many steps.\n"
            "\n"
            "--ops  times single GPU ops instead, at the shapes FILE implies (default\n"
            "       " OPS_DEFAULT_CONFIG "; train.batch_size, task.seq_len, d_model, attention\n"
            "       heads, mamba d_state/expand/d_conv/chunk, moe experts/top_k/hidden), each\n"
            "       forward, backward and both: the Mamba in_proj matmul (float32, then TF32\n"
            "       and bf16 against their tensor-core peaks); causal flash attention in\n"
            "       TFLOP/s, float32 against the GPU's float32 peak, then on the TF32 and\n"
            "       bf16 tensor cores (attention_tf32, attention_bf16) against theirs; the\n"
            "       selective scan and the causal conv1d in GB/s, with the time their\n"
            "       minimal memory traffic takes at the DRAM bandwidth (the\n"
            "       floor) and time/floor; whole mamba, attention, dense, moe and gla layers\n"
            "       through their CUDA paths, matmuls and attention in train.matmul_precision (by\n"
            "       6 x matmul params x tokens, plus attention's own term). Median of --steps\n"
            "       runs (default 20) after --warmup (default 3), timed with cudaEvents. One\n"
            "       table line per op; --json adds one JSON line per op. Needs a CUDA build\n"
            "       and a GPU (exits 1 saying so otherwise).\n");
}

/* bench --ops: checks for a GPU before reading the config, so a machine without one
 * hears that first. */
static int run_ops(const char *config_path, const char **overrides, int n_overrides, int steps,
                   int warmup, int json) {
    BraidError err;
    if (steps < 1 || warmup < 0) { usage(stderr); return 1; }
    if (bench_ops_check_gpu(&err)) { fprintf(stderr, "bench --ops: %s\n", err.message); return 1; }
    Config cfg;
    if (config_load(&cfg, config_path, overrides, n_overrides, &err)) {
        fprintf(stderr, "bench --ops: %s\n", err.message);
        return 1;
    }
    BenchOpsOptions opt = {.warmup = warmup, .repeats = steps, .json = json, .source = config_path,
                           .out = stdout};
    if (bench_ops_run(&cfg, &opt, &err)) { fprintf(stderr, "bench --ops: %s\n", err.message); return 1; }
    return 0;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *config_path = NULL, *overrides[128];
    int n_overrides = 0, steps = 20, warmup = -1, json = 0, ops = 0;   /* warmup −1: the default */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--json")) { json = 1; continue; }
        if (!strcmp(a, "--ops")) { ops = 1; continue; }
        if (!v) { fprintf(stderr, "bench: %s needs a value (see --help)\n", a); return 1; }
        if (!strcmp(a, "--config")) config_path = v;
        else if (!strcmp(a, "--set") && n_overrides < 120) overrides[n_overrides++] = v;
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else { fprintf(stderr, "bench: unknown option '%s' (see --help)\n", a); return 1; }
        i++;
    }
    if (ops)
        return run_ops(config_path ? config_path : OPS_DEFAULT_CONFIG, overrides, n_overrides, steps,
                       warmup == -1 ? 3 : warmup, json);
    if (!config_path || steps < 1 || warmup < -1) { usage(stderr); return 1; }
    overrides[n_overrides++] = "train.run_dir=";
    Config cfg;
    BraidError err;
    if (config_load(&cfg, config_path, overrides, n_overrides, &err) || config_resolve_device(&cfg, &err)) {
        fprintf(stderr, "bench: %s\n", err.message);
        return 1;
    }
    if (warmup == -1) warmup = !strcmp(cfg.train.device, "cuda") ? CUDA_STEP_WARMUP : CPU_STEP_WARMUP;
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
    if (json) {
        printf("{\"config\": ");
        json_write_string(stdout, config_path);
        printf(", \"pattern\": \"%s\", \"params\": %zu, \"batch\": %d, \"seq_len\": %d, "
               "\"step_ms\": %.3f, \"tokens_per_s\": %.1f, \"warmup\": %d}\n", cfg.model.pattern,
               t.model.params.total, cfg.train.batch_size, cfg.task.seq_len, 1e3 * median, tokens / median,
               warmup);
    }
    free(times);
    trainer_free(&t);
    return 0;
}
