/* text.c — byte-level language modelling on a text corpus (task.data_path, one file).
 *
 *   task.name: text          task.vocab_size ≥ 256 (token = byte value)
 *   task.data_path: data/text/fortunes.txt      (data/prepare_text.sh makes one)
 *   task.split: train | heldout
 *
 * The corpus is split once, by position: the first 90% of its bytes are the training
 * split, the last 10% the held-out split (a contiguous tail rather than random windows,
 * so no held-out byte is ever inside a training window). An example of length T is the
 * window c[s … s+T] of the chosen split, s uniform:
 *   inputs[t] = c[s+t],  targets[t] = c[s+t+1]       every position scored
 * so the mean cross-entropy in nats is per byte, and bits per byte = loss / ln 2.
 *
 * Surprising, and why: the task cannot tell training from evaluation (both call
 * make_batch with an Rng), so it samples whichever split task.split names. The trainer's
 * own periodic evaluation therefore scores held-out-seed windows of the TRAINING split;
 * the held-out number is `eval --checkpoint RUN --set task.split=heldout`, which the
 * sweep scripts run and report as bits per byte. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "task.h"

#define TEXT_HELDOUT_DIVISOR 10   /* the last 1/10 of the bytes are held out */

typedef struct TextCorpus {
    unsigned char *bytes;
    size_t size;
    size_t lo, hi;   /* the chosen split: bytes[lo, hi) */
} TextCorpus;

static void text_close(Task *task) {
    TextCorpus *c = task->priv;
    if (!c) return;
    free(c->bytes);
    free(c);
    task->priv = NULL;
}

static int text_open(Task *task, BraidError *err) {
    const char *path = task->cfg.data_path;
    if (task->cfg.vocab_size < 256)
        return error_set(err, "task.vocab_size = %d: the text task models bytes and needs 256", task->cfg.vocab_size);
    if (!path[0]) return error_set(err, "task.data_path: the text task needs a text file (see data/prepare_text.sh)");
    FILE *f = fopen(path, "rb");
    if (!f) return error_set(err, "task.data_path '%s': %s", path, strerror(errno));
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return error_set(err, "task.data_path '%s': cannot determine its size (not a regular file?)", path);
    }
    TextCorpus *c = braid_calloc(1, sizeof *c, "text task");
    c->size = (size_t)size;
    c->bytes = braid_malloc(c->size ? c->size : 1, "text corpus");
    size_t got = fread(c->bytes, 1, c->size, f);
    fclose(f);
    task->priv = c;
    if (got != c->size) {
        text_close(task);
        return error_set(err, "task.data_path '%s': read %zu of %zu bytes", path, got, (size_t)size);
    }
    size_t cut = c->size - c->size / TEXT_HELDOUT_DIVISOR;
    int heldout = strcmp(task->cfg.split, "heldout") == 0;
    c->lo = heldout ? cut : 0;
    c->hi = heldout ? c->size : cut;
    /* The training length must fit now; longer evaluation lengths are checked per batch. */
    if (c->hi - c->lo < (size_t)task->cfg.seq_len + 1) {
        size_t split_size = c->hi - c->lo;
        text_close(task);
        return error_set(err, "task.data_path '%s': its %s split holds %zu bytes (of %zu), too few for one window "
                         "of task.seq_len + 1 = %d bytes", path, heldout ? "held-out" : "training", split_size,
                         (size_t)size, task->cfg.seq_len + 1);
    }
    return 0;
}

static int text_make_batch(Task *task, Rng *rng, int B, int T, int *inputs, int *targets, BraidError *err) {
    const TextCorpus *c = task->priv;
    size_t span = c->hi - c->lo;
    if (span < (size_t)T + 1)
        return error_set(err, "task text: the %s split of '%s' holds %zu bytes, too few for seq_len %d",
                         task->cfg.split, task->cfg.data_path, span, T);
    size_t starts = span - (size_t)T;   /* windows of T+1 bytes that fit */
    for (int b = 0; b < B; b++) {
        /* Two draws make a start beyond 2^32 possible for corpora over 4 GiB. */
        size_t s = starts <= UINT32_MAX ? rng_below(rng, (uint32_t)starts) : (size_t)(rng_u64(rng) % starts);
        const unsigned char *w = c->bytes + c->lo + s;
        int *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        for (int t = 0; t < T; t++) {
            in[t] = w[t];
            tg[t] = w[t + 1];
        }
    }
    return 0;
}

const TaskKind text_task = {
    .name = "text",
    .description = "byte-level language modelling on task.data_path (90% train / 10% held out)",
    .open = text_open,
    .make_batch = text_make_batch,
    .close = text_close,
};
