/* eval — scores a trained checkpoint on its task at one or more sequence lengths.
 *
 *   eval --checkpoint FILE_OR_RUN_DIR [--set task.num_kv_pairs=8 ...]
 *        [--seq-lens 64,128,256] [--examples N] [--json out.json]
 *
 * The model is rebuilt from the config stored in the checkpoint (overrides on top, e.g.
 * a harder task setting or another task.data_path; one that changes a tensor's shape is
 * rejected), its parameters are loaded, and each length is scored exactly as training's
 * evaluation does (trainer_evaluate: held-out examples from train.eval_seed). Prints a
 * table; --json also writes the numbers for sweep scripts. Nothing is written into the
 * run directory. Exit status: 0 done, 1 bad input (flags, checkpoint, config, data). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/config.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

#define MAX_OVERRIDES 128

static void usage(FILE *f) {
    fprintf(f,
            "usage: eval --checkpoint FILE_OR_RUN_DIR [options]\n"
            "\n"
            "Scores a checkpoint on its task (the config stored in the checkpoint) at each\n"
            "sequence length: mean cross-entropy and argmax accuracy over the scored targets.\n"
            "\n"
            "options:\n"
            "  --checkpoint PATH    a checkpoint .h5 file, or a run directory (its newest checkpoint)\n"
            "  --set KEY=VALUE      override a config key, e.g. --set task.num_kv_pairs=8 or\n"
            "                       --set task.data_path=test.h5 (repeatable)\n"
            "  --seq-lens L1,L2,..  lengths to score (default: task.seq_len and eval.seq_lens)\n"
            "  --examples N         held-out examples per length (default: train.eval_examples)\n"
            "  --json FILE          also write the results as JSON\n"
            "  -h, --help           this help\n");
}

/* Parses a positive int; returns -1 if s is not one. */
static int parse_positive(const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v <= 0 || v > 1 << 30) return -1;
    return (int)v;
}

int main(int argc, char **argv) {
    const char *checkpoint = NULL, *json_path = NULL;
    const char *overrides[MAX_OVERRIDES];
    int n_overrides = 0, examples = 0, lens[CONFIG_MAX_LIST], n_lens = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        const char *value = (i + 1 < argc) ? argv[i + 1] : NULL;
        int known = !strcmp(a, "--checkpoint") || !strcmp(a, "--set") || !strcmp(a, "--seq-lens") ||
                    !strcmp(a, "--examples") || !strcmp(a, "--json");
        if (!known) { fprintf(stderr, "eval: unknown option '%s' (see --help)\n", a); return 1; }
        if (!value) { fprintf(stderr, "eval: %s needs a value (see --help)\n", a); return 1; }
        i++;
        if (!strcmp(a, "--checkpoint")) checkpoint = value;
        else if (!strcmp(a, "--json")) json_path = value;
        else if (!strcmp(a, "--set")) {
            if (n_overrides == MAX_OVERRIDES) { fprintf(stderr, "eval: too many --set options\n"); return 1; }
            overrides[n_overrides++] = value;
        } else if (!strcmp(a, "--examples")) {
            if ((examples = parse_positive(value)) < 0) {
                fprintf(stderr, "eval: --examples '%s': expected a positive integer\n", value);
                return 1;
            }
        } else {   /* --seq-lens */
            char buf[512];
            snprintf(buf, sizeof buf, "%s", value);
            n_lens = 0;
            for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                int L = parse_positive(tok);
                if (L < 0) { fprintf(stderr, "eval: --seq-lens '%s': '%s' is not a positive integer\n", value, tok); return 1; }
                if (n_lens == CONFIG_MAX_LIST) { fprintf(stderr, "eval: --seq-lens: at most %d lengths\n", CONFIG_MAX_LIST); return 1; }
                lens[n_lens++] = L;
            }
            if (n_lens == 0) { fprintf(stderr, "eval: --seq-lens '%s': no lengths given\n", value); return 1; }
        }
    }
    if (!checkpoint) {
        fprintf(stderr, "eval: --checkpoint is required\n");
        usage(stderr);
        return 1;
    }

    BraidError err = {{0}};
    char path[4096];
    Config cfg;
    if (checkpoint_resolve(checkpoint, path, sizeof path, NULL, &err) ||
        checkpoint_load_config(path, &cfg, overrides, n_overrides, &err)) {
        fprintf(stderr, "eval: %s\n", err.message);
        return 1;
    }
    if (examples > 0) cfg.train.eval_examples = examples;
    if (n_lens > 0) {   /* the model's activation arena is sized for the longest */
        memcpy(cfg.eval.seq_lens, lens, sizeof lens);
        cfg.eval.n_seq_lens = n_lens;
    } else {
        lens[n_lens++] = cfg.task.seq_len;
        for (int i = 0; i < cfg.eval.n_seq_lens && n_lens < CONFIG_MAX_LIST; i++)
            if (cfg.eval.seq_lens[i] != cfg.task.seq_len) lens[n_lens++] = cfg.eval.seq_lens[i];
    }
    cfg.train.run_dir[0] = 0;   /* evaluation writes nothing into the run directory */
    /* A checkpoint records the device it was trained on; scoring it takes whatever this
     * machine has, unless --set train.device=... says otherwise. */
    int device_given = 0;
    for (int i = 0; i < n_overrides; i++) device_given |= !strncmp(overrides[i], "train.device=", 13);
    if (!device_given) snprintf(cfg.train.device, sizeof cfg.train.device, "auto");
    if (config_resolve_device(&cfg, &err)) {
        fprintf(stderr, "eval: %s\n", err.message);
        return 1;
    }

    Trainer t;
    if (trainer_init(&t, &cfg, &err)) {
        fprintf(stderr, "eval: %s\n", err.message);
        return 1;
    }
    if (checkpoint_load(path, &t.model, &t.state, &err)) {
        fprintf(stderr, "eval: %s\n", err.message);
        trainer_free(&t);
        return 1;
    }
    EvalResult results[CONFIG_MAX_LIST];
    printf("checkpoint %s: step %ld, task %s\n", path, t.state.step, cfg.task.name);
    printf("%8s %9s %10s %9s %8s\n", "seq_len", "examples", "loss", "accuracy", "scored");
    for (int i = 0; i < n_lens; i++) {
        if (trainer_evaluate(&t, lens[i], &results[i], &err)) {
            fprintf(stderr, "eval: %s\n", err.message);
            trainer_free(&t);
            return 1;
        }
        printf("%8d %9d %10.4f %8.2f%% %8ld\n", lens[i], cfg.train.eval_examples, results[i].loss,
               100.0 * results[i].accuracy, results[i].scored);
        fflush(stdout);
    }
    int rc = 0;
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f) {
            fprintf(stderr, "eval: cannot write '%s': %s\n", json_path, strerror(errno));
            rc = 1;
        } else {
            fprintf(f, "{\"checkpoint\": ");
            json_write_string(f, path);
            fprintf(f, ", \"step\": %ld, \"task\": ", t.state.step);
            json_write_string(f, cfg.task.name);
            fprintf(f, ", \"results\": [");
            for (int i = 0; i < n_lens; i++)
                fprintf(f, "%s\n  {\"seq_len\": %d, \"examples\": %d, \"loss\": %.6f, \"accuracy\": %.6f, \"scored\": %ld}",
                        i ? "," : "", lens[i], cfg.train.eval_examples, results[i].loss, results[i].accuracy,
                        results[i].scored);
            fprintf(f, "\n]}\n");
            if (fclose(f) != 0) {
                fprintf(stderr, "eval: writing '%s' failed: %s\n", json_path, strerror(errno));
                rc = 1;
            }
        }
    }
    trainer_free(&t);
    return rc;
}
