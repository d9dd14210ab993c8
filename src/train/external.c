/* external.c — the "external" task: examples read from an HDF5 file made by any tool.
 *
 *   task.name: external
 *   task.data_path: data.h5     int datasets  inputs  (n_examples, L)
 *                                             targets (n_examples, L)   −100 = not scored
 *
 * The whole file is read and checked once, at open (ids in [0, task.vocab_size), targets
 * −100 or a valid id, both datasets the same shape), so a bad file fails before training
 * starts. An example of length T ≤ L is the first T positions of a row.
 *
 * Surprising, and why: make_batch takes examples IN ORDER from a cursor that wraps
 * around, and that cursor lives in the Rng the caller hands in. The task contract
 * (task.h) makes the data stream a function of that Rng alone, and the checkpoint
 * stores the training Rng (TrainState.data_rng) — so keeping the cursor there makes
 * resume exact with no extra state, and evaluation, which passes a freshly seeded Rng,
 * always starts at example 0 and sees the same examples every time. On first use the
 * task takes the Rng over: s = {cursor = 0, 0, 0, EXTERNAL_CURSOR_TAG}; later calls
 * advance s[0]. (A seeded xoshiro state equals that pattern with probability ~2^-192.) */
#include <errno.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "task.h"

#define EXTERNAL_CURSOR_TAG 0x45585445524e414cull   /* "EXTERNAL" in ASCII */

typedef struct ExternalData {
    int n_examples, length;
    int *inputs, *targets;   /* n_examples × length each */
} ExternalData;

/* Reads one rank-2 integer dataset; *dims gets its shape. */
static int read_int_dataset(hid_t file, const char *path, const char *name, hsize_t dims[2], int **out,
                            BraidError *err) {
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0)
        return error_set(err, "task.data_path '%s': dataset '%s' is missing (expected int datasets 'inputs' and "
                         "'targets' of shape (n_examples, seq_len))", path, name);
    hid_t dset = H5Dopen2(file, name, H5P_DEFAULT);
    if (dset < 0) return error_set(err, "task.data_path '%s': '%s' is not a readable dataset", path, name);
    hid_t type = H5Dget_type(dset), space = H5Dget_space(dset);
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    int ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (ndim == 2) H5Sget_simple_extent_dims(space, dims, NULL);
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    int rc = -1;
    if (cls != H5T_INTEGER) {
        error_set(err, "task.data_path '%s': dataset '%s' must hold integers", path, name);
    } else if (ndim != 2) {
        error_set(err, "task.data_path '%s': dataset '%s' has rank %d, expected 2 (n_examples, seq_len)", path,
                  name, ndim);
    } else if (dims[0] == 0 || dims[1] == 0 || dims[0] * dims[1] > (hsize_t)1 << 31) {
        error_set(err, "task.data_path '%s': dataset '%s' has shape (%llu, %llu): empty or too large", path, name,
                  (unsigned long long)dims[0], (unsigned long long)dims[1]);
    } else {
        *out = braid_malloc((size_t)(dims[0] * dims[1]) * sizeof(int), "external dataset");
        if (H5Dread(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0) {
            free(*out);
            *out = NULL;
            error_set(err, "task.data_path '%s': reading dataset '%s' failed (truncated or corrupt file, or "
                      "values out of int range)", path, name);
        } else {
            rc = 0;
        }
    }
    H5Dclose(dset);
    return rc;
}

static void external_close(Task *task) {
    ExternalData *data = task->priv;
    if (!data) return;
    free(data->inputs);
    free(data->targets);
    free(data);
    task->priv = NULL;
}

static int external_open(Task *task, BraidError *err) {
    const char *path = task->cfg.data_path;
    int V = task->cfg.vocab_size;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!path[0]) return error_set(err, "task.data_path: the external task needs an HDF5 file (inputs/targets)");
    struct stat sb;
    if (stat(path, &sb) != 0) return error_set(err, "task.data_path '%s': %s", path, strerror(errno));
    if (H5Fis_hdf5(path) <= 0) return error_set(err, "task.data_path '%s': not an HDF5 file", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return error_set(err, "task.data_path '%s': HDF5 cannot open it (truncated or corrupt?)", path);
    ExternalData *data = braid_calloc(1, sizeof *data, "external task");
    task->priv = data;
    hsize_t in_dims[2] = {0, 0}, tg_dims[2] = {0, 0};
    int rc = -1;
    if (read_int_dataset(file, path, "inputs", in_dims, &data->inputs, err)) goto done;
    if (read_int_dataset(file, path, "targets", tg_dims, &data->targets, err)) goto done;
    if (in_dims[0] != tg_dims[0] || in_dims[1] != tg_dims[1]) {
        error_set(err, "task.data_path '%s': 'inputs' has shape (%llu, %llu) but 'targets' has (%llu, %llu); "
                  "they must match", path, (unsigned long long)in_dims[0], (unsigned long long)in_dims[1],
                  (unsigned long long)tg_dims[0], (unsigned long long)tg_dims[1]);
        goto done;
    }
    data->n_examples = (int)in_dims[0];
    data->length = (int)in_dims[1];
    size_t n = (size_t)data->n_examples * data->length;
    for (size_t i = 0; i < n; i++) {
        int x = data->inputs[i], y = data->targets[i];
        const char *which = NULL;
        int value = 0;
        if (x < 0 || x >= V) { which = "inputs"; value = x; }
        else if (y != -100 && (y < 0 || y >= V)) { which = "targets"; value = y; }
        if (which) {
            error_set(err, "task.data_path '%s': dataset '%s' holds %d at [%zu, %zu]; token ids must be in "
                      "[0, task.vocab_size = %d)%s", path, which, value, i / data->length, i % data->length, V,
                      which[0] == 't' ? " or -100 (ignored)" : "");
            goto done;
        }
    }
    if (task->cfg.seq_len > data->length) {
        error_set(err, "task.seq_len = %d but '%s' holds examples of length %d; set task.seq_len ≤ %d",
                  task->cfg.seq_len, path, data->length, data->length);
        goto done;
    }
    rc = 0;
done:
    H5Fclose(file);
    if (rc) external_close(task);
    return rc;
}

/* Copies B consecutive examples (their first T positions) from the cursor in rng. */
static int external_make_batch(Task *task, Rng *rng, int B, int T, int *inputs, int *targets, BraidError *err) {
    const ExternalData *data = task->priv;
    if (T > data->length)
        return error_set(err, "task external: seq_len %d is longer than the examples in '%s' (%d)", T,
                         task->cfg.data_path, data->length);
    if (rng->s[3] != EXTERNAL_CURSOR_TAG || rng->s[1] != 0 || rng->s[2] != 0)
        *rng = (Rng){{0, 0, 0, EXTERNAL_CURSOR_TAG}};
    uint64_t cursor = rng->s[0];
    for (int b = 0; b < B; b++, cursor++) {
        size_t row = (size_t)(cursor % (uint64_t)data->n_examples) * data->length;
        memcpy(inputs + (size_t)b * T, data->inputs + row, (size_t)T * sizeof(int));
        memcpy(targets + (size_t)b * T, data->targets + row, (size_t)T * sizeof(int));
    }
    rng->s[0] = cursor;
    return 0;
}

const TaskKind external_task = {
    .name = "external",
    .description = "examples from an HDF5 file (int datasets inputs/targets, -100 ignored)",
    .open = external_open,
    .make_batch = external_make_batch,
    .close = external_close,
};
