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
 * Then one glue kernel on its own: the gate's fused bf16 backward against the two kernels
 * it replaced, bit for bit.
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
                                                  d_z + shift, n, 0);
        cuda_test_check_same_bits("mamba_gate_bwd_and_fwd_bf16 gated", shape, got_gated, want_gated, hbytes);
        cuda_test_check_same_bits("mamba_gate_bwd_and_fwd_bf16 dz", shape, got_dz, want_dz, hbytes);
        cuda_test_check_same_bits("mamba_gate_bwd_and_fwd_bf16 dgated", shape, got_dg, want_dg, fbytes);
        for (int a = 0; a < 3; a++) free(in[a]);
        void *dev[] = {d_y, d_z, want_dg, got_dg, want_gated, got_gated, want_dz, got_dz};
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
    TCase *ops = tcase_create("gate");
    tcase_set_timeout(ops, 60);
    tcase_add_test(ops, mamba_gate_backward_and_forward_bf16_matches_separate_kernels);
    suite_add_tcase(s, ops);
    return s;
}

int main(void) { return cuda_test_main("test_cuda_mamba", cuda_mamba_suite); }
