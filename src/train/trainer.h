/* trainer.h — the training loop: batches from a task, forward/backward with gradient
 * accumulation, NaN/inf guard, global-norm clipping, AdamW with warm-up + cosine,
 * progress output, JSONL metrics and periodic evaluation. */
#ifndef BRAID_TRAINER_H
#define BRAID_TRAINER_H
#include <stdio.h>
#include "../models/model.h"
#include "task.h"

typedef struct TrainState {
    long step;              /* optimizer steps completed */
    long tokens_seen;
    Rng data_rng;           /* the training data stream's position */
    long skipped_steps;     /* steps skipped by nan_policy: skip */
} TrainState;

typedef struct EvalResult {
    int seq_len;
    double loss;            /* mean CE over scored targets */
    double accuracy;        /* fraction of scored targets predicted (argmax) */
    long scored;
} EvalResult;

typedef struct Trainer {
    Config cfg;
    Model model;
    Task task;
    TrainState state;
    int *inputs, *targets;  /* the most tokens of any batch shape the model runs */
    FILE *metrics;          /* run_dir/metrics.jsonl (NULL if no run dir) */
    int quiet;              /* no progress output */
    int progress_tty;       /* progress as one rewritten line */
    double last_eval_accuracy;
    long consecutive_skips;
} Trainer;

/* Sequences per evaluation batch at length T: batch_size at or below the training
 * length; longer, as many as hold the training batch's tokens (batch_size · seq_len / T,
 * at least 1), so that evaluating at 4× the length needs no more activation memory than
 * a training step. The examples, drawn one after another, are the same either way. */
int trainer_eval_batch(const Config *cfg, int T);

typedef struct StepStats {
    double loss;            /* mean over micro-batches of CE + aux */
    double ce_loss;         /* mean CE */
    double grad_norm;       /* before clipping */
    float lr;
    long valid, correct;    /* scored targets and argmax hits, summed over micro-batches */
    int skipped;            /* 1 if nan_policy: skip skipped this update */
} StepStats;

/* Builds the model and task for cfg, creates run_dir (if cfg->train.run_dir is non-empty)
 * and writes run_dir/config.yaml (the resolved config). */
int trainer_init(Trainer *t, const Config *cfg, BraidError *err);
/* One optimizer step over grad_accum micro-batches. */
int trainer_step(Trainer *t, StepStats *stats, BraidError *err);
/* Trains from t->state.step to cfg.train.steps, with progress, metrics and evaluation. */
int trainer_run(Trainer *t, BraidError *err);
/* Scores cfg.train.eval_examples held-out examples of length T (seed train.eval_seed). */
int trainer_evaluate(Trainer *t, int T, EvalResult *out, BraidError *err);
void trainer_free(Trainer *t);

/* Sets OpenMP and OpenBLAS thread counts (0 = all cores). */
void set_thread_count(int threads);

#endif
