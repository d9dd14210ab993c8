/* task.h — training/evaluation tasks as descriptors in one table (task.c), like layer
 * kinds: adding a task is one module and one registry line.
 *
 * A task fills batches of inputs[B,T] and targets[B,T] (−100 = not scored) from an Rng,
 * so the data stream is a pure function of the seed and the Rng state — which is what a
 * checkpoint stores to resume exactly. Evaluation uses a fresh Rng seeded with
 * train.eval_seed, so every evaluation sees the same held-out examples. */
#ifndef BRAID_TASK_H
#define BRAID_TASK_H
#include "../core/common.h"
#include "../core/rng.h"
#include "../models/config.h"

typedef struct Task Task;

typedef struct TaskKind {
    const char *name;
    const char *description;
    /* Checks the task settings (and opens files for file-backed tasks). */
    int (*open)(Task *task, BraidError *err);
    /* Fills B examples of length T. Returns 0, or -1 with err (e.g. T too short). */
    int (*make_batch)(Task *task, Rng *rng, int B, int T, int *inputs, int *targets, BraidError *err);
    void (*close)(Task *task);
} TaskKind;

struct Task {
    const TaskKind *kind;
    TaskConfig cfg;
    void *priv;
};

const TaskKind *task_kind_by_name(const char *name);
int task_open(Task *task, const TaskConfig *cfg, BraidError *err);
void task_close(Task *task);

/* Zoology's MQAR generator for one example; exposed for tests. */
int mqar_example(const TaskConfig *cfg, Rng *rng, int T, int *inputs, int *targets, BraidError *err);

#endif
