/* task.c — the one table of tasks. */
#include <string.h>
#include "task.h"

extern const TaskKind mqar_task, passkey_task, selective_copy_task, induction_task, text_task, external_task;

static const TaskKind *const tasks[] = {
    &mqar_task,
    &passkey_task,         /* src/train/passkey.c: needle in a haystack at a depth */
    &selective_copy_task,  /* src/train/selective_copy.c */
    &induction_task,       /* src/train/induction.c */
    &text_task,            /* src/train/text.c: bytes of a text corpus */
    &external_task,    /* src/train/external.c: HDF5 inputs/targets */
};

const TaskKind *task_kind_by_name(const char *name) {
    for (size_t i = 0; i < sizeof tasks / sizeof tasks[0]; i++)
        if (strcmp(tasks[i]->name, name) == 0) return tasks[i];
    return NULL;
}

int task_open(Task *task, const TaskConfig *cfg, BraidError *err) {
    memset(task, 0, sizeof *task);
    task->cfg = *cfg;
    task->kind = task_kind_by_name(cfg->name);
    if (!task->kind) return error_set(err, "task.name: unknown task '%s'", cfg->name);
    return task->kind->open ? task->kind->open(task, err) : 0;
}

void task_close(Task *task) {
    if (task->kind && task->kind->close) task->kind->close(task);
    memset(task, 0, sizeof *task);
}
