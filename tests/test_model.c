/* test_model.c — the assembled model: whole-model gradients against finite differences
 * (every block kind, tied and untied heads), determinism, and the arena contract. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "models/model.h"
#include "train/trainer.h"

typedef struct ModelCase {
    Model model;
    int B, T;
    int *tokens, *targets;
    double baseline;     /* the unperturbed loss: gradcheck sees loss − baseline, so the
                            float output keeps the precision of the small differences */
    float loss_out;
    float dout[1];       /* ∂L/∂loss, set by gradcheck; backward uses it as the loss scale */
} ModelCase;

static void case_forward(void *s) {
    ModelCase *c = s;
    c->loss_out = (float)(model_forward(&c->model, c->tokens, c->targets, c->B, c->T) - c->baseline);
}

static void case_backward(void *s) {
    ModelCase *c = s;
    model_backward(&c->model, c->tokens, c->targets, c->B, c->T, c->dout[0]);
}

static int load(Config *cfg, const char **overrides, int n) {
    BraidError err;
    if (config_load(cfg, NULL, overrides, n, &err)) {
        fprintf(stderr, "config: %s\n", err.message);
        return -1;
    }
    return 0;
}

static void check_model_gradients(const char *what, const char **overrides, int n) {
    Config cfg;
    ck_assert_int_eq(load(&cfg, overrides, n), 0);
    ModelCase c = {.B = 2, .T = 7};
    BraidError err;
    ck_assert_msg(model_build(&c.model, &cfg, c.B, c.T, &err) == 0, "%s", err.message);
    /* Perturb params so norms and zero-init tensors are checked at generic points. */
    Rng rng;
    rng_seed(&rng, 77);
    for (size_t i = 0; i < c.model.params.total; i++) c.model.param_data[i] += 0.05f * rng_normal(&rng);
    c.tokens = malloc(sizeof(int) * c.B * c.T);
    c.targets = malloc(sizeof(int) * c.B * c.T);
    for (int i = 0; i < c.B * c.T; i++) {
        c.tokens[i] = (int)rng_below(&rng, (uint32_t)c.model.vocab);
        c.targets[i] = (i % 3 == 1) ? -100 : (int)rng_below(&rng, (uint32_t)c.model.vocab);
    }
    int nt = c.model.params.count;
    GradcheckTensor *t = calloc((size_t)nt, sizeof *t);
    for (int i = 0; i < nt; i++) {
        const ParamDecl *pd = &c.model.params.items[i];
        t[i] = (GradcheckTensor){pd->name, c.model.param_data + pd->offset, c.model.grad_data + pd->offset, pd->numel};
    }
    c.baseline = model_forward(&c.model, c.tokens, c.targets, c.B, c.T);
    /* The loss already includes the layers' aux losses (model_forward returns CE + aux). */
    GradcheckOp op = {case_forward, case_backward, &c, &c.loss_out, c.dout, 1, NULL};
    int ok = gradcheck(what, &op, t, nt, 1e-2f, 3e-2f, 12);
    ck_assert_msg(ok, "%s: model gradients differ from finite differences (see stderr)", what);
    free(t);
    free(c.tokens);
    free(c.targets);
    model_free(&c.model);
}

START_TEST(attention_model_gradient_matches_finite_differences) {
    const char *o[] = {"task.vocab_size=16", "model.d_model=8", "model.n_layers=2", "model.pattern=AW",
                       "model.ffn=D-", "model.attention.n_heads=2", "model.attention.window=3",
                       "model.attention.position=rope", "model.dense.hidden=12"};
    check_model_gradients("attention model", o, 9);
}
END_TEST

START_TEST(untied_head_gradient_matches_finite_differences) {
    const char *o[] = {"task.vocab_size=16", "model.d_model=8", "model.n_layers=1", "model.pattern=A",
                       "model.ffn=D", "model.attention.n_heads=2", "model.tie_embeddings=false",
                       "model.dense.hidden=12"};
    check_model_gradients("untied head", o, 8);
}
END_TEST

START_TEST(hybrid_model_gradient_matches_finite_differences) {
    const char *o[] = {"task.vocab_size=16", "model.d_model=8", "model.n_layers=4", "model.pattern=MAGW",
                       "model.ffn=DE-E", "model.attention.n_heads=2", "model.attention.window=3",
                       "model.mamba.d_state=4", "model.mamba.chunk=4", "model.gla.n_heads=2",
                       "model.gla.gate_rank=4", "model.gla.chunk=4", "model.moe.experts=3",
                       /* all experts selected: finite differences must not flip a top-k
                        * choice (test_moe checks top-k < E with clear margins) */
                       "model.moe.top_k=3", "model.moe.hidden=8", "model.dense.hidden=12",
                       "model.moe.aux_loss_coef=0.1", "model.moe.z_loss_coef=0.01"};
    check_model_gradients("hybrid model", o, 18);
}
END_TEST

static void train_steps(const char **o, int n, float **params_out, size_t *count, double *loss_out) {
    Config cfg;
    ck_assert_int_eq(load(&cfg, o, n), 0);
    Trainer t;
    BraidError err;
    ck_assert_msg(trainer_init(&t, &cfg, &err) == 0, "%s", err.message);
    t.quiet = 1;
    ck_assert_msg(trainer_run(&t, &err) == 0, "%s", err.message);
    *count = t.model.params.total;
    *params_out = malloc(*count * sizeof(float));
    memcpy(*params_out, t.model.param_data, *count * sizeof(float));
    *loss_out = t.model.last_loss;
    trainer_free(&t);
}

START_TEST(same_seed_gives_identical_training) {
    const char *o[] = {"model.d_model=16", "model.n_layers=2", "model.pattern=AA", "model.ffn=DD",
                       "model.attention.position=rope", "train.steps=6", "train.batch_size=4",
                       "train.eval_every=0", "train.eval_examples=8", "train.run_dir=", "train.threads=2",
                       "train.grad_accum=2", "train.warmup_steps=2"};
    float *a, *b;
    size_t na, nb;
    double la, lb;
    train_steps(o, 13, &a, &na, &la);
    train_steps(o, 13, &b, &nb, &lb);
    ck_assert(na == nb);
    ck_assert_msg(memcmp(a, b, na * sizeof(float)) == 0, "parameters differ between identical runs");
    ck_assert_msg(la == lb, "losses differ: %.9g vs %.9g", la, lb);
    free(a);
    free(b);
}
END_TEST

static void nan_run(const char *policy, int *rc, BraidError *err, long *skipped, float *param0) {
    char policy_set[64];
    snprintf(policy_set, sizeof policy_set, "train.nan_policy=%s", policy);
    const char *o[] = {"model.d_model=16", "model.n_layers=1", "model.pattern=A", "model.ffn=D",
                       "train.steps=20", "train.batch_size=2", "train.eval_every=0", "train.run_dir=",
                       "train.warmup_steps=0", policy_set};
    Config cfg;
    ck_assert_int_eq(load(&cfg, o, 10), 0);
    Trainer t;
    ck_assert_int_eq(trainer_init(&t, &cfg, err), 0);
    t.quiet = 1;
    t.model.param_data[t.model.params.total - 1] = NAN;   /* a poisoned weight: loss becomes NaN */
    *rc = trainer_run(&t, err);
    *skipped = t.state.skipped_steps;
    *param0 = t.model.param_data[0];
    trainer_free(&t);
}

START_TEST(nan_loss_stops_with_a_clear_message) {
    int rc;
    BraidError err;
    long skipped;
    float p0;
    nan_run("stop", &rc, &err, &skipped, &p0);
    ck_assert_msg(rc == -1, "training with a NaN weight did not stop");
    ck_assert_msg(strstr(err.message, "step 0") && strstr(err.message, "nan"), "message: %s", err.message);
}
END_TEST

START_TEST(nan_policy_skip_skips_updates_then_gives_up) {
    int rc;
    BraidError err;
    long skipped;
    float p0, p0_init;
    Config cfg;
    const char *o[] = {"model.d_model=16", "model.n_layers=1", "model.pattern=A", "model.ffn=D"};
    ck_assert_int_eq(load(&cfg, o, 4), 0);
    Model m;
    ck_assert_int_eq(model_build(&m, &cfg, 2, 8, &err), 0);
    p0_init = m.param_data[0];
    model_free(&m);
    nan_run("skip", &rc, &err, &skipped, &p0);
    ck_assert_msg(skipped == 10, "skipped %ld steps, expected 10 before giving up", skipped);
    ck_assert_msg(rc == -1 && strstr(err.message, "10 consecutive"), "message: %s", err.message);
    ck_assert_msg(p0 == p0_init, "a skipped step changed the parameters");
}
END_TEST

/* Evaluating at 4x the training length runs a quarter of the batch (trainer_eval_batch), so
 * the arena the trainer builds is about the training step's, not 4x it as when it was sized
 * for (batch, longest length); and the scores are those of full batches: the same
 * examples, each scored the same way. Every CPU layer kind is in the model. */
START_TEST(long_evaluation_fits_the_training_arena_and_scores_the_same) {
    const char *o[] = {"model.d_model=16", "model.n_layers=4", "model.pattern=MAGW", "model.ffn=DEDE",
                       "model.attention.window=8", "task.name=mqar", "task.seq_len=32",
                       "task.num_kv_pairs=4", "train.batch_size=8", "train.eval_examples=12",
                       "eval.seq_lens=[64,128]", "train.run_dir=", "train.threads=2"};
    Config cfg;
    BraidError err;
    ck_assert_int_eq(load(&cfg, o, 13), 0);
    ck_assert_int_eq(trainer_eval_batch(&cfg, 16), 8);
    ck_assert_int_eq(trainer_eval_batch(&cfg, 32), 8);
    ck_assert_int_eq(trainer_eval_batch(&cfg, 128), 2);
    ck_assert_int_eq(trainer_eval_batch(&cfg, 1000), 1);
    Trainer t;
    ck_assert_msg(trainer_init(&t, &cfg, &err) == 0, "%s", err.message);
    Model train_only, longest;   /* sized for the training batch alone; for (batch, 128) */
    ck_assert_msg(model_build(&train_only, &cfg, 8, 32, &err) == 0, "%s", err.message);
    ck_assert_msg(model_build(&longest, &cfg, 8, 128, &err) == 0, "%s", err.message);
    ck_assert_msg(t.model.arena_floats <= train_only.arena_floats * 11 / 10,
                  "arena %zu floats, the training batch alone takes %zu", t.model.arena_floats,
                  train_only.arena_floats);
    ck_assert_msg(t.model.arena_floats * 3 < longest.arena_floats, "arena %zu floats, (batch, 128) takes %zu",
                  t.model.arena_floats, longest.arena_floats);
    ck_assert(model_fits_batch(&t.model, 8, 32) && model_fits_batch(&t.model, 2, 128) &&
              model_fits_batch(&t.model, 4, 64) && !model_fits_batch(&t.model, 3, 128) &&
              !model_fits_batch(&t.model, 8, 33));

    for (int T = 64; T <= 128; T *= 2) {
        EvalResult r;
        ck_assert_msg(trainer_evaluate(&t, T, &r, &err) == 0, "%s", err.message);
        /* the same examples in full batches of 8 on the model sized for them */
        Rng rng;
        rng_seed(&rng, (uint64_t)cfg.train.eval_seed);
        Task task = t.task;
        task.cfg.seq_len = T;
        int *in = malloc(sizeof(int) * 8 * T), *tg = malloc(sizeof(int) * 8 * T);
        double loss_sum = 0.0;
        long scored = 0, correct = 0;
        longest.ctx.training = 0;
        for (int remaining = 12; remaining > 0; remaining -= 8) {
            int B = remaining < 8 ? remaining : 8;
            ck_assert_int_eq(task.kind->make_batch(&task, &rng, B, T, in, tg, &err), 0);
            model_forward(&longest, in, tg, B, T);
            loss_sum += longest.last_loss * longest.last_valid;
            scored += longest.last_valid;
            correct += longest.last_correct;
        }
        free(in);
        free(tg);
        ck_assert_msg(scored > 0 && r.scored == scored && lround(r.accuracy * scored) == correct,
                      "T %d: %ld scored, %.0f correct; full batches: %ld, %ld", T, r.scored, r.accuracy * r.scored,
                      scored, correct);
        ck_assert_msg(fabs(r.loss - loss_sum / scored) <= 1e-5 * fabs(r.loss), "T %d: loss %.9g, full batches %.9g",
                      T, r.loss, loss_sum / scored);
    }
    model_free(&train_only);
    model_free(&longest);
    trainer_free(&t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, attention_model_gradient_matches_finite_differences);
    tcase_add_test(tc, untied_head_gradient_matches_finite_differences);
    tcase_add_test(tc, hybrid_model_gradient_matches_finite_differences);
    tcase_add_test(tc, same_seed_gives_identical_training);
    tcase_add_test(tc, nan_loss_stops_with_a_clear_message);
    tcase_add_test(tc, nan_policy_skip_skips_updates_then_gives_up);
    tcase_add_test(tc, long_evaluation_fits_the_training_arena_and_scores_the_same);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
