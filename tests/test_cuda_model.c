/* test_cuda_model.c — whole models on the GPU against the same models on the CPU:
 *  - one forward + backward of a hybrid model (same init, same batch): the loss and every
 *    parameter's gradient agree;
 *  - a few full training steps through the trainer (batches from the task, gradient
 *    clipping, AdamW on the device): the losses agree step by step and the parameters
 *    stay together;
 *  - a checkpoint written from the GPU model loads into a CPU model with the same loss;
 *  - with train.matmul_precision tf32 or bf16 the GPU steps track the float32 GPU steps;
 *  - two GPU runs of the same steps give the same bits (float32 and bf16);
 *  - bf16 matmul operands written by their producers give the bits of converting them.
 * The CPU model is the reference (its every op is gradient-checked in the CPU suites).
 * Tolerances: loss 1e-5 relative; gradients 1e-3 of each tensor's largest element (cuBLAS
 * and the kernels sum in other orders). After AdamW steps a parameter whose gradient is
 * near zero can move by up to 2·lr on one side only (Adam normalises a tiny gradient to a
 * unit step, and rounding can flip its sign), so the parameter check allows that for a
 * few elements and asks the bulk to agree to 1e-3·lr.
 * No GPU: prints that it skipped and exits 77. Check runs in-process (CK_NOFORK). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda/ops_cuda.h"
#include "cuda_harness.h"
#include "models/model.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

typedef struct ModelSpec { const char *name, *pattern, *ffn; } ModelSpec;
static const ModelSpec SPECS[] = {
    {"attention + sliding window", "AW", "DD"},
    {"hybrid Mamba/attention/GLA/SWA, MoE", "MAGW", "DEDE"},
    {"jamba-like 1:3, MoE every other", "MMAM", "DEDE"},
};

/* wide: d_model 64 and batch 8 (320 tokens) instead of 32 and 3, so that most matmuls
 * have every dimension a multiple of 8 and at least 64 — the ones train.matmul_precision
 * bf16 multiplies in bf16 (smaller ones go to TF32; see matmul.cu). */
static void load_config_sized(Config *cfg, const ModelSpec *s, const char *device, int wide) {
    char pattern[64], ffn[64], dev[64];
    snprintf(pattern, sizeof pattern, "model.pattern=%s", s->pattern);
    snprintf(ffn, sizeof ffn, "model.ffn=%s", s->ffn);
    snprintf(dev, sizeof dev, "train.device=%s", device);
    char layers[48];
    snprintf(layers, sizeof layers, "model.n_layers=%zu", strlen(s->pattern));
    const char *o[] = {"task.name=mqar", "task.vocab_size=64", "task.seq_len=40", "task.num_kv_pairs=4",
                       wide ? "model.d_model=64" : "model.d_model=32", layers, pattern, ffn, "model.attention.n_heads=2",
                       "model.attention.window=9", "model.attention.position=rope", "model.gla.n_heads=2",
                       "model.moe.experts=4", "model.moe.top_k=2", "model.mamba.chunk=16",
                       "model.init_std=0.06", wide ? "train.batch_size=8" : "train.batch_size=3",
                       "train.steps=5", "train.warmup_steps=1",
                       "train.lr=3e-3", "train.grad_clip=0.5", "train.run_dir=", "train.threads=1", dev};
    BraidError err;
    ck_assert_msg(config_load(cfg, NULL, o, (int)(sizeof o / sizeof *o), &err) == 0, "config: %s", err.message);
}

static void load_config(Config *cfg, const ModelSpec *s, const char *device) {
    load_config_sized(cfg, s, device, 0);
}

START_TEST(forward_backward_matches_cpu) {
    const ModelSpec *s = &SPECS[_i];
    Config cc, cg;
    load_config(&cc, s, "cpu");
    load_config(&cg, s, "cuda");
    Model mc, mg;
    BraidError err;
    int B = 3, T = 40, N = B * T;
    ck_assert_msg(model_build(&mc, &cc, B, T, &err) == 0, "%s", err.message);
    ck_assert_msg(model_build(&mg, &cg, B, T, &err) == 0, "%s: %s", s->name, err.message);
    ck_assert(mg.device == DEVICE_CUDA);
    int *tokens = malloc(sizeof(int) * N), *targets = malloc(sizeof(int) * N);
    Rng rng;
    rng_seed(&rng, 5);
    for (int i = 0; i < N; i++) {
        tokens[i] = (int)rng_below(&rng, (uint32_t)mc.vocab);
        targets[i] = i % 4 == 0 ? -100 : (int)rng_below(&rng, (uint32_t)mc.vocab);
    }
    model_zero_grad(&mc);
    model_zero_grad(&mg);
    double lc = model_forward(&mc, tokens, targets, B, T);
    double lg = model_forward(&mg, tokens, targets, B, T);
    model_backward(&mc, tokens, targets, B, T, 1.0f);
    model_backward(&mg, tokens, targets, B, T, 1.0f);
    model_grads_to_host(&mg);
    printf("  %s: loss cpu %.7f cuda %.7f (aux %.3g / %.3g)\n", s->name, lc, lg, mc.last_aux_loss, mg.last_aux_loss);
    int ok = fabs(lc - lg) <= 1e-5 * fabs(lc) && mc.last_correct == mg.last_correct;
    for (int i = 0; i < mc.params.count; i++) {
        const ParamDecl *pd = &mc.params.items[i];
        double e = cuda_rel_err(mg.grad_data + pd->offset, mc.grad_data + pd->offset, NULL, NULL, pd->numel);
        if (e > 1e-3) { printf("    d %-44s %.2e  FAIL\n", pd->name, e); ok = 0; }
    }
    ck_assert_msg(ok, "%s: GPU forward/backward differs from the CPU (see above)", s->name);
    free(tokens); free(targets);
    model_free(&mc); model_free(&mg);
}
END_TEST

/* Two trainers run side by side (the tests below compare them step by step), quiet. */
static void trainer_pair_init(Trainer *a, const Config *ca, Trainer *b, const Config *cb) {
    BraidError err;
    ck_assert_msg(trainer_init(a, ca, &err) == 0, "%s", err.message);
    ck_assert_msg(trainer_init(b, cb, &err) == 0, "%s", err.message);
    a->quiet = b->quiet = 1;
}

/* One training step of each. */
static void trainer_pair_step(Trainer *a, StepStats *sa, Trainer *b, StepStats *sb) {
    BraidError err;
    ck_assert_msg(trainer_step(a, sa, &err) == 0, "%s", err.message);
    ck_assert_msg(trainer_step(b, sb, &err) == 0, "%s", err.message);
}

START_TEST(training_steps_match_cpu) {
    const ModelSpec *s = &SPECS[_i];
    Config cc, cg;
    load_config(&cc, s, "cpu");
    load_config(&cg, s, "cuda");
    Trainer tc, tg;
    trainer_pair_init(&tc, &cc, &tg, &cg);
    for (int step = 0; step < cc.train.steps; step++) {
        StepStats sc, sg;
        trainer_pair_step(&tc, &sc, &tg, &sg);
        printf("  %s step %d: loss cpu %.6f cuda %.6f  gnorm %.5f / %.5f\n", s->name, step, sc.loss, sg.loss,
               sc.grad_norm, sg.grad_norm);
        ck_assert_msg(fabs(sc.loss - sg.loss) <= 1e-4 * fabs(sc.loss), "%s: step %d loss %.7f (cuda) vs %.7f (cpu)",
                      s->name, step, sg.loss, sc.loss);
        ck_assert_msg(fabs(sc.grad_norm - sg.grad_norm) <= 1e-3 * sc.grad_norm, "%s: step %d grad norm differs",
                      s->name, step);
    }
    model_sync_to_host(&tg.model);
    size_t P = tc.model.params.total, loose = 0;
    double lr = cc.train.lr, worst = 0.0;
    for (size_t i = 0; i < P; i++) {
        double d = fabs((double)tg.model.param_data[i] - tc.model.param_data[i]);
        if (d > worst) worst = d;
        if (d > 1e-3 * lr) loose++;
    }
    printf("  %s: after %d steps, max |Δparam| %.3g, %zu of %zu beyond 1e-3·lr\n", s->name, cc.train.steps,
           worst, loose, P);
    ck_assert_msg(worst <= 2.0 * lr * cc.train.steps && loose <= P / 1000,
                  "%s: GPU parameters drifted from the CPU's", s->name);

    /* the GPU's checkpoint, loaded into a CPU model, gives the CPU's loss on a batch */
    BraidError err;
    char path[] = "/tmp/braid_cuda_model_XXXXXX";
    int fd = mkstemp(path);
    ck_assert(fd >= 0);
    close(fd);
    ck_assert_msg(checkpoint_save(path, &tg.model, &tg.state, &err) == 0, "%s", err.message);
    Trainer tl;
    ck_assert_msg(trainer_init(&tl, &cc, &err) == 0, "%s", err.message);
    ck_assert_msg(checkpoint_load(path, &tl.model, &tl.state, &err) == 0, "%s", err.message);
    unlink(path);
    ck_assert(memcmp(tl.model.param_data, tg.model.param_data, P * sizeof(float)) == 0);
    trainer_free(&tl);
    trainer_free(&tc);
    trainer_free(&tg);
}
END_TEST

/* train.matmul_precision tf32 / bf16: the same training steps on the GPU with the matmuls
 * on the tensor cores track the float32 GPU run (inputs rounded to 10 / 7 mantissa bits;
 * everything else float32; tf32 observed on an H100: 1e-5 … 2e-4 relative over 5 steps),
 * and do differ from it, so the option reaches the matmuls. */
START_TEST(reduced_precision_steps_track_float32) {
    static const char *precisions[] = {"tf32", "bf16"};
    const ModelSpec *s = &SPECS[2];
    Config c32, cr;
    load_config_sized(&c32, s, "cuda", 1);
    load_config_sized(&cr, s, "cuda", 1);
    snprintf(cr.train.matmul_precision, sizeof cr.train.matmul_precision, "%s", precisions[_i]);
    Trainer t32, tr;
    trainer_pair_init(&t32, &c32, &tr, &cr);
    double worst = 0.0;
    for (int step = 0; step < c32.train.steps; step++) {
        StepStats s32, sr;
        trainer_pair_step(&t32, &s32, &tr, &sr);
        double rel = fabs(s32.loss - sr.loss) / fabs(s32.loss);
        printf("  %s step %d: loss fp32 %.6f %s %.6f (rel %.2e)\n", s->name, step, s32.loss, precisions[_i],
               sr.loss, rel);
        ck_assert_msg(rel <= 1e-2, "%s: step %d loss %.6f (%s) vs %.6f (fp32)", s->name, step, sr.loss,
                      precisions[_i], s32.loss);
        if (rel > worst) worst = rel;
    }
    ck_assert_msg(worst > 1e-7, "%s: %s losses equal float32's to %.1e: the matmuls were not reduced",
                  s->name, precisions[_i], worst);
    trainer_free(&t32);
    trainer_free(&tr);
}
END_TEST

/* Two GPU runs of the same training steps give the same bits: every GPU sum is in a fixed
 * order (no atomics since the eleventh session's embedding backward), so a run can be
 * repeated exactly. Float32 and bf16, the hybrid with every mixer kind and MoE. */
START_TEST(training_steps_are_deterministic) {
    static const char *precisions[] = {"fp32", "bf16"};
    const ModelSpec *s = &SPECS[1];
    Config c;
    load_config_sized(&c, s, "cuda", 1);
    snprintf(c.train.matmul_precision, sizeof c.train.matmul_precision, "%s", precisions[_i]);
    Trainer a, b;
    trainer_pair_init(&a, &c, &b, &c);
    for (int step = 0; step < c.train.steps; step++) {
        StepStats sa, sb;
        trainer_pair_step(&a, &sa, &b, &sb);
        ck_assert_msg(sa.loss == sb.loss && sa.grad_norm == sb.grad_norm,
                      "%s (%s): step %d loss %.9g / %.9g, grad norm %.9g / %.9g: the runs differ", s->name,
                      precisions[_i], step, sa.loss, sb.loss, sa.grad_norm, sb.grad_norm);
    }
    model_sync_to_host(&a.model);
    model_sync_to_host(&b.model);
    ck_assert_msg(memcmp(a.model.param_data, b.model.param_data, a.model.params.total * sizeof(float)) == 0,
                  "%s (%s): parameters differ in their bits after %d steps", s->name, precisions[_i], c.train.steps);
    printf("  %s (%s): %d steps twice, the same bits\n", s->name, precisions[_i], c.train.steps);
    trainer_free(&a);
    trainer_free(&b);
}
END_TEST

/* bf16 operands written by the ops that produce them (ops_cuda.h: SwiGLU, the Mamba gate,
 * the conv's dx1 and the cross-entropy's dlogits write them as bf16; the RMSNorms and the
 * Mamba silu write bf16 copies beside their float32 outputs) are the bits the matmuls' own
 * conversions make: the same training steps in bf16
 * with the producers on and off (matmul_set_bf16_producers_cuda) give the same bits, losses, gradient norms and
 * parameters — and the first makes fewer conversions, so its path was taken. The hybrid
 * with dense and MoE blocks, sized so that their products multiply in bf16. */
START_TEST(bf16_operands_from_their_producers_change_no_bit) {
    const ModelSpec *s = &SPECS[1];
    Config c;
    load_config_sized(&c, s, "cuda", 1);
    snprintf(c.train.matmul_precision, sizeof c.train.matmul_precision, "bf16");
    c.model.mamba.dt_rank = 32;   /* x_proj's R + 2N = 64 outputs: bf16 too, so u's bf16 copy is read */
    Trainer a, b;
    trainer_pair_init(&a, &c, &b, &c);
    size_t conversions[2] = {0, 0};   /* with producers, without */
    BraidError err;
    for (int step = 0; step < c.train.steps; step++) {
        StepStats sa, sb;
        size_t before = matmul_bf16_conversions_cuda();
        matmul_set_bf16_producers_cuda(1);
        ck_assert_msg(trainer_step(&a, &sa, &err) == 0, "%s", err.message);
        conversions[0] += matmul_bf16_conversions_cuda() - before;
        before = matmul_bf16_conversions_cuda();
        matmul_set_bf16_producers_cuda(0);
        ck_assert_msg(trainer_step(&b, &sb, &err) == 0, "%s", err.message);
        conversions[1] += matmul_bf16_conversions_cuda() - before;
        matmul_set_bf16_producers_cuda(-1);
        ck_assert_msg(sa.loss == sb.loss && sa.grad_norm == sb.grad_norm,
                      "%s: step %d loss %.9g / %.9g, grad norm %.9g / %.9g with / without bf16 producers", s->name,
                      step, sa.loss, sb.loss, sa.grad_norm, sb.grad_norm);
    }
    model_sync_to_host(&a.model);
    model_sync_to_host(&b.model);
    ck_assert_msg(memcmp(a.model.param_data, b.model.param_data, a.model.params.total * sizeof(float)) == 0,
                  "%s: parameters differ in their bits with and without bf16 producers", s->name);
    printf("  %s: %d bf16 steps with and without producers, the same bits; conversions %zu / %zu\n", s->name,
           c.train.steps, conversions[0], conversions[1]);
    ck_assert_msg(conversions[0] < conversions[1],
                  "%s: %zu conversions with bf16 producers, %zu without: the producers' path was not taken",
                  s->name, conversions[0], conversions[1]);
    trainer_free(&a);
    trainer_free(&b);
}
END_TEST

static Suite *cuda_model_suite(void) {
    Suite *s = suite_create("cuda_model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 200);
    int n = (int)(sizeof SPECS / sizeof *SPECS);
    tcase_add_loop_test(tc, forward_backward_matches_cpu, 0, n);
    tcase_add_loop_test(tc, training_steps_match_cpu, 0, n);
    tcase_add_loop_test(tc, reduced_precision_steps_track_float32, 0, 2);
    tcase_add_loop_test(tc, training_steps_are_deterministic, 0, 2);
    tcase_add_test(tc, bf16_operands_from_their_producers_change_no_bit);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return cuda_test_main("test_cuda_model", cuda_model_suite); }
