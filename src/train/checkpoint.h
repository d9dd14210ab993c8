/* checkpoint.h — HDF5 checkpoints: the model's parameters, AdamW's two moments, the
 * training state and the resolved config text, in one file h5py reads directly.
 *
 *   /                  attrs: format = "braid", format_version = 1, step, tokens_seen,
 *                             config (the resolved YAML text)
 *   /params/<name>     float32, the ParamDecl's shape (names verbatim, dots included)
 *   /optimizer/m/<name>, /optimizer/v/<name>
 *   /train_state/      step, tokens_seen, skipped_steps, schedule_step (int64 scalars),
 *                      data_rng (uint64[4]: the training data stream's position)
 *
 * Saving writes "<path>.tmp", fsyncs it and renames it over <path>, so a crash never
 * leaves a partial file under the real name. Loading checks the format, the version,
 * every tensor's presence and shape against the model, and rejects unknown tensors;
 * it opens the file read-only. See docs/checkpoints.md. */
#ifndef BRAID_CHECKPOINT_H
#define BRAID_CHECKPOINT_H
#include "trainer.h"

#define CHECKPOINT_FORMAT "braid"
#define CHECKPOINT_FORMAT_VERSION 1

/* Writes m's parameters and moments, and st (may be NULL: zeros) to path, atomically.
 * On CUDA it first copies them to the host mirrors (model_sync_to_host). */
int checkpoint_save(const char *path, Model *m, const TrainState *st, BraidError *err);
/* Reads path into m (parameters and moments) and st (may be NULL: not read), after
 * validating the whole file against m. On error m may be partly overwritten only if a
 * tensor turned out unreadable after validation (a corrupt file); st is untouched. */
int checkpoint_load(const char *path, Model *m, TrainState *st, BraidError *err);
/* The resolved config text stored in path, malloc'd (caller frees). */
int checkpoint_read_config(const char *path, char **yaml_text, BraidError *err);
/* Reads the stored config and loads it into cfg with overrides applied on top
 * (config_load_string), so a model can be rebuilt from the checkpoint alone. */
int checkpoint_load_config(const char *path, Config *cfg, const char *const *overrides, int n_overrides,
                           BraidError *err);

/* A path given on a command line: a checkpoint file is returned as is; a run directory
 * resolves to its newest checkpoint (highest step in <dir>/checkpoints/step_*.h5).
 * Sets *is_run_dir to 1 for a directory (may be NULL). */
int checkpoint_resolve(const char *file_or_run_dir, char *out, size_t out_len, int *is_run_dir,
                       BraidError *err);

/* The trainer's periodic save: when step % train.checkpoint_every == 0 (checkpoint_every
 * > 0) or force, writes <run_dir>/checkpoints/step_<8 digits>.h5, points <run_dir>/latest
 * at it and deletes all but the newest train.keep_checkpoints (≤ 0: keep all).
 * Does nothing without a run directory. */
int checkpoint_after_step(Trainer *t, int force, BraidError *err);
/* Deletes <run_dir>/checkpoints/step_*.h5 beyond the newest keep (exposed for tests). */
int checkpoint_prune(const char *run_dir, int keep, BraidError *err);

#endif
