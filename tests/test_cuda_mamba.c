/* test_cuda_mamba.c — the Mamba-1 layer's CUDA path (layers/mamba.c: cuBLAS matmuls, the
 * CUDA conv1d and chunked scan, the glue kernels of cuda/mamba_glue.cu) against its CPU
 * path, through tests/cuda_harness.h: same parameters, input and dy; y, saved and scratch
 * poisoned first; dx and the gradients start non-zero, so what is checked is that
 * backward ADDS the same increments as the CPU does.
 *
 * Shapes: d_model 16–128 (d_inner 32–256, so 1 to 32 channel blocks of the scan);
 * d_state 4, 5 (not a power of two: padded lanes in the scan), 16, 32 (the scan's
 * largest); T = 1, 7, 64, 129, 300 against chunk 8, 64 and a chunk ≥ T, so chunk tails,
 * a chunk longer than the scan's 32-step backward tile, and a single chunk all occur;
 * T = 1 and 7 are also shorter than or close to the conv kernel; B 1–3; inner norms on
 * and off; dt_rank auto (⌈d/16⌉, 1 at d = 16) and explicit; d_conv 4 and 2.
 * Tolerances, relative to each tensor's largest element: 1e-4 forward, 1e-3 backward
 * (cuBLAS, the scan's shuffles and the conv's wgrad sum in other orders than OpenBLAS
 * and the CPU loops; the scan's exp is exp2f).
 * Then kernels on their own, bit for bit: the gate's fused bf16 backward against the two
 * kernels it replaced; and the producers of in_proj's output gradient (the gate's backward
 * writing dz, the conv's backward writing dx1, float32 and bf16), which the layer has write
 * into the halves of one (BT, 2di) array, against their flat calls.
 * No GPU: prints that it skipped and exits 77. Check runs in-process (CK_NOFORK): a CUDA
 * context does not survive fork(). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

#include "core/common.h"
#include "core/rng.h"
#include "cuda/cuda_check.h"
#include "cuda/mamba_cuda.h"
#include "cuda/ops_cuda.h"
#include "cuda_harness.h"
#include "models/config.h"

extern const LayerKind mamba_kind;

#define FWD_TOL 1e-4
#define BWD_TOL 1e-3

typedef struct MambaCase {
    int B, T, d, N, chunk;
    int dt_rank;        /* 0: auto */
    int inner_norms;
    int d_conv;
} MambaCase;

static const MambaCase CASES[] = {
    {2, 64, 64, 16, 64, 0, 0, 4},     /* the tiny configs' shape: one chunk exactly T long */
    {1, 1, 16, 4, 8, 0, 0, 4},        /* one token: T < d_conv, dt_rank 1 */
    {3, 7, 32, 5, 8, 0, 1, 4},        /* ragged, N = 5, inner norms, a single short chunk */
    {2, 129, 48, 16, 8, 5, 1, 4},     /* 17 chunks of 8, the last of 1; explicit dt_rank */
    {2, 129, 128, 32, 64, 0, 0, 4},   /* N = 32, chunk 64 (> the backward tile) + a 1-step tail */
    {1, 300, 96, 16, 512, 0, 1, 4},   /* one chunk longer than T */
    {3, 300, 64, 5, 64, 3, 0, 2},     /* 4 chunks of 64 and a 44-step tail; d_conv 2 */
    {2, 64, 16, 32, 8, 0, 1, 4},      /* N = 32 with few channels (d_inner 32), R = 1 normed */
    {1, 7, 128, 4, 64, 16, 0, 4},     /* chunk > T, wide explicit dt_rank */
};

START_TEST(mamba_layer_matches_cpu) {
    const MambaCase *c = &CASES[_i];
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = c->d;
    cfg.model.mamba.expand = 2;
    cfg.model.mamba.d_state = c->N;
    cfg.model.mamba.chunk = c->chunk;
    cfg.model.mamba.dt_rank = c->dt_rank;
    cfg.model.mamba.inner_norms = c->inner_norms;
    cfg.model.mamba.d_conv = c->d_conv;
    char what[96];
    snprintf(what, sizeof what, "mamba B%d T%d d%d N%d ch%d R%d%s k%d", c->B, c->T, c->d, c->N,
             c->chunk, config_dt_rank(&cfg), c->inner_norms ? " norms" : "", c->d_conv);
    ck_assert_msg(cuda_layer_check(&mamba_kind, &cfg, c->B, c->T, 300 + _i, FWD_TOL, BWD_TOL, what),
                  "%s: CUDA differs from CPU (see the table above)", what);
}
END_TEST

/* mamba_gate_backward_and_forward_bf16_cuda writes the bits that mamba_gate_forward_bf16_cuda
 * (gated) and mamba_gate_backward_bf16_cuda (dz, and dgated in place) give for the same
 * inputs: the layer's bf16 backward swapped the two for the one, and its products and the
 * scan's dy must not change (test_cuda_model's bf16 producers test checks the whole step).
 * Inputs pushed away from 0 (a zero dgated makes dz 0 whatever the kernel computes);
 * gated and dz start poisoned with a guard after them, dgated from the same values on both
 * sides with its guard poisoned. The float4 path (n a multiple of 4, arrays aligned) and the
 * scalar one (n ragged, or every array one element past its alignment). */
START_TEST(mamba_gate_backward_and_forward_bf16_matches_separate_kernels) {
    const struct { size_t n; int shift; } cases[] = {{1, 0}, {7, 0}, {1000, 0}, {129 * 256, 0}, {1000, 1}, {7, 1}};
    const size_t guard = 8;
    Rng rng;
    rng_seed(&rng, 31);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const size_t n = cases[c].n;
        const int shift = cases[c].shift;
        char shape[64];
        snprintf(shape, sizeof shape, "n=%zu%s", n, shift ? ", arrays 1 element off" : "");
        float *in[3];   /* y, z, dgated */
        for (int a = 0; a < 3; a++) {
            in[a] = cuda_test_host_normal_nonzero(&rng, n, a == 1 ? 3.0f : 1.0f);
        }
        const size_t fbytes = (shift + n + guard) * sizeof(float), hbytes = (shift + n + guard) * sizeof(uint16_t);
        float *d_y = cuda_test_device_poisoned_bytes(fbytes), *d_z = cuda_test_device_poisoned_bytes(fbytes);
        float *want_dg = cuda_test_device_poisoned_bytes(fbytes), *got_dg = cuda_test_device_poisoned_bytes(fbytes);
        CUDA_CHECK(cudaMemcpy(d_y + shift, in[0], n * sizeof(float), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(d_z + shift, in[1], n * sizeof(float), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(want_dg + shift, in[2], n * sizeof(float), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(got_dg + shift, in[2], n * sizeof(float), cudaMemcpyHostToDevice));
        uint16_t *want_gated = cuda_test_device_poisoned_bytes(hbytes), *got_gated = cuda_test_device_poisoned_bytes(hbytes);
        uint16_t *want_dz = cuda_test_device_poisoned_bytes(hbytes), *got_dz = cuda_test_device_poisoned_bytes(hbytes);
        mamba_gate_forward_bf16_cuda(want_gated + shift, d_y + shift, d_z + shift, n, 0);
        mamba_gate_backward_bf16_cuda(want_dz + shift, want_dg + shift, d_y + shift, d_z + shift, n, 0);
        mamba_gate_backward_and_forward_bf16_cuda(got_gated + shift, got_dz + shift, got_dg + shift, d_y + shift,
                                                  d_z + shift, 1, (int)n, (int)n, 0);
        cuda_test_check_same_bits("mamba_gate_bwd_and_fwd_bf16 gated", shape, got_gated, want_gated, hbytes);
        cuda_test_check_same_bits("mamba_gate_bwd_and_fwd_bf16 dz", shape, got_dz, want_dz, hbytes);
        cuda_test_check_same_bits("mamba_gate_bwd_and_fwd_bf16 dgated", shape, got_dg, want_dg, fbytes);
        for (int a = 0; a < 3; a++) free(in[a]);
        void *dev[] = {d_y, d_z, want_dg, got_dg, want_gated, got_gated, want_dz, got_dz};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) CUDA_CHECK(cudaFree(dev[i]));
    }
}
END_TEST

/* ---- in_proj's output gradient, rows interleaved: row r = [dx1[r] | dz[r]], ld = 2·cols ----
 * Each producer is called twice on the same inputs: flat (ld = cols) and into its half of an
 * interleaved array that starts poisoned (bytes 0xFF) with a guard after it. The expected
 * interleaved array is the same poison with the flat output copied into that half's columns
 * (cuda_test_copy_rows_strided), so one whole-allocation bits check finds both a value that
 * differs from the flat call's and a write into the other half, between the rows or past the
 * end. */

/* The gate's backward in the layer's two precisions: float32 writes dz; bf16, the fused
 * kernel, writes gated and dz as bf16. dz's rows ld apart. */
static void gate_backward(int bf16, void *gated, void *dz, float *dgated, const float *y, const float *z, size_t rows,
                          int cols, int ld) {
    if (bf16) mamba_gate_backward_and_forward_bf16_cuda(gated, dz, dgated, y, z, rows, cols, ld, 0);
    else mamba_gate_backward_cuda(dz, dgated, y, z, rows, cols, ld, 0);
}

/* dz into the second half of each row (dz_ld = 2·cols) gives the flat call's bits there and
 * leaves the rest of the array as it was; dgated (and bf16's gated, flat) the same bits too.
 * The float4 path (cols a multiple of 4, arrays aligned), the scalar one (cols ragged, or
 * every array one element off), and a shape whose flat call takes float4 pieces (n = 28)
 * where the strided one cannot (cols 7). */
START_TEST(mamba_gate_backward_strided_dz_matches_flat) {
    const struct { size_t rows; int cols, shift; } cases[] = {
        {1, 1, 0}, {4, 7, 0}, {7, 6, 0}, {5, 33, 0}, {1, 4, 0}, {3, 64, 0}, {129, 256, 0}, {3, 64, 1},
    };
    const size_t guard = 8;
    Rng rng;
    rng_seed(&rng, 37);
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            const size_t rows = cases[c].rows, n = rows * cases[c].cols;
            const int cols = cases[c].cols, ld = 2 * cols, shift = cases[c].shift;
            const size_t es = bf16 ? sizeof(uint16_t) : sizeof(float);   /* dz's and gated's element */
            char op[64], shape[64];
            snprintf(op, sizeof op, "mamba_gate_backward%s dz, ld 2·cols", bf16 ? "_and_forward_bf16" : "");
            snprintf(shape, sizeof shape, "%zu x %d%s", rows, cols, shift ? ", arrays 1 element off" : "");
            float *in[3];   /* y, z, dgated */
            for (int a = 0; a < 3; a++) in[a] = cuda_test_host_normal_nonzero(&rng, n, a == 1 ? 3.0f : 1.0f);
            const size_t fbytes = (shift + n + guard) * sizeof(float);
            const size_t flat_bytes = (shift + n + guard) * es, rows_bytes = (shift + rows * ld + guard) * es;
            float *d_y = cuda_test_device_poisoned_bytes(fbytes), *d_z = cuda_test_device_poisoned_bytes(fbytes);
            float *flat_dg = cuda_test_device_poisoned_bytes(fbytes);
            float *rows_dg = cuda_test_device_poisoned_bytes(fbytes);
            CUDA_CHECK(cudaMemcpy(d_y + shift, in[0], n * sizeof(float), cudaMemcpyHostToDevice));
            CUDA_CHECK(cudaMemcpy(d_z + shift, in[1], n * sizeof(float), cudaMemcpyHostToDevice));
            CUDA_CHECK(cudaMemcpy(flat_dg + shift, in[2], n * sizeof(float), cudaMemcpyHostToDevice));
            CUDA_CHECK(cudaMemcpy(rows_dg + shift, in[2], n * sizeof(float), cudaMemcpyHostToDevice));
            char *flat_gated = cuda_test_device_poisoned_bytes(flat_bytes);
            char *rows_gated = cuda_test_device_poisoned_bytes(flat_bytes);
            char *flat_dz = cuda_test_device_poisoned_bytes(flat_bytes);
            char *got = cuda_test_device_poisoned_bytes(rows_bytes);
            char *want = cuda_test_device_poisoned_bytes(rows_bytes);
            gate_backward(bf16, flat_gated + shift * es, flat_dz + shift * es, flat_dg + shift, d_y + shift,
                          d_z + shift, rows, cols, cols);
            gate_backward(bf16, rows_gated + shift * es, got + (shift + cols) * es, rows_dg + shift, d_y + shift,
                          d_z + shift, rows, cols, ld);
            cuda_test_copy_rows_strided(want + (shift + cols) * es, (size_t)ld, flat_dz + shift * es, rows, cols, es);
            cuda_test_check_same_bits(op, shape, got, want, rows_bytes);
            cuda_test_check_same_bits("gate backward, strided dz: dgated", shape, rows_dg, flat_dg, fbytes);
            if (bf16)
                cuda_test_check_same_bits("gate backward, strided dz: gated", shape, rows_gated, flat_gated,
                                          flat_bytes);
            for (int a = 0; a < 3; a++) free(in[a]);
            void *dev[] = {d_y, d_z, flat_dg, rows_dg, flat_gated, rows_gated, flat_dz, got, want};
            for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) CUDA_CHECK(cudaFree(dev[i]));
        }
}
END_TEST

/* The conv's backward through the silu, as the layer calls it, with dx1 into the first half
 * of each row (dx_ld = 2C): the flat call's bits there, float32 (ACCUMULATED: both start
 * from the same values, the strided one's other half poisoned) and bf16 (written), the rest
 * of the array as it was; dweight and dbias (accumulated from the same values) the same
 * bits. The float4 path (C a multiple of 4) and the scalar one (C 33, and C 38, whose
 * stride 76 alone would allow float4); T from 1 to 300, shorter than the kernel too. */
START_TEST(conv1d_backward_strided_dx_matches_flat) {
    const struct { int Bsz, T, C, K; } cases[] = {
        {1, 1, 16, 4}, {2, 7, 48, 4}, {3, 64, 100, 2}, {2, 300, 33, 8}, {3, 129, 38, 4}, {8, 250, 40, 4},
    };
    const size_t guard = 8;
    Rng rng;
    rng_seed(&rng, 41);
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            const int Bsz = cases[c].Bsz, T = cases[c].T, C = cases[c].C, K = cases[c].K, ld = 2 * C;
            const size_t rows = (size_t)Bsz * T, n = rows * C, nw = (size_t)C * K;
            const size_t es = bf16 ? sizeof(uint16_t) : sizeof(float);   /* dx's element */
            char op[64], shape[64];
            snprintf(op, sizeof op, "causal_conv1d_backward%s dx, ld 2C", bf16 ? "_bf16" : "");
            snprintf(shape, sizeof shape, "B=%d T=%d C=%d K=%d", Bsz, T, C, K);
            float *x = cuda_test_host_normal(&rng, n, 1.0f), *w = cuda_test_host_normal(&rng, nw, 0.5f);
            float *dout = cuda_test_host_normal(&rng, n, 1.0f), *pre = cuda_test_host_normal(&rng, n, 2.0f);
            float *dx = cuda_test_host_normal(&rng, n, 1.0f), *dw = cuda_test_host_normal(&rng, nw, 1.0f);
            float *dbias = cuda_test_host_normal(&rng, C, 1.0f);
            float *d_x = cuda_test_device_copy(x, n), *d_w = cuda_test_device_copy(w, nw);
            float *d_dout = cuda_test_device_copy(dout, n), *d_pre = cuda_test_device_copy(pre, n);
            float *flat_dw = cuda_test_device_copy(dw, nw), *rows_dw = cuda_test_device_copy(dw, nw);
            float *flat_dbias = cuda_test_device_copy(dbias, C), *rows_dbias = cuda_test_device_copy(dbias, C);
            const size_t flat_bytes = (n + guard) * es, rows_bytes = (rows * ld + guard) * es;
            char *flat_dx = cuda_test_device_poisoned_bytes(flat_bytes);
            char *got = cuda_test_device_poisoned_bytes(rows_bytes);
            char *want = cuda_test_device_poisoned_bytes(rows_bytes);
            if (bf16) {
                causal_conv1d_backward_bf16_cuda((uint16_t *)flat_dx, flat_dw, flat_dbias, d_dout, d_pre, d_x, d_w, Bsz,
                                                 T, C, C, K, 0);
                causal_conv1d_backward_bf16_cuda((uint16_t *)got, rows_dw, rows_dbias, d_dout, d_pre, d_x, d_w, Bsz, T,
                                                 C, ld, K, 0);
            } else {   /* dx starts from the same values in both layouts */
                CUDA_CHECK(cudaMemcpy(flat_dx, dx, n * sizeof(float), cudaMemcpyHostToDevice));
                cuda_test_copy_rows_strided(got, (size_t)ld, flat_dx, rows, (size_t)C, es);
                causal_conv1d_backward_cuda((float *)flat_dx, flat_dw, flat_dbias, d_dout, d_pre, d_x, d_w, Bsz, T, C,
                                            C, K, 0);
                causal_conv1d_backward_cuda((float *)got, rows_dw, rows_dbias, d_dout, d_pre, d_x, d_w, Bsz, T, C, ld,
                                            K, 0);
            }
            cuda_test_copy_rows_strided(want, (size_t)ld, flat_dx, rows, (size_t)C, es);
            cuda_test_check_same_bits(op, shape, got, want, rows_bytes);
            cuda_test_check_same_bits("conv backward, strided dx: dweight", shape, rows_dw, flat_dw,
                                      nw * sizeof(float));
            cuda_test_check_same_bits("conv backward, strided dx: dbias", shape, rows_dbias, flat_dbias,
                                      C * sizeof(float));
            free(x); free(w); free(dout); free(pre); free(dx); free(dw); free(dbias);
            void *dev[] = {d_x, d_w, d_dout, d_pre, flat_dw, rows_dw, flat_dbias, rows_dbias, flat_dx, got, want};
            for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) CUDA_CHECK(cudaFree(dev[i]));
        }
}
END_TEST

static Suite *cuda_mamba_suite(void) {
    Suite *s = suite_create("cuda_mamba");
    TCase *tc = tcase_create("layer");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, mamba_layer_matches_cpu, 0, (int)(sizeof CASES / sizeof *CASES));
    suite_add_tcase(s, tc);
    TCase *ops = tcase_create("kernels");
    tcase_set_timeout(ops, 60);
    tcase_add_test(ops, mamba_gate_backward_and_forward_bf16_matches_separate_kernels);
    tcase_add_test(ops, mamba_gate_backward_strided_dz_matches_flat);
    tcase_add_test(ops, conv1d_backward_strided_dx_matches_flat);
    suite_add_tcase(s, ops);
    return s;
}

int main(void) { return cuda_test_main("test_cuda_mamba", cuda_mamba_suite); }
