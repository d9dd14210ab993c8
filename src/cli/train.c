/* train — trains a model from a YAML config on a synthetic or file-backed task.
 *
 *   train --config configs/attention-tiny.yaml [--set key=value ...]
 *   train --resume RUN_DIR_OR_CHECKPOINT [--set train.steps=N ...]
 *
 * --resume rebuilds the model from the config stored in the checkpoint (overrides on
 * top; one that changes a tensor's shape is rejected by the checkpoint's shape check)
 * and restores parameters, AdamW moments, step, tokens and the data stream, so the
 * run continues exactly where it stopped (see docs/checkpoints.md).
 *
 * Prints the resolved config and the architecture, shows progress, appends metrics to
 * <run_dir>/metrics.jsonl and evaluates on held-out examples. Exit status: 0 done,
 * 1 bad input (config, flags, data) or training stopped by a NaN/inf. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/config.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

#define MAX_OVERRIDES 128

static void usage(FILE *f) {
    fprintf(f,
            "usage: train --config FILE [options]\n"
            "       train --resume RUN_DIR_OR_CHECKPOINT [options]\n"
            "\n"
            "Trains a hybrid sequence model described by a YAML config (see configs/).\n"
            "\n"
            "options:\n"
            "  --config FILE        YAML config (required unless only --set is used)\n"
            "  --resume PATH        continue a run: PATH is a run directory (its newest\n"
            "                       checkpoint, and the run directory becomes PATH) or a\n"
            "                       checkpoint file; the config comes from the checkpoint\n"
            "  --set KEY=VALUE      override one config key, dotted path, e.g.\n"
            "                       --set model.d_model=128 --set train.lr=3e-4 (repeatable)\n"
            "  --device cpu|cuda    same as --set train.device=...\n"
            "  --run-dir DIR        same as --set train.run_dir=DIR (metrics, config, checkpoints)\n"
            "  --steps N            same as --set train.steps=N\n"
            "  --print-config       print the resolved config and exit\n"
            "  --quiet              no progress output (errors still go to stderr)\n"
            "  -h, --help           this help\n"
            "\n"
            "The resolved config is printed at start and saved as <run_dir>/config.yaml.\n");
}

int main(int argc, char **argv) {
    const char *config_path = NULL, *resume = NULL;
    const char *overrides[MAX_OVERRIDES];
    char owned[8][CONFIG_STR + 32];
    int n_overrides = 0, n_owned = 0, print_only = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *value = (i + 1 < argc) ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--print-config")) { print_only = 1; continue; }
        if (!strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!value) { fprintf(stderr, "train: %s needs a value (see --help)\n", a); return 1; }
        if (n_overrides >= MAX_OVERRIDES || n_owned >= 8) { fprintf(stderr, "train: too many --set options\n"); return 1; }
        if (!strcmp(a, "--config")) config_path = value;
        else if (!strcmp(a, "--resume")) resume = value;
        else if (!strcmp(a, "--set")) overrides[n_overrides++] = value;
        else if (!strcmp(a, "--device") || !strcmp(a, "--run-dir") || !strcmp(a, "--steps")) {
            const char *key = !strcmp(a, "--device") ? "train.device" : !strcmp(a, "--run-dir") ? "train.run_dir" : "train.steps";
            snprintf(owned[n_owned], sizeof owned[n_owned], "%s=%s", key, value);
            overrides[n_overrides++] = owned[n_owned++];
        } else {
            fprintf(stderr, "train: unknown option '%s' (see --help)\n", a);
            return 1;
        }
        i++;
    }
    if (!config_path && !resume && n_overrides == 0) {
        usage(stderr);
        return 1;
    }
    Config cfg;
    BraidError err = {{0}};
    char resume_path[4096], resume_run_dir[4200];
    if (resume) {
        if (config_path) {
            fprintf(stderr, "train: --resume takes the config from the checkpoint; drop --config (use --set to override keys)\n");
            return 1;
        }
        int is_run_dir = 0;
        if (checkpoint_resolve(resume, resume_path, sizeof resume_path, &is_run_dir, &err)) {
            fprintf(stderr, "train: --resume: %s\n", err.message);
            return 1;
        }
        /* A run directory stays the run directory (it may have moved since); placed
         * first so --run-dir / --set train.run_dir still win. */
        const char *with_dir[MAX_OVERRIDES + 1];
        int n = 0;
        if (is_run_dir) {
            snprintf(resume_run_dir, sizeof resume_run_dir, "train.run_dir=%s", resume);
            with_dir[n++] = resume_run_dir;
        }
        for (int i = 0; i < n_overrides; i++) with_dir[n++] = overrides[i];
        if (checkpoint_load_config(resume_path, &cfg, with_dir, n, &err)) {
            fprintf(stderr, "train: --resume: %s\n", err.message);
            return 1;
        }
    } else if (config_load(&cfg, config_path, overrides, n_overrides, &err)) {
        fprintf(stderr, "train: %s\n", err.message);
        return 1;
    }
    if (config_resolve_device(&cfg, &err)) {
        fprintf(stderr, "train: %s\n", err.message);
        return 1;
    }
    if (print_only) { config_write_yaml(&cfg, stdout); return 0; }
    if (!quiet) {
        printf("# resolved config (%s)\n", resume ? resume_path : config_path ? config_path : "defaults");
        config_write_yaml(&cfg, stdout);
        fflush(stdout);
        config_print_warnings(&cfg, stderr);
    }
    Trainer trainer;
    if (trainer_init(&trainer, &cfg, &err)) {
        fprintf(stderr, "train: %s\n", err.message);
        return 1;
    }
    trainer.quiet = quiet;
    if (resume) {
        if (checkpoint_load(resume_path, &trainer.model, &trainer.state, &err)) {
            fprintf(stderr, "train: --resume: %s\n", err.message);
            trainer_free(&trainer);
            return 1;
        }
        if (!quiet) printf("resumed from %s at step %ld (%ld tokens seen)\n", resume_path, trainer.state.step,
                           trainer.state.tokens_seen);
        if (trainer.state.step >= cfg.train.steps)
            fprintf(stderr, "train: the checkpoint is at step %ld and train.steps is %d: nothing to train "
                    "(raise it with --steps N)\n", trainer.state.step, cfg.train.steps);
    }
    if (!quiet) {
        model_print_summary(&trainer.model, stdout);
        printf("task %s: seq_len %d, %d kv pairs, vocab %d; %d steps of %d x %d tokens%s\n", cfg.task.name,
               cfg.task.seq_len, cfg.task.num_kv_pairs, cfg.task.vocab_size, cfg.train.steps, cfg.train.batch_size,
               cfg.task.seq_len, cfg.train.grad_accum > 1 ? " (accumulated)" : "");
        if (cfg.train.run_dir[0]) printf("run directory: %s\n", cfg.train.run_dir);
        fflush(stdout);
    }
    int rc = 0;
    if (trainer_run(&trainer, &err)) {
        fprintf(stderr, "train: %s\n", err.message);
        rc = 1;
    } else if (!quiet) {
        printf("done: %ld steps, %ld tokens, final eval accuracy %.2f%%\n", trainer.state.step,
               trainer.state.tokens_seen, 100.0 * trainer.last_eval_accuracy);
    }
    trainer_free(&trainer);
    return rc;
}
