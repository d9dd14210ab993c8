/* trainer.c — see trainer.h.
 *
 * One optimizer step:
 *   zero grads; for each of grad_accum micro-batches: forward, backward with the loss
 *   scaled by 1/grad_accum (so the step uses the mean over micro-batches);
 *   guard: a non-finite loss or gradient norm stops the run (nan_policy: stop) or skips
 *   the update (skip); clip to train.grad_clip; AdamW at the scheduled learning rate. */
#include "trainer.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adamw.h"
#include "checkpoint.h"
#include "../core/device.h"
#ifdef BRAID_HAVE_CUDA
#include "../cuda/ops_cuda.h"
#endif

void set_thread_count(int threads) {
    if (threads <= 0) threads = omp_get_num_procs();
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
}

/* mkdir -p */
static int make_dirs(const char *path, BraidError *err) {
    char buf[CONFIG_STR];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0775) != 0 && errno != EEXIST)
            return error_set(err, "cannot create directory '%s': %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0775) != 0 && errno != EEXIST)
        return error_set(err, "cannot create directory '%s': %s", buf, strerror(errno));
    return 0;
}

int trainer_init(Trainer *t, const Config *cfg, BraidError *err) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    set_thread_count(cfg->train.threads);
    if (task_open(&t->task, &cfg->task, err)) return -1;
    /* the training batch, then each evaluation length at its own batch */
    ModelShape shapes[MODEL_MAX_SHAPES] = {{cfg->train.batch_size, cfg->task.seq_len}};
    int n_shapes = 1;
    for (int i = 0; i < cfg->eval.n_seq_lens && n_shapes < MODEL_MAX_SHAPES; i++) {
        const int T = cfg->eval.seq_lens[i];
        if (T > cfg->task.seq_len) shapes[n_shapes++] = (ModelShape){trainer_eval_batch(cfg, T), T};
    }
    if (model_build_shapes(&t->model, cfg, shapes, n_shapes, err)) return -1;
    size_t n = t->model.max_tokens;
    t->inputs = braid_malloc(n * sizeof(int), "batch inputs");
    t->targets = braid_malloc(n * sizeof(int), "batch targets");
    rng_seed(&t->state.data_rng, (uint64_t)cfg->train.seed * 7919u + 17u);
    t->progress_tty = isatty(fileno(stderr));
    if (cfg->train.run_dir[0]) {
        if (make_dirs(cfg->train.run_dir, err)) return error_prefix(err, "train.run_dir");
        char path[CONFIG_STR + 32];
        snprintf(path, sizeof path, "%s/config.yaml", cfg->train.run_dir);
        FILE *f = fopen(path, "w");
        if (!f) return error_set(err, "cannot write '%s': %s", path, strerror(errno));
        config_write_yaml(cfg, f);
        fclose(f);
        snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->train.run_dir);
        t->metrics = fopen(path, "a");
        if (!t->metrics) return error_set(err, "cannot write '%s': %s", path, strerror(errno));
    }
    return 0;
}

void trainer_free(Trainer *t) {
    if (t->metrics) fclose(t->metrics);
    free(t->inputs);
    free(t->targets);
    model_free(&t->model);
    task_close(&t->task);
    memset(t, 0, sizeof *t);
}

int trainer_eval_batch(const Config *cfg, int T) {
    const int B = cfg->train.batch_size;
    if (T <= cfg->task.seq_len) return B;
    const long fit = (long)B * cfg->task.seq_len / T;
    return fit < 1 ? 1 : (int)fit;
}

int trainer_evaluate(Trainer *t, int T, EvalResult *out, BraidError *err) {
    Rng rng;
    rng_seed(&rng, (uint64_t)t->cfg.train.eval_seed);
    Task task = t->task;
    task.cfg.seq_len = T;
    int remaining = t->cfg.train.eval_examples;
    double loss_sum = 0.0;
    long scored = 0, correct = 0;
    t->model.ctx.training = 0;
    while (remaining > 0) {
        int B = imin(remaining, trainer_eval_batch(&t->cfg, T));
        if (task.kind->make_batch(&task, &rng, B, T, t->inputs, t->targets, err)) {
            t->model.ctx.training = 1;
            return error_prefix(err, "evaluation at seq_len %d", T);
        }
        model_forward(&t->model, t->inputs, t->targets, B, T);
        loss_sum += t->model.last_loss * t->model.last_valid;
        scored += t->model.last_valid;
        correct += t->model.last_correct;
        remaining -= B;
    }
    t->model.ctx.training = 1;
    out->seq_len = T;
    out->scored = scored;
    out->loss = scored ? loss_sum / scored : 0.0;
    out->accuracy = scored ? (double)correct / scored : 0.0;
    return 0;
}

static void format_duration(double s, char *buf, size_t n) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, n, "?"); return; }
    int sec = (int)(s + 0.5);
    if (sec >= 3600) snprintf(buf, n, "%dh%02dm", sec / 3600, (sec / 60) % 60);
    else if (sec >= 60) snprintf(buf, n, "%dm%02ds", sec / 60, sec % 60);
    else snprintf(buf, n, "%ds", sec);
}

static void write_layer_stats(Trainer *t) {
    if (!t->metrics) return;
    for (int i = 0; i < t->model.n_blocks; i++) {
        Layer *ls[2] = {&t->model.blocks[i].mixer, &t->model.blocks[i].ffn};
        for (int j = 0; j < 2; j++) {
            Layer *L = ls[j];
            if (!L->kind || !L->stats || L->stats_count <= 0) continue;
            fprintf(t->metrics, "{\"step\": %ld, \"layer\": %d, \"kind\": \"%s\", \"%s\": [", t->state.step,
                    i, L->kind->name, L->stats_name ? L->stats_name : "stats");
            for (int k = 0; k < L->stats_count; k++) fprintf(t->metrics, "%s%.4f", k ? ", " : "", L->stats[k]);
            fprintf(t->metrics, "]}\n");
        }
    }
}

/* Evaluates at task.seq_len and each eval.seq_lens; results[] (CONFIG_MAX_LIST + 1
 * entries, may be NULL) gets them and *n_results their count, for summary.json. */
static int run_evaluations(Trainer *t, EvalResult *results, int *n_results, BraidError *err) {
    const Config *c = &t->cfg;
    int lens[CONFIG_MAX_LIST + 1], n = 0;
    lens[n++] = c->task.seq_len;
    for (int i = 0; i < c->eval.n_seq_lens; i++)
        if (c->eval.seq_lens[i] != c->task.seq_len) lens[n++] = c->eval.seq_lens[i];
    for (int i = 0; i < n; i++) {
        EvalResult r;
        if (trainer_evaluate(t, lens[i], &r, err)) return -1;
        if (i == 0) t->last_eval_accuracy = r.accuracy;
        if (results) { results[i] = r; *n_results = i + 1; }
        if (!t->quiet) {
            if (t->progress_tty) fprintf(stderr, "\r\033[K");
            fprintf(stderr, "eval step %ld  seq_len %d  loss %.4f  accuracy %.2f%%  (%ld answers)\n",
                    t->state.step, r.seq_len, r.loss, 100.0 * r.accuracy, r.scored);
        }
        if (t->metrics) {
            fprintf(t->metrics, "{\"step\": %ld, \"eval_seq_len\": %d, \"eval_loss\": %.6f, "
                    "\"eval_accuracy\": %.6f, \"eval_scored\": %ld}\n",
                    t->state.step, r.seq_len, r.loss, r.accuracy, r.scored);
            fflush(t->metrics);
        }
    }
    return 0;
}

typedef struct RunSummary {
    double flops_per_token, step_seconds, wall_seconds;
    long tokens;                 /* trained in this invocation (a resumed run counts from the resume) */
    const EvalResult *evals;     /* the final evaluation, one per length */
    int n_evals;
} RunSummary;

/* Writes run_dir/summary.json — what a sweep aggregates per run, so accuracy can be set
 * against cost: parameters, the activations' memory (model_activation_bytes: arena and
 * scratch for the batch shapes the model was built for), model FLOPs per token
 * (model_flops_per_token at task.seq_len), mean training tokens/s (tokens / time inside
 * the steps, evaluation excluded), wall time, and the final evaluation per sequence
 * length. Written to a temporary name and renamed, so a sweep that sees summary.json sees
 * a finished run. */
static int write_summary(Trainer *t, const RunSummary *s, BraidError *err) {
    if (!t->cfg.train.run_dir[0]) return 0;
    char path[CONFIG_STR + 32], tmp[CONFIG_STR + 48];
    snprintf(path, sizeof path, "%s/summary.json", t->cfg.train.run_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return error_set(err, "cannot write '%s': %s", tmp, strerror(errno));
    fprintf(f, "{\"params\": %zu, \"activation_bytes\": %zu, \"flops_per_token\": %.6g, \"tokens_per_s\": %.1f, "
            "\"tokens\": %ld, \"steps\": %ld, \"train_seconds\": %.3f, \"wall_seconds\": %.3f, \"task\": \"%s\", "
            "\"pattern\": \"%s\", \"ffn\": \"%s\", \"eval\": [",
            model_param_count(&t->model), model_activation_bytes(&t->model), s->flops_per_token,
            s->tokens / fmax(s->step_seconds, 1e-9), s->tokens,
            t->state.step, s->step_seconds, s->wall_seconds, t->cfg.task.name, t->cfg.model.pattern,
            t->cfg.model.ffn);
    for (int i = 0; i < s->n_evals; i++)
        fprintf(f, "%s{\"seq_len\": %d, \"accuracy\": %.6f, \"loss\": %.6f, \"scored\": %ld}", i ? ", " : "",
                s->evals[i].seq_len, s->evals[i].accuracy, s->evals[i].loss, s->evals[i].scored);
    fprintf(f, "]}\n");
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return error_set(err, "writing '%s' failed: %s", path, strerror(errno));
    return 0;
}

/* One optimizer step (see the file comment). Returns 0 after an update or a skipped
 * step, -1 with err when training must stop. */
int trainer_step(Trainer *t, StepStats *st, BraidError *err) {
    const TrainConfig *tc = &t->cfg.train;
    Model *m = &t->model;
    int B = tc->batch_size, T = t->cfg.task.seq_len;
    long step = t->state.step;
    memset(st, 0, sizeof *st);
    st->lr = lr_schedule(step, tc->warmup_steps, tc->steps, tc->lr, tc->min_lr_ratio);
    model_zero_grad(m);
    for (int micro = 0; micro < tc->grad_accum; micro++) {
        if (t->task.kind->make_batch(&t->task, &t->state.data_rng, B, T, t->inputs, t->targets, err))
            return error_prefix(err, "step %ld: making a batch", step);
        double l = model_forward(m, t->inputs, t->targets, B, T);
        st->loss += l / tc->grad_accum;
        st->ce_loss += m->last_loss / tc->grad_accum;
        st->valid += m->last_valid;
        st->correct += m->last_correct;
        if (isfinite(l)) model_backward(m, t->inputs, t->targets, B, T, 1.0f / (float)tc->grad_accum);
    }
    t->state.tokens_seen += (long)B * T * tc->grad_accum;
    st->grad_norm = isfinite(st->loss) ? model_grad_norm(m) : NAN;
    if (!isfinite(st->loss) || !isfinite(st->grad_norm)) {
        const char *what = !isfinite(st->loss) ? "loss" : "gradient norm";
        double value = !isfinite(st->loss) ? st->loss : st->grad_norm;
        if (strcmp(tc->nan_policy, "skip") == 0 && t->consecutive_skips < 10) {
            t->consecutive_skips++;
            t->state.skipped_steps++;
            t->state.step++;
            st->skipped = 1;
            if (!t->quiet) fprintf(stderr, "%sstep %ld: %s is %g; skipping this update (train.nan_policy: skip)\n",
                                   t->progress_tty ? "\r\033[K" : "", step, what, value);
            return 0;
        }
        return error_set(err, "step %ld: %s is %g — training stopped (lower train.lr, check the data, "
                         "or set train.nan_policy: skip to skip such steps)%s", step, what, value,
                         t->consecutive_skips ? " after 10 consecutive skipped steps" : "");
    }
    t->consecutive_skips = 0;
    /* clipping is the update's grad_scale: the gradients are read once, by the update */
    AdamWSettings opt = {.lr = st->lr, .beta1 = tc->beta1, .beta2 = tc->beta2, .eps = tc->adam_eps,
                         .weight_decay = tc->weight_decay,
                         .grad_scale = clip_grad_scale(st->grad_norm, tc->grad_clip)};
    if (m->device == DEVICE_CUDA) {
#ifdef BRAID_HAVE_CUDA
        adamw_update_cuda(m->dev_params, m->dev_grads, m->dev_m, m->dev_v, &m->params, &opt, step + 1, 0);
#endif
    } else {
        adamw_update(m->param_data, m->grad_data, m->adam_m, m->adam_v, &m->params, &opt, step + 1);
    }
    t->state.step++;
    return 0;
}

int trainer_run(Trainer *t, BraidError *err) {
    const Config *c = &t->cfg;
    const TrainConfig *tc = &c->train;
    int B = tc->batch_size, T = c->task.seq_len;
    double t0 = time_seconds(), last_log_time = t0;
    long first_step = t->state.step, last_log_step = t->state.step;
    double flops_per_token = model_flops_per_token(&t->model, T);
    /* MFU against the GPU's peak for the matmul precision (float32 by default, else the
     * dense TF32 or bf16 tensor-core peak: matmul_precision_peak_factor), since that is what
     * the matmuls, most of the FLOPs, could reach. A CPU's peak is not knowable portably, so
     * there the line shows model TFLOP/s only. */
    double peak_flops = t->model.device == DEVICE_CUDA ? device_cuda_peak_fp32_flops() : 0.0;
    peak_flops *= matmul_precision_peak_factor(tc->matmul_precision);
    double step_seconds = 0.0;          /* time inside trainer_step, for the mean tokens/s */
    long first_tokens = t->state.tokens_seen;
    EvalResult last_evals[CONFIG_MAX_LIST + 1];
    int n_last_evals = 0;

    while (t->state.step < tc->steps) {
        StepStats st;
        double step_start = time_seconds();
        if (trainer_step(t, &st, err)) return -1;
        step_seconds += time_seconds() - step_start;
        long done = t->state.step;
        if (!st.skipped && ((done % tc->log_every == 0) || done == tc->steps)) {
            double now = time_seconds();
            double tps = (double)(done - last_log_step) * B * T * tc->grad_accum / fmax(now - last_log_time, 1e-9);
            double rate = (now - t0) / (double)(done - first_step);   /* seconds per step this run */
            char eta_s[32];
            format_duration(rate * (tc->steps - done), eta_s, sizeof eta_s);
            double acc = st.valid ? (double)st.correct / st.valid : 0.0;
            double tflops = tps * flops_per_token / 1e12;
            char mfu_s[48] = "";
            if (peak_flops > 0.0)   /* the basis named when it is not float32's */
                snprintf(mfu_s, sizeof mfu_s, "  MFU %.1f%%%s", 100.0 * tflops * 1e12 / peak_flops,
                         matmul_precision_peak_label(tc->matmul_precision));
            if (!t->quiet) {
                fprintf(stderr, "%sstep %ld/%d  loss %.4f  acc %.1f%%  lr %.2e  gnorm %.3f  %.1fk tok/s  %.2f TFLOP/s%s  ETA %s%s",
                        t->progress_tty ? "\r\033[K" : "", done, tc->steps, st.ce_loss, 100.0 * acc, st.lr,
                        st.grad_norm, tps / 1000.0, tflops, mfu_s, eta_s, t->progress_tty ? "" : "\n");
            }
            if (t->metrics) {
                fprintf(t->metrics, "{\"step\": %ld, \"loss\": %.6f, \"aux_loss\": %.6f, \"train_accuracy\": %.6f, "
                        "\"lr\": %.6g, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, \"model_tflops\": %.4f, "
                        "\"mfu\": %.5f, \"tokens_seen\": %ld, \"elapsed_s\": %.3f}\n",
                        done, st.ce_loss, st.loss - st.ce_loss, acc, st.lr, st.grad_norm, tps,
                        tflops, peak_flops > 0.0 ? tflops * 1e12 / peak_flops : 0.0, t->state.tokens_seen, now - t0);
                write_layer_stats(t);
                fflush(t->metrics);
            }
            last_log_time = now;
            last_log_step = done;
        }
        if ((tc->eval_every > 0 && done % tc->eval_every == 0) || done == tc->steps) {
            if (run_evaluations(t, last_evals, &n_last_evals, err)) return -1;
        }
        /* Checkpoints (checkpoint.c): every train.checkpoint_every steps and at the end. */
        if (checkpoint_after_step(t, done == tc->steps, err)) return error_prefix(err, "step %ld", done);
    }
    if (!t->quiet && t->progress_tty) fprintf(stderr, "\n");
    if (t->state.step == first_step) return 0;   /* nothing trained: keep an earlier summary */
    RunSummary summary = {flops_per_token, step_seconds, time_seconds() - t0,
                          t->state.tokens_seen - first_tokens, last_evals, n_last_evals};
    return write_summary(t, &summary, err);
}
