/* checkpoint.c — HDF5 checkpoints (layout in checkpoint.h and docs/checkpoints.md).
 *
 * Every HDF5 call is checked. HDF5's own error-stack printing is switched off
 * (H5Eset_auto2) so a user sees one message of ours naming the file, and the tensor
 * where one is known, instead of a page of library internals.
 *
 * Why a save cannot leave a broken file under the real name: the file is written as
 * "<path>.tmp", closed, fsync'd, and only then rename()d over <path> (atomic on POSIX
 * within one directory); any failure before that removes the .tmp and leaves <path>
 * as it was. The file is opened with H5F_CLOSE_STRONG so closing it on an error path
 * also closes whatever groups/datasets were still open.
 *
 * Loading validates everything (format, version, each tensor's presence, type and
 * shape, no unknown tensors) before it writes a single float into the model. */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

static void hdf5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static hid_t file_access_strong(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0) H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    return fapl;
}

/* "(64, 32)" */
static void format_shape(char *buf, size_t n, int ndim, const hsize_t *dims) {
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    if (used < n) snprintf(buf + used, n - used, "%s)", ndim == 1 ? "," : "");
}

static void decl_dims(const ParamDecl *pd, hsize_t *dims) {
    for (int i = 0; i < pd->ndim; i++) dims[i] = (hsize_t)pd->shape[i];
}

static int write_string_attr(hid_t loc, const char *name, const char *value) {
    hid_t type = H5Tcopy(H5T_C_S1);
    if (type < 0) return -1;
    int rc = -1;
    hid_t space = -1, attr = -1;
    if (H5Tset_size(type, H5T_VARIABLE) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0) goto done;
    if ((space = H5Screate(H5S_SCALAR)) < 0) goto done;
    if ((attr = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT)) < 0) goto done;
    if (H5Awrite(attr, type, &value) < 0) goto done;
    rc = 0;
done:
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    H5Tclose(type);
    return rc;
}

static int write_int64_attr(hid_t loc, const char *name, hid_t file_type, int64_t value) {
    hid_t space = H5Screate(H5S_SCALAR);
    if (space < 0) return -1;
    int rc = -1;
    hid_t attr = H5Acreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr >= 0 && H5Awrite(attr, H5T_NATIVE_INT64, &value) >= 0) rc = 0;
    if (attr >= 0) H5Aclose(attr);
    H5Sclose(space);
    return rc;
}

/* A dataset of rank ndim (0: scalar) written from mem_type data. */
static int write_dataset(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, int ndim,
                         const hsize_t *dims, const void *data) {
    hid_t space = ndim == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(ndim, dims, NULL);
    if (space < 0) return -1;
    int rc = -1;
    hid_t dset = H5Dcreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (dset >= 0 && H5Dwrite(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0) rc = 0;
    if (dset >= 0) H5Dclose(dset);
    H5Sclose(space);
    return rc;
}

/* Reads a string attribute (variable- or fixed-length, as h5py may write either) into a
 * malloc'd string. Returns NULL if absent or unreadable. */
static char *read_string_attr(hid_t loc, const char *name) {
    if (H5Aexists(loc, name) <= 0) return NULL;
    hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
    if (attr < 0) return NULL;
    char *out = NULL;
    hid_t ftype = H5Aget_type(attr), mtype = -1;
    if (ftype < 0 || H5Tget_class(ftype) != H5T_STRING) goto done;
    htri_t is_var = H5Tis_variable_str(ftype);
    if (is_var < 0) goto done;
    mtype = H5Tcopy(H5T_C_S1);
    /* HDF5 does not convert between character sets: read in the file's (ASCII or UTF-8). */
    if (mtype < 0 || H5Tset_cset(mtype, H5Tget_cset(ftype)) < 0) goto done;
    if (is_var) {
        char *value = NULL;
        if (H5Tset_size(mtype, H5T_VARIABLE) < 0 || H5Aread(attr, mtype, &value) < 0 || !value) goto done;
        out = strdup(value);
        H5free_memory(value);
    } else {
        size_t size = H5Tget_size(ftype);
        if (size == 0 || H5Tset_size(mtype, size + 1) < 0) goto done;   /* room for the NUL */
        out = braid_calloc(size + 1, 1, "string attribute");
        if (H5Aread(attr, mtype, out) < 0) { free(out); out = NULL; }
    }
done:
    if (mtype >= 0) H5Tclose(mtype);
    if (ftype >= 0) H5Tclose(ftype);
    H5Aclose(attr);
    return out;
}

static int read_int64_attr(hid_t loc, const char *name, int64_t *value) {
    if (H5Aexists(loc, name) <= 0) return -1;
    hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
    if (attr < 0) return -1;
    int rc = H5Aread(attr, H5T_NATIVE_INT64, value) < 0 ? -1 : 0;
    H5Aclose(attr);
    return rc;
}

/* ---------------------------------------------------------------- save */

/* One group of tensors (params, m or v) laid out like the parameter buffer. */
static int write_tensor_group(hid_t file, const char *group_path, const Model *m, const float *buffer,
                              const char **failed_tensor) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl < 0) return -1;
    H5Pset_create_intermediate_group(lcpl, 1);   /* /optimizer/m creates /optimizer */
    hid_t group = H5Gcreate2(file, group_path, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (group < 0) return -1;
    for (int i = 0; i < m->params.count; i++) {
        const ParamDecl *pd = &m->params.items[i];
        hsize_t dims[PARAM_MAX_DIMS];
        decl_dims(pd, dims);
        if (write_dataset(group, pd->name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, pd->ndim, dims,
                          buffer + pd->offset) < 0) {
            *failed_tensor = pd->name;
            H5Gclose(group);
            return -1;
        }
    }
    return H5Gclose(group) < 0 ? -1 : 0;
}

static int write_train_state(hid_t file, const TrainState *st) {
    hid_t group = H5Gcreate2(file, "train_state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (group < 0) return -1;
    int64_t step = st->step, tokens = st->tokens_seen, skipped = st->skipped_steps;
    hsize_t four = 4;
    int rc = 0;
    /* The schedule is a pure function of the step (lr_schedule), stored for readers. */
    if (write_dataset(group, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, NULL, &step) < 0 ||
        write_dataset(group, "tokens_seen", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, NULL, &tokens) < 0 ||
        write_dataset(group, "skipped_steps", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, NULL, &skipped) < 0 ||
        write_dataset(group, "schedule_step", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, NULL, &step) < 0 ||
        write_dataset(group, "data_rng", H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, &four, st->data_rng.s) < 0)
        rc = -1;
    if (H5Gclose(group) < 0) rc = -1;
    return rc;
}

/* fsync a file (or directory) by name; the data must be on disk before the rename
 * makes it visible, or a power cut could leave an empty file under the real name. */
static int fsync_path(const char *path, int directory) {
    int fd = open(path, directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int checkpoint_save(const char *path, Model *m, const TrainState *st, BraidError *err) {
    hdf5_quiet();
    model_sync_to_host(m);   /* on CUDA the host mirrors are what gets written */
    TrainState zero = {0};
    if (!st) st = &zero;
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return error_set(err, "saving checkpoint '%s': path too long", path);
    const char *what = NULL, *tensor = NULL;
    char *config_text = NULL;
    hid_t fapl = file_access_strong(), file = -1;
    if (fapl < 0) { what = "creating a file-access property list"; goto fail; }
    file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (file < 0) { what = "creating the temporary file (is the directory writable?)"; goto fail; }
    config_text = config_to_yaml_string(&m->cfg);
    if (write_string_attr(file, "format", CHECKPOINT_FORMAT) < 0 ||
        write_int64_attr(file, "format_version", H5T_STD_I32LE, CHECKPOINT_FORMAT_VERSION) < 0 ||
        write_int64_attr(file, "step", H5T_STD_I64LE, st->step) < 0 ||
        write_int64_attr(file, "tokens_seen", H5T_STD_I64LE, st->tokens_seen) < 0 ||
        write_string_attr(file, "config", config_text ? config_text : "") < 0) {
        what = "writing the root attributes";
        goto fail;
    }
    if (write_tensor_group(file, "params", m, m->param_data, &tensor) < 0) { what = "writing /params"; goto fail; }
    if (write_tensor_group(file, "optimizer/m", m, m->adam_m, &tensor) < 0) { what = "writing /optimizer/m"; goto fail; }
    if (write_tensor_group(file, "optimizer/v", m, m->adam_v, &tensor) < 0) { what = "writing /optimizer/v"; goto fail; }
    if (write_train_state(file, st) < 0) { what = "writing /train_state"; goto fail; }
    herr_t closed = H5Fclose(file);
    file = -1;
    if (closed < 0) { what = "closing (flushing) the temporary file"; goto fail; }
    if (fsync_path(tmp, 0) != 0) { what = "fsync of the temporary file"; goto fail; }
    if (rename(tmp, path) != 0) {
        error_set(err, "saving checkpoint '%s': renaming '%s' into place failed: %s", path, tmp, strerror(errno));
        goto cleanup;
    }
    /* Make the rename itself durable (best effort: some filesystems refuse). */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) { *slash = 0; fsync_path(dir[0] ? dir : "/", 1); } else fsync_path(".", 1);
    H5Pclose(fapl);
    free(config_text);
    return 0;
fail:
    if (tensor) error_set(err, "saving checkpoint '%s': %s: tensor '%s' failed", path, what, tensor);
    else error_set(err, "saving checkpoint '%s': %s failed", path, what);
cleanup:
    if (file >= 0) H5Fclose(file);
    if (fapl >= 0) H5Pclose(fapl);
    unlink(tmp);
    free(config_text);
    return -1;
}

/* ---------------------------------------------------------------- load */

/* Opens path read-only and checks it is a braid checkpoint of a version we read. */
static hid_t open_checkpoint(const char *path, BraidError *err) {
    hdf5_quiet();
    struct stat sb;
    if (stat(path, &sb) != 0) {
        error_set(err, "checkpoint '%s': %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        error_set(err, "checkpoint '%s': not a regular file", path);
        return -1;
    }
    if (H5Fis_hdf5(path) <= 0) {
        error_set(err, "checkpoint '%s': not an HDF5 file (or its header is damaged)", path);
        return -1;
    }
    hid_t fapl = file_access_strong();
    hid_t file = fapl >= 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    if (fapl >= 0) H5Pclose(fapl);
    if (file < 0) {
        error_set(err, "checkpoint '%s': HDF5 cannot open it: the file is truncated or corrupt", path);
        return -1;
    }
    char *format = read_string_attr(file, "format");
    if (!format || strcmp(format, CHECKPOINT_FORMAT) != 0) {
        if (format) error_set(err, "checkpoint '%s': attribute 'format' is \"%s\", expected \"%s\": not a braid checkpoint",
                              path, format, CHECKPOINT_FORMAT);
        else error_set(err, "checkpoint '%s': no string attribute 'format' = \"%s\" on '/': not a braid checkpoint",
                       path, CHECKPOINT_FORMAT);
        free(format);
        H5Fclose(file);
        return -1;
    }
    free(format);
    int64_t version = 0;
    if (read_int64_attr(file, "format_version", &version) < 0) {
        error_set(err, "checkpoint '%s': attribute 'format_version' is missing or unreadable", path);
        H5Fclose(file);
        return -1;
    }
    if (version != CHECKPOINT_FORMAT_VERSION) {
        error_set(err, "checkpoint '%s': format_version %lld, this build reads version %d%s", path,
                  (long long)version, CHECKPOINT_FORMAT_VERSION,
                  version > CHECKPOINT_FORMAT_VERSION ? " (written by a newer braid)" : "");
        H5Fclose(file);
        return -1;
    }
    return file;
}

/* Checks that group holds exactly the model's tensors with the model's shapes. */
static int validate_tensor_group(hid_t file, const char *path, const char *group_path, const Model *m,
                                 BraidError *err) {
    /* H5Lexists needs every intermediate link to exist: check "optimizer" before "optimizer/m". */
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s", group_path);
    for (char *p = prefix;; p++) {
        char c = *p;
        if (c == '/' || c == 0) {
            *p = 0;
            if (H5Lexists(file, prefix, H5P_DEFAULT) <= 0)
                return error_set(err, "checkpoint '%s': group '/%s' is missing", path, prefix);
            *p = c;
        }
        if (c == 0) break;
    }
    hid_t group = H5Gopen2(file, group_path, H5P_DEFAULT);
    if (group < 0) return error_set(err, "checkpoint '%s': '/%s' is not a readable group", path, group_path);
    int rc = -1;
    for (int i = 0; i < m->params.count; i++) {
        const ParamDecl *pd = &m->params.items[i];
        hsize_t want[PARAM_MAX_DIMS], have[PARAM_MAX_DIMS + 4];
        char want_s[96], have_s[96];
        decl_dims(pd, want);
        format_shape(want_s, sizeof want_s, pd->ndim, want);
        if (H5Lexists(group, pd->name, H5P_DEFAULT) <= 0) {
            error_set(err, "checkpoint '%s': tensor '%s' is missing from /%s (the config expects shape %s)", path,
                      pd->name, group_path, want_s);
            goto done;
        }
        hid_t dset = H5Dopen2(group, pd->name, H5P_DEFAULT);
        if (dset < 0) {
            error_set(err, "checkpoint '%s': tensor '/%s/%s' is not a readable dataset", path, group_path, pd->name);
            goto done;
        }
        hid_t type = H5Dget_type(dset), space = H5Dget_space(dset);
        H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
        int ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
        int shape_ok = ndim == pd->ndim;
        if (ndim > 0 && ndim <= PARAM_MAX_DIMS + 4) H5Sget_simple_extent_dims(space, have, NULL);
        for (int d = 0; shape_ok && d < ndim; d++) shape_ok = have[d] == want[d];
        if (type >= 0) H5Tclose(type);
        if (space >= 0) H5Sclose(space);
        H5Dclose(dset);
        if (ndim < 0 || cls == H5T_NO_CLASS) {
            error_set(err, "checkpoint '%s': tensor '/%s/%s' is unreadable (corrupt file?)", path, group_path, pd->name);
            goto done;
        }
        if (cls != H5T_FLOAT) {
            error_set(err, "checkpoint '%s': tensor '/%s/%s' is not floating point", path, group_path, pd->name);
            goto done;
        }
        if (!shape_ok) {
            if (ndim <= PARAM_MAX_DIMS + 4) format_shape(have_s, sizeof have_s, ndim, have);
            else snprintf(have_s, sizeof have_s, "rank %d", ndim);
            error_set(err, "checkpoint '%s': tensor '%s' has shape %s, the config expects %s", path, pd->name,
                      have_s, want_s);
            goto done;
        }
    }
    H5G_info_t info;
    if (H5Gget_info(group, &info) < 0) {
        error_set(err, "checkpoint '%s': cannot list '/%s'", path, group_path);
        goto done;
    }
    if (info.nlinks != (hsize_t)m->params.count) {
        for (hsize_t i = 0; i < info.nlinks; i++) {
            char name[PARAM_NAME_MAX * 2];
            if (H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT) < 0)
                continue;
            if (param_list_find(&m->params, name) < 0) {
                error_set(err, "checkpoint '%s': tensor '/%s/%s' is not a parameter of the model this config "
                          "builds (%llu tensors in the file, %d expected)", path, group_path, name,
                          (unsigned long long)info.nlinks, m->params.count);
                goto done;
            }
        }
        error_set(err, "checkpoint '%s': '/%s' holds %llu entries, the model has %d tensors", path, group_path,
                  (unsigned long long)info.nlinks, m->params.count);
        goto done;
    }
    rc = 0;
done:
    H5Gclose(group);
    return rc;
}

static int read_tensor_group(hid_t file, const char *path, const char *group_path, const Model *m, float *buffer,
                             BraidError *err) {
    hid_t group = H5Gopen2(file, group_path, H5P_DEFAULT);
    if (group < 0) return error_set(err, "checkpoint '%s': cannot open '/%s'", path, group_path);
    for (int i = 0; i < m->params.count; i++) {
        const ParamDecl *pd = &m->params.items[i];
        hid_t dset = H5Dopen2(group, pd->name, H5P_DEFAULT);
        herr_t rc = dset >= 0 ? H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer + pd->offset) : -1;
        if (dset >= 0) H5Dclose(dset);
        if (rc < 0) {
            H5Gclose(group);
            return error_set(err, "checkpoint '%s': reading tensor '/%s/%s' failed: the file is truncated or corrupt",
                             path, group_path, pd->name);
        }
    }
    H5Gclose(group);
    return 0;
}

static int read_state_value(hid_t group, const char *name, hid_t mem_type, hsize_t count, void *out) {
    if (H5Lexists(group, name, H5P_DEFAULT) <= 0) return -1;
    hid_t dset = H5Dopen2(group, name, H5P_DEFAULT);
    if (dset < 0) return -1;
    hid_t space = H5Dget_space(dset);
    hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    if (space >= 0) H5Sclose(space);
    int rc = (n == (hssize_t)count && H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0) ? 0 : -1;
    H5Dclose(dset);
    return rc;
}

static int read_train_state(hid_t file, const char *path, TrainState *st, BraidError *err) {
    if (H5Lexists(file, "train_state", H5P_DEFAULT) <= 0)
        return error_set(err, "checkpoint '%s': group '/train_state' is missing", path);
    hid_t group = H5Gopen2(file, "train_state", H5P_DEFAULT);
    if (group < 0) return error_set(err, "checkpoint '%s': cannot open '/train_state'", path);
    int64_t step, tokens, skipped;
    uint64_t rng[4];
    const char *bad = NULL;
    if (read_state_value(group, "step", H5T_NATIVE_INT64, 1, &step) < 0) bad = "step";
    else if (read_state_value(group, "tokens_seen", H5T_NATIVE_INT64, 1, &tokens) < 0) bad = "tokens_seen";
    else if (read_state_value(group, "skipped_steps", H5T_NATIVE_INT64, 1, &skipped) < 0) bad = "skipped_steps";
    else if (read_state_value(group, "data_rng", H5T_NATIVE_UINT64, 4, rng) < 0) bad = "data_rng (4 uint64)";
    H5Gclose(group);
    if (bad) return error_set(err, "checkpoint '%s': '/train_state/%s' is missing or unreadable", path, bad);
    st->step = step;
    st->tokens_seen = tokens;
    st->skipped_steps = skipped;
    memcpy(st->data_rng.s, rng, sizeof rng);
    return 0;
}

int checkpoint_load(const char *path, Model *m, TrainState *st, BraidError *err) {
    hid_t file = open_checkpoint(path, err);
    if (file < 0) return -1;
    static const char *const groups[3] = {"params", "optimizer/m", "optimizer/v"};
    float *buffers[3] = {m->param_data, m->adam_m, m->adam_v};
    TrainState loaded = {0};
    int rc = -1;
    for (int g = 0; g < 3; g++)
        if (validate_tensor_group(file, path, groups[g], m, err)) goto done;
    /* The train state is read (into a local) before any tensor, so a bad one leaves the model untouched. */
    if (st && read_train_state(file, path, &loaded, err)) goto done;
    for (int g = 0; g < 3; g++)
        if (read_tensor_group(file, path, groups[g], m, buffers[g], err)) goto done;
    model_sync_to_device(m);
    if (st) *st = loaded;
    rc = 0;
done:
    H5Fclose(file);
    return rc;
}

int checkpoint_read_config(const char *path, char **yaml_text, BraidError *err) {
    *yaml_text = NULL;
    hid_t file = open_checkpoint(path, err);
    if (file < 0) return -1;
    char *text = read_string_attr(file, "config");
    H5Fclose(file);
    if (!text || !text[0]) {
        free(text);
        return error_set(err, "checkpoint '%s': the 'config' attribute (the resolved YAML) is missing or empty", path);
    }
    *yaml_text = text;
    return 0;
}

int checkpoint_load_config(const char *path, Config *cfg, const char *const *overrides, int n_overrides,
                           BraidError *err) {
    char *text = NULL;
    if (checkpoint_read_config(path, &text, err)) return -1;
    char name[4200];
    snprintf(name, sizeof name, "%s:/config", path);
    int rc = config_load_string(cfg, text, name, overrides, n_overrides, err);
    free(text);
    return rc;
}

/* ---------------------------------------------------------------- run directories */

/* step_<8 digits>.h5 exactly (not .tmp, not anything else). Returns the step or -1. */
static long checkpoint_step_of(const char *name) {
    if (strlen(name) != 16 || strncmp(name, "step_", 5) != 0 || strcmp(name + 13, ".h5") != 0) return -1;
    long step = 0;
    for (int i = 5; i < 13; i++) {
        if (name[i] < '0' || name[i] > '9') return -1;
        step = step * 10 + (name[i] - '0');
    }
    return step;
}

static int compare_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* The steps of the checkpoints in dir, sorted ascending; *n set. malloc'd. */
static long *list_checkpoint_steps(const char *dir, int *n, BraidError *err) {
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        error_set(err, "cannot list '%s': %s", dir, strerror(errno));
        return NULL;
    }
    int cap = 16;
    long *steps = braid_malloc((size_t)cap * sizeof(long), "checkpoint list");
    struct dirent *e;
    while ((e = readdir(d))) {
        long s = checkpoint_step_of(e->d_name);
        if (s < 0) continue;
        if (*n == cap) {
            cap *= 2;
            steps = realloc(steps, (size_t)cap * sizeof(long));
            BRAID_CHECK(steps, "out of memory listing checkpoints");
        }
        steps[(*n)++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)*n, sizeof(long), compare_long);
    return steps;
}

int checkpoint_resolve(const char *file_or_run_dir, char *out, size_t out_len, int *is_run_dir, BraidError *err) {
    struct stat sb;
    if (is_run_dir) *is_run_dir = 0;
    if (stat(file_or_run_dir, &sb) != 0)
        return error_set(err, "checkpoint '%s': %s", file_or_run_dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) {
        if ((size_t)snprintf(out, out_len, "%s", file_or_run_dir) >= out_len)
            return error_set(err, "checkpoint path '%s' is too long", file_or_run_dir);
        return 0;
    }
    if (is_run_dir) *is_run_dir = 1;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/checkpoints", file_or_run_dir);
    int n = 0;
    long *steps = list_checkpoint_steps(dir, &n, err);
    if (!steps) return error_prefix(err, "run directory '%s' has no checkpoints", file_or_run_dir);
    long newest = n > 0 ? steps[n - 1] : -1;
    free(steps);
    if (newest < 0)
        return error_set(err, "run directory '%s' has no checkpoints (no %s/step_*.h5)", file_or_run_dir, dir);
    if ((size_t)snprintf(out, out_len, "%s/step_%08ld.h5", dir, newest) >= out_len)
        return error_set(err, "checkpoint path in '%s' is too long", file_or_run_dir);
    return 0;
}

int checkpoint_prune(const char *run_dir, int keep, BraidError *err) {
    if (keep <= 0) return 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/checkpoints", run_dir);
    int n = 0;
    long *steps = list_checkpoint_steps(dir, &n, err);
    if (!steps) return -1;
    for (int i = 0; i < n - keep; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/step_%08ld.h5", dir, steps[i]);
        if (unlink(path) != 0 && errno != ENOENT) {
            free(steps);
            return error_set(err, "deleting old checkpoint '%s': %s", path, strerror(errno));
        }
    }
    free(steps);
    return 0;
}

/* <run_dir>/latest: one line naming the newest checkpoint relative to the run
 * directory, for scripts and people; itself replaced by rename so it is never torn.
 * Resume does not trust it: it scans checkpoints/ (see checkpoint_resolve). */
static int write_latest(const char *run_dir, const char *name, BraidError *err) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/latest", run_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return error_set(err, "cannot write '%s': %s", tmp, strerror(errno));
    int ok = fprintf(f, "checkpoints/%s\n", name) > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return error_set(err, "cannot write '%s': %s", path, strerror(e));
    }
    return 0;
}

int checkpoint_after_step(Trainer *t, int force, BraidError *err) {
    const TrainConfig *tc = &t->cfg.train;
    if (!tc->run_dir[0]) return 0;
    if (!force && !(tc->checkpoint_every > 0 && t->state.step % tc->checkpoint_every == 0)) return 0;
    char dir[4096], name[32], path[4200];
    snprintf(dir, sizeof dir, "%s/checkpoints", tc->run_dir);
    if (mkdir(dir, 0775) != 0 && errno != EEXIST)
        return error_set(err, "cannot create directory '%s': %s", dir, strerror(errno));
    snprintf(name, sizeof name, "step_%08ld.h5", t->state.step);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (checkpoint_save(path, &t->model, &t->state, err)) return -1;
    if (write_latest(tc->run_dir, name, err)) return -1;
    return checkpoint_prune(tc->run_dir, tc->keep_checkpoints, err);
}
