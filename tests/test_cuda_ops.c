/* test_cuda_ops.c — every CUDA op in src/cuda/ops_cuda.h against its CPU op (core/ops.h,
 * train/adamw.h) on the same random data.
 *
 * For each op, several shapes, ragged ones among them (T = 1, 7, 64, 129, 300; hd 16, 24,
 * 64, 128; GQA H=8, Hkv=2; window 0, 5, 64). Inputs are seeded normals, never zeros.
 * Outputs an op WRITES are poisoned first (every byte 0xFF, a NaN) so an element the
 * kernel never wrote shows up as NaN; gradients an op ACCUMULATES into start from the same
 * random values on both sides, so adding (not overwriting) is what gets checked.
 * Elements are compared as |cuda − cpu| ≤ tol · max|cpu| (cuda_test_check_close,
 * tests/cuda_harness.h); a failure names the op, the shape, the worst element, both values
 * and the difference.
 * Tolerances: 1e-4 for elementwise and norm ops; 1e-5 for matmul (cuBLAS in float32 agrees
 * with OpenBLAS to ~1e-7 of the largest output; TF32 rounds inputs to 10 mantissa bits and
 * lands ~1e-4 off, so this also checks that TF32 stays off);
 * 1e-3 for attention (different summation orders over up to 300 keys), tighter for the
 * double-precision sums (loss sum, gradient norm); the TF32 tensor-core attention
 * (train.matmul_precision tf32/bf16) has its own, wider tolerance, and a floor that shows
 * the rounding happened.
 *
 * No GPU (cudaGetDeviceCount fails or finds none): prints that it skipped and exits 77,
 * which CTest reports as skipped. Check runs the tests in-process (CK_NOFORK): a CUDA
 * context does not survive fork(). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "core/common.h"
#include "core/ops.h"
#include "core/rng.h"
#include "cuda/cuda_check.h"
#include "cuda/ops_cuda.h"
#include "cuda_harness.h"
#include "layers/layer.h"
#include "train/adamw.h"

#define ELEMENTWISE_TOL 1e-4
#define MATMUL_TOL 1e-5
#define ATTENTION_TOL 1e-3
/* TF32 tensor-core attention: operands rounded to 10 mantissa bits (unit roundoff 2^-11) */
#define ATTENTION_TF32_TOL 5e-3
#define ATTENTION_TF32_MIN_DIFF 1e-5
/* bf16 tensor-core attention: 8 significant bits (unit roundoff 2^-9) */
#define ATTENTION_BF16_TOL 4e-2
#define ATTENTION_BF16_MIN_DIFF 3e-3

static Rng rng;
static cudaStream_t stream;

/* ---------------------------------------------------------------- helpers */

/* Token and target ids; the float helpers are the harness's (tests/cuda_harness.h). */
static int *device_copy_int(const int *x, size_t n) {
    int *p = cuda_test_device_alloc(n * sizeof(int));
    CUDA_CHECK(cudaMemcpy(p, x, n * sizeof(int), cudaMemcpyHostToDevice));
    return p;
}

/* ---------------------------------------------------------------- the checker itself */

/* The harness's checker, which test_cuda_scan and test_cuda_gla rely on too: a changed
 * element is the worst, and the poisoned elements an "op" never wrote come back as NaN. */
START_TEST(test_comparison_flags_unwritten_and_wrong_elements) {
    float want[5] = {1.0f, -2.0f, 3.0f, 4.0f, -5.0f};
    float got[5];
    memcpy(got, want, sizeof got);
    CudaComparison same = cuda_test_compare(got, want, 5);
    ck_assert_msg(same.n_nan == 0 && same.worst_diff == 0.0, "identical buffers compared unequal");

    got[3] = 4.01f;
    CudaComparison wrong = cuda_test_compare(got, want, 5);
    ck_assert_msg(wrong.worst == 3 && wrong.worst_diff > 1e-3 * wrong.max_want,
                  "a changed element went unnoticed (worst %zu, diff %g)", wrong.worst, wrong.worst_diff);

    /* a poisoned buffer that the "op" wrote only partly */
    float *poisoned = cuda_test_device_poisoned(5);
    CUDA_CHECK(cudaMemcpy(poisoned, want, 3 * sizeof(float), cudaMemcpyHostToDevice));
    float *back = cuda_test_host_from_device(poisoned, 5);
    CudaComparison unwritten = cuda_test_compare(back, want, 5);
    ck_assert_msg(unwritten.n_nan == 2 && unwritten.first_nan == 3,
                  "poisoned elements not seen as unwritten (%zu NaN, first at %zu)",
                  unwritten.n_nan, unwritten.first_nan);
    free(back);
    CUDA_CHECK(cudaFree(poisoned));
}
END_TEST

/* ---------------------------------------------------------------- matmul */

typedef struct MatmulShape { int N, C, OC, use_bias, accumulate; } MatmulShape;
static const MatmulShape matmul_shapes[] = {
    {1, 7, 5, 1, 0}, {7, 16, 33, 0, 0}, {64, 129, 300, 1, 0}, {129, 64, 7, 1, 1}, {300, 128, 256, 0, 1},
    {1999, 32, 100, 1, 0},   /* dbias over 16 row slices of column_sum.cuh, the last one shorter */
};
#define N_MATMUL_SHAPES (sizeof matmul_shapes / sizeof matmul_shapes[0])

START_TEST(test_matmul_forward_matches_cpu) {
    for (size_t s = 0; s < N_MATMUL_SHAPES; s++) {
        const MatmulShape m = matmul_shapes[s];
        char shape[128];
        snprintf(shape, sizeof shape, "N=%d C=%d OC=%d bias=%d accumulate=%d", m.N, m.C, m.OC,
                 m.use_bias, m.accumulate);
        const size_t n_out = (size_t)m.N * m.OC;
        float *inp = cuda_test_host_normal(&rng, (size_t)m.N * m.C, 1.0f);
        float *weight = cuda_test_host_normal(&rng, (size_t)m.OC * m.C, 0.5f);
        float *bias = cuda_test_host_normal(&rng, m.OC, 1.0f);
        float *out = cuda_test_host_normal(&rng, n_out, 1.0f);
        float *d_inp = cuda_test_device_copy(inp, (size_t)m.N * m.C);
        float *d_weight = cuda_test_device_copy(weight, (size_t)m.OC * m.C);
        float *d_bias = cuda_test_device_copy(bias, m.OC);
        /* accumulate: both sides start from the same values; else the output is poisoned */
        float *d_out = m.accumulate ? cuda_test_device_copy(out, n_out) : cuda_test_device_poisoned(n_out);
        matmul_forward(out, inp, weight, m.use_bias ? bias : NULL, m.N, m.C, m.OC, m.accumulate);
        matmul_forward_cuda(d_out, d_inp, d_weight, m.use_bias ? d_bias : NULL, m.N, m.C, m.OC,
                            m.accumulate, stream);
        cuda_test_check_device_close("matmul_forward", shape, d_out, out, n_out, MATMUL_TOL);
        free(inp); free(weight); free(bias); free(out);
        CUDA_CHECK(cudaFree(d_inp)); CUDA_CHECK(cudaFree(d_weight));
        CUDA_CHECK(cudaFree(d_bias)); CUDA_CHECK(cudaFree(d_out));
    }
}
END_TEST

START_TEST(test_matmul_backward_accumulates_like_cpu) {
    for (size_t s = 0; s < N_MATMUL_SHAPES; s++) {
        const MatmulShape m = matmul_shapes[s];
        char shape[128];
        snprintf(shape, sizeof shape, "N=%d C=%d OC=%d", m.N, m.C, m.OC);
        const size_t n_inp = (size_t)m.N * m.C, n_w = (size_t)m.OC * m.C, n_out = (size_t)m.N * m.OC;
        float *inp = cuda_test_host_normal(&rng, n_inp, 1.0f);
        float *weight = cuda_test_host_normal(&rng, n_w, 0.5f);
        float *dout = cuda_test_host_normal(&rng, n_out, 1.0f);
        float *dinp = cuda_test_host_normal(&rng, n_inp, 1.0f);
        float *dweight = cuda_test_host_normal(&rng, n_w, 1.0f);
        float *dbias = cuda_test_host_normal(&rng, m.OC, 1.0f);
        float *d_inp = cuda_test_device_copy(inp, n_inp), *d_weight = cuda_test_device_copy(weight, n_w);
        float *d_dout = cuda_test_device_copy(dout, n_out), *d_dinp = cuda_test_device_copy(dinp, n_inp);
        float *d_dweight = cuda_test_device_copy(dweight, n_w), *d_dbias = cuda_test_device_copy(dbias, m.OC);
        matmul_backward(dinp, dweight, dbias, dout, inp, weight, m.N, m.C, m.OC);
        matmul_backward_cuda(d_dinp, d_dweight, d_dbias, d_dout, d_inp, d_weight, m.N, m.C, m.OC, stream);
        cuda_test_check_device_close("matmul_backward dinp", shape, d_dinp, dinp, n_inp, MATMUL_TOL);
        cuda_test_check_device_close("matmul_backward dweight", shape, d_dweight, dweight, n_w, MATMUL_TOL);
        cuda_test_check_device_close("matmul_backward dbias", shape, d_dbias, dbias, m.OC, MATMUL_TOL);
        free(inp); free(weight); free(dout); free(dinp); free(dweight); free(dbias);
        CUDA_CHECK(cudaFree(d_inp)); CUDA_CHECK(cudaFree(d_weight)); CUDA_CHECK(cudaFree(d_dout));
        CUDA_CHECK(cudaFree(d_dinp)); CUDA_CHECK(cudaFree(d_dweight)); CUDA_CHECK(cudaFree(d_dbias));
    }
}
END_TEST

/* The write_dinp variants (ops_cuda.h) write dinp instead of adding into it: from a poisoned
 * start it must equal the CPU's from zero, while dweight still accumulates onto a random
 * start. Every matmul shape in float32; the bf16-operands one at a shape bf16 multiplies,
 * within bf16's rounding. */
START_TEST(test_matmul_backward_write_dinp_overwrites) {
    for (size_t s = 0; s <= N_MATMUL_SHAPES; s++) {
        const int bf16 = s == N_MATMUL_SHAPES;
        const MatmulShape m = bf16 ? (MatmulShape){512, 384, 256, 0, 0} : matmul_shapes[s];
        char shape[128];
        snprintf(shape, sizeof shape, "%s N=%d C=%d OC=%d", bf16 ? "bf16 operands" : "fp32", m.N, m.C, m.OC);
        const size_t n_inp = (size_t)m.N * m.C, n_w = (size_t)m.OC * m.C, n_out = (size_t)m.N * m.OC;
        float *inp = cuda_test_host_normal(&rng, n_inp, 1.0f), *weight = cuda_test_host_normal(&rng, n_w, 0.5f);
        float *dout = cuda_test_host_normal(&rng, n_out, 1.0f);
        float *dinp = braid_calloc(n_inp, sizeof(float), "dinp"), *dweight = cuda_test_host_normal(&rng, n_w, 1.0f);
        float *d_inp = cuda_test_device_copy(inp, n_inp), *d_weight = cuda_test_device_copy(weight, n_w);
        float *d_dout = cuda_test_device_copy(dout, n_out), *d_dinp = cuda_test_device_poisoned(n_inp);
        float *d_dweight = cuda_test_device_copy(dweight, n_w);
        matmul_backward(dinp, dweight, NULL, dout, inp, weight, m.N, m.C, m.OC);
        if (bf16) {
            ck_assert_int_eq(matmul_set_precision_cuda("bf16"), 0);
            ck_assert_msg(matmul_bf16_operands_cuda(m.N, m.C, m.OC), "%s: not a bf16 shape", shape);
            matmul_backward_bf16_operands_write_dinp_cuda(d_dinp, d_dweight, d_dout, NULL, d_inp, NULL, d_weight,
                                                          m.N, m.C, m.OC, stream);
            ck_assert_int_eq(matmul_set_precision_cuda("fp32"), 0);
        } else {
            matmul_backward_write_dinp_cuda(d_dinp, d_dweight, d_dout, d_inp, d_weight, m.N, m.C, m.OC, stream);
        }
        const double tol = bf16 ? 2e-2 : MATMUL_TOL;
        cuda_test_check_device_close("matmul_backward_write_dinp dinp", shape, d_dinp, dinp, n_inp, tol);
        cuda_test_check_device_close("matmul_backward_write_dinp dweight", shape, d_dweight, dweight, n_w, tol);
        free(inp); free(weight); free(dout); free(dinp); free(dweight);
        CUDA_CHECK(cudaFree(d_inp)); CUDA_CHECK(cudaFree(d_weight)); CUDA_CHECK(cudaFree(d_dout));
        CUDA_CHECK(cudaFree(d_dinp)); CUDA_CHECK(cudaFree(d_dweight));
    }
}
END_TEST

/* train.matmul_precision tf32 rounds the inputs to 10 mantissa bits (unit roundoff 2^-11)
 * and accumulates in float32, so against the CPU's float32 the products keep a few times
 * u·sqrt(C) of max|out| (observed on an H100: 2.8e-4); bf16 (7 bits, u = 2^-8) about 8×
 * that. And they must really be reduced — at a shape big enough for tensor-core kernels
 * the result has to differ from the exact one by more than float32 rounding does (observed
 * 4.6e-7), else the option would be silently ignored. fp32 afterwards is exact again (the
 * setting is process-wide). */
START_TEST(test_matmul_reduced_precision_within_rounding) {
    static const struct { const char *name; double tol, min_diff; } precisions[] = {
        {"tf32", 4e-3, 2e-5}, {"bf16", 2e-2, 2e-4}, {"fp32", MATMUL_TOL, 0.0}};
    const int N = 512, C = 384, OC = 256;
    const size_t n_inp = (size_t)N * C, n_w = (size_t)OC * C, n_out = (size_t)N * OC;
    float *inp = cuda_test_host_normal(&rng, n_inp, 1.0f), *weight = cuda_test_host_normal(&rng, n_w, 0.5f);
    float *dout = cuda_test_host_normal(&rng, n_out, 1.0f);
    float *out = braid_calloc(n_out, sizeof(float), "out"), *dinp = braid_calloc(n_inp, sizeof(float), "dinp");
    float *dweight = braid_calloc(n_w, sizeof(float), "dweight");
    matmul_forward(out, inp, weight, NULL, N, C, OC, 0);
    matmul_backward(dinp, dweight, NULL, dout, inp, weight, N, C, OC);
    float *d_inp = cuda_test_device_copy(inp, n_inp), *d_weight = cuda_test_device_copy(weight, n_w);
    float *d_dout = cuda_test_device_copy(dout, n_out);
    ck_assert_int_eq(matmul_set_precision_cuda("fp16"), -1);
    for (size_t p = 0; p < sizeof precisions / sizeof precisions[0]; p++) {
        char shape[96];
        snprintf(shape, sizeof shape, "%s N=%d C=%d OC=%d", precisions[p].name, N, C, OC);
        ck_assert_int_eq(matmul_set_precision_cuda(precisions[p].name), 0);
        float *d_out = cuda_test_device_poisoned(n_out);
        float *d_dinp = cuda_test_device_alloc(n_inp * sizeof(float));
        float *d_dweight = cuda_test_device_alloc(n_w * sizeof(float));
        CUDA_CHECK(cudaMemset(d_dinp, 0, n_inp * sizeof(float)));
        CUDA_CHECK(cudaMemset(d_dweight, 0, n_w * sizeof(float)));
        matmul_forward_cuda(d_out, d_inp, d_weight, NULL, N, C, OC, 0, stream);
        matmul_backward_cuda(d_dinp, d_dweight, NULL, d_dout, d_inp, d_weight, N, C, OC, stream);
        float *got = cuda_test_host_from_device(d_out, n_out);
        cuda_test_check_close("matmul_forward", shape, got, out, n_out, precisions[p].tol);
        CudaComparison c = cuda_test_compare(got, out, n_out);
        ck_assert_msg(c.worst_diff >= precisions[p].min_diff * c.max_want,
                      "matmul_forward %s: worst |diff| %.3g of max %.4g: no rounding to %s happened "
                      "(train.matmul_precision would be ignored)", shape, c.worst_diff, c.max_want,
                      precisions[p].name);
        cuda_test_check_device_close("matmul_backward dinp", shape, d_dinp, dinp, n_inp, precisions[p].tol);
        cuda_test_check_device_close("matmul_backward dweight", shape, d_dweight, dweight, n_w,
                                     precisions[p].tol);
        free(got);
        CUDA_CHECK(cudaFree(d_out)); CUDA_CHECK(cudaFree(d_dinp)); CUDA_CHECK(cudaFree(d_dweight));
    }
    free(inp); free(weight); free(dout); free(out); free(dinp); free(dweight);
    CUDA_CHECK(cudaFree(d_inp)); CUDA_CHECK(cudaFree(d_weight)); CUDA_CHECK(cudaFree(d_dout));
}
END_TEST

/* x rounded to the nearest bfloat16 (ties to even), as __float2bfloat16_rn does, as a float */
static float round_to_bf16(float x) {
    const uint32_t u = (uint32_t)cuda_test_bf16_bits(x) << 16;
    memcpy(&x, &u, sizeof x);
    return x;
}

static float *bf16_rounded_copy(const float *x, size_t n) {
    float *r = braid_calloc(n, sizeof(float), "bf16-rounded copy");
    for (size_t i = 0; i < n; i++) r[i] = round_to_bf16(x[i]);
    return r;
}

/* train.matmul_precision bf16 is exactly "round both operands to bfloat16, multiply and
 * accumulate in float32": the CPU op on operands rounded the same way must agree to
 * float32 summation-order rounding (products of two bf16 values are exact in float32), far
 * below the ~2e-3 that bf16 rounding itself costs — so this catches an operand left
 * unconverted, a wrong rounding mode, TF32 in its place, or the wrong buffer fed to cuBLAS.
 * Shapes bf16 is used for (every dimension a multiple of 8, at least 64; others go to TF32,
 * matmul.cu's bf16_pays), with accumulation into existing outputs and gradients; the second
 * shape's input starts one float past an aligned address, so the conversion takes its
 * unaligned path there. Then a shape outside that rule must be TF32's result: within TF32's
 * rounding of float32 and further from the bf16-rounded product than bf16 itself lands. */
START_TEST(test_matmul_bf16_is_float32_on_rounded_operands) {
    static const MatmulShape shapes[] = {{512, 384, 256, 1, 1}, {96, 64, 136, 1, 0}, {64, 72, 64, 0, 1}};
    ck_assert_int_eq(matmul_set_precision_cuda("bf16"), 0);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const MatmulShape m = shapes[s];
        char shape[96];
        snprintf(shape, sizeof shape, "bf16 N=%d C=%d OC=%d", m.N, m.C, m.OC);
        const size_t n_inp = (size_t)m.N * m.C, n_w = (size_t)m.OC * m.C, n_out = (size_t)m.N * m.OC;
        float *inp = cuda_test_host_normal(&rng, n_inp, 1.0f), *weight = cuda_test_host_normal(&rng, n_w, 0.5f);
        float *dout = cuda_test_host_normal(&rng, n_out, 1.0f), *bias = cuda_test_host_normal(&rng, m.OC, 1.0f);
        float *out = cuda_test_host_normal(&rng, n_out, 1.0f), *dinp = cuda_test_host_normal(&rng, n_inp, 1.0f);
        float *dweight = cuda_test_host_normal(&rng, n_w, 1.0f);
        const size_t misalign = s == 1;
        float *d_inp_block = cuda_test_device_alloc((n_inp + 1) * sizeof(float)), *d_inp = d_inp_block + misalign;
        CUDA_CHECK(cudaMemcpy(d_inp, inp, n_inp * sizeof(float), cudaMemcpyHostToDevice));
        float *d_weight = cuda_test_device_copy(weight, n_w);
        float *d_dout = cuda_test_device_copy(dout, n_out), *d_bias = cuda_test_device_copy(bias, m.OC);
        float *d_out = m.accumulate ? cuda_test_device_copy(out, n_out) : cuda_test_device_poisoned(n_out);
        float *d_dinp = cuda_test_device_copy(dinp, n_inp), *d_dweight = cuda_test_device_copy(dweight, n_w);
        matmul_forward_cuda(d_out, d_inp, d_weight, m.use_bias ? d_bias : NULL, m.N, m.C, m.OC, m.accumulate,
                            stream);
        matmul_backward_cuda(d_dinp, d_dweight, NULL, d_dout, d_inp, d_weight, m.N, m.C, m.OC, stream);
        float *inp_r = bf16_rounded_copy(inp, n_inp), *weight_r = bf16_rounded_copy(weight, n_w);
        float *dout_r = bf16_rounded_copy(dout, n_out);
        matmul_forward(out, inp_r, weight_r, m.use_bias ? bias : NULL, m.N, m.C, m.OC, m.accumulate);
        matmul_backward(dinp, dweight, NULL, dout_r, inp_r, weight_r, m.N, m.C, m.OC);
        cuda_test_check_device_close("matmul_forward", shape, d_out, out, n_out, 1e-5);
        cuda_test_check_device_close("matmul_backward dinp", shape, d_dinp, dinp, n_inp, 1e-5);
        cuda_test_check_device_close("matmul_backward dweight", shape, d_dweight, dweight, n_w, 1e-5);
        free(inp); free(weight); free(dout); free(bias); free(out); free(dinp); free(dweight);
        free(inp_r); free(weight_r); free(dout_r);
        float *dev[] = {d_inp_block, d_weight, d_dout, d_bias, d_out, d_dinp, d_dweight};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) CUDA_CHECK(cudaFree(dev[i]));
    }
    /* N = 97: not a multiple of 8, so TF32 on the float32 operands */
    const int N = 97, C = 384, OC = 256;
    float *inp = cuda_test_host_normal(&rng, (size_t)N * C, 1.0f);
    float *weight = cuda_test_host_normal(&rng, (size_t)OC * C, 0.5f);
    float *exact = braid_calloc((size_t)N * OC, sizeof(float), "exact");
    float *rounded = braid_calloc((size_t)N * OC, sizeof(float), "rounded");
    float *inp_r = bf16_rounded_copy(inp, (size_t)N * C), *weight_r = bf16_rounded_copy(weight, (size_t)OC * C);
    matmul_forward(exact, inp, weight, NULL, N, C, OC, 0);
    matmul_forward(rounded, inp_r, weight_r, NULL, N, C, OC, 0);
    float *d_inp = cuda_test_device_copy(inp, (size_t)N * C), *d_weight = cuda_test_device_copy(weight, (size_t)OC * C);
    float *d_out = cuda_test_device_poisoned((size_t)N * OC);
    matmul_forward_cuda(d_out, d_inp, d_weight, NULL, N, C, OC, 0, stream);
    float *got = cuda_test_host_from_device(d_out, (size_t)N * OC);
    cuda_test_check_close("matmul_forward", "bf16 falls back to tf32 N=97 C=384 OC=256", got, exact,
                          (size_t)N * OC, 4e-3);
    CudaComparison c = cuda_test_compare(got, rounded, (size_t)N * OC);
    ck_assert_msg(c.worst_diff > 1e-4 * c.max_want, "N=97: the product is the bf16 one (|diff| %.3g of max %.4g), "
                  "so bf16 ran on a shape cuBLAS runs slowly in bf16", c.worst_diff, c.max_want);
    free(inp); free(weight); free(exact); free(rounded); free(inp_r); free(weight_r); free(got);
    CUDA_CHECK(cudaFree(d_inp)); CUDA_CHECK(cudaFree(d_weight)); CUDA_CHECK(cudaFree(d_out));
    ck_assert_int_eq(matmul_set_precision_cuda("fp32"), 0);
}
END_TEST

/* The bf16 conversions matmul.cu skips (ops_cuda.h): a weight read from the parameters'
 * bf16 mirror, an input held across products (and below, an input's offered bf16 copy,
 * and an output gradient held across a backward's two products).
 * Each must give what a fresh conversion
 * gives, and must stop once forgotten or released, when the values change under the same
 * pointers. The "parameter buffer" holds W1 and W2 at offsets that are multiples of 8 (read
 * from the mirror) and W3 three floats further (not 16-byte aligned there: converted on its
 * own); Y has X's size, so only the pointer tells the held input from another. */
static void check_bf16_products(const char *what, const float *d_x, const float *x, const float *d_params,
                                const float *params, size_t offset, int N, int C, int OC) {
    const size_t n_out = (size_t)N * OC;
    float *x_r = bf16_rounded_copy(x, (size_t)N * C), *w_r = bf16_rounded_copy(params + offset, (size_t)OC * C);
    float *want = braid_calloc(n_out, sizeof(float), "want");
    matmul_forward(want, x_r, w_r, NULL, N, C, OC, 0);
    float *d_out = cuda_test_device_poisoned(n_out);
    matmul_forward_cuda(d_out, d_x, d_params + offset, NULL, N, C, OC, 0, stream);
    cuda_test_check_device_close("matmul_forward", what, d_out, want, n_out, 1e-5);
    /* the backward's dweight reads the input's copy too */
    float *dout = cuda_test_host_normal(&rng, n_out, 1.0f), *dout_r = bf16_rounded_copy(dout, n_out);
    float *dw = braid_calloc((size_t)OC * C, sizeof(float), "dweight");
    matmul_backward(NULL, dw, NULL, dout_r, x_r, w_r, N, C, OC);
    float *d_dout = cuda_test_device_copy(dout, n_out), *d_dw = cuda_test_device_copy(dw, (size_t)OC * C);
    CUDA_CHECK(cudaMemset(d_dw, 0, (size_t)OC * C * sizeof(float)));
    matmul_backward_cuda(NULL, d_dw, NULL, d_dout, d_x, d_params + offset, N, C, OC, stream);
    cuda_test_check_device_close("matmul_backward dweight", what, d_dw, dw, (size_t)OC * C, 1e-5);
    free(x_r); free(w_r); free(want); free(dout); free(dout_r); free(dw);
    CUDA_CHECK(cudaFree(d_out)); CUDA_CHECK(cudaFree(d_dout)); CUDA_CHECK(cudaFree(d_dw));
}

/* The backward's two products issued apart, dinp (written) then dweight (accumulated, from
 * zero), in bf16 operands, against the CPU op on bf16-rounded operands; W at params[0..). */
static void check_bf16_split_backward(const char *what, const float *d_dout, const float *dout, const float *d_x,
                                      const float *x, const float *d_params, const float *params, int N, int C,
                                      int OC) {
    const size_t n_inp = (size_t)N * C, n_w = (size_t)OC * C;
    float *dout_r = bf16_rounded_copy(dout, (size_t)N * OC), *x_r = bf16_rounded_copy(x, n_inp);
    float *w_r = bf16_rounded_copy(params, n_w);
    float *dinp = braid_calloc(n_inp, sizeof(float), "dinp"), *dw = braid_calloc(n_w, sizeof(float), "dweight");
    matmul_backward(dinp, dw, NULL, dout_r, x_r, w_r, N, C, OC);
    float *d_dinp = cuda_test_device_poisoned(n_inp), *d_dw = cuda_test_device_poisoned(n_w);
    CUDA_CHECK(cudaMemset(d_dw, 0, n_w * sizeof(float)));
    matmul_backward_bf16_operands_write_dinp_cuda(d_dinp, NULL, d_dout, NULL, NULL, NULL, d_params, N, C, OC, stream);
    matmul_backward_bf16_operands_cuda(NULL, d_dw, d_dout, NULL, d_x, NULL, d_params, N, C, OC, stream);
    cuda_test_check_device_close("matmul_backward dinp alone", what, d_dinp, dinp, n_inp, 1e-5);
    cuda_test_check_device_close("matmul_backward dweight alone", what, d_dw, dw, n_w, 1e-5);
    free(dout_r); free(x_r); free(w_r); free(dinp); free(dw);
    CUDA_CHECK(cudaFree(d_dinp)); CUDA_CHECK(cudaFree(d_dw));
}

START_TEST(test_matmul_bf16_mirror_and_held_input_stay_fresh) {
    const int N = 128, C = 64, OC = 64;
    const size_t nw = (size_t)OC * C, offsets[3] = {0, nw, 2 * nw + 3}, n_params = 3 * nw + 3;
    const size_t nx = (size_t)N * C;
    ck_assert_int_eq(matmul_set_precision_cuda("bf16"), 0);
    float *params = cuda_test_host_normal(&rng, n_params, 0.5f);
    float *x = cuda_test_host_normal(&rng, nx, 1.0f), *y = cuda_test_host_normal(&rng, nx, 1.0f);
    float *d_params = cuda_test_device_copy(params, n_params);
    float *d_x = cuda_test_device_copy(x, nx), *d_y = cuda_test_device_copy(y, nx);

    matmul_mirror_weights_cuda(d_params, n_params, stream);
    matmul_hold_input_cuda(d_x, nx);
    check_bf16_products("mirrored W1, held X", d_x, x, d_params, params, offsets[0], N, C, OC);
    check_bf16_products("mirrored W2, another input Y", d_y, y, d_params, params, offsets[1], N, C, OC);
    check_bf16_products("W3 off the mirror's alignment, held X again", d_x, x, d_params, params, offsets[2], N, C,
                        OC);
    matmul_release_input_cuda();
    matmul_forget_weights_cuda();

    /* new values under the same pointers, as after an optimizer step and a new batch */
    for (size_t i = 0; i < n_params; i++) params[i] += 0.25f;
    for (size_t i = 0; i < nx; i++) x[i] -= 0.5f;
    CUDA_CHECK(cudaMemcpy(d_params, params, n_params * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_x, x, nx * sizeof(float), cudaMemcpyHostToDevice));
    check_bf16_products("W1 and X changed after forget and release", d_x, x, d_params, params, offsets[0], N, C,
                        OC);
    check_bf16_products("W2 changed after forget", d_x, x, d_params, params, offsets[1], N, C, OC);

    /* a bf16 copy offered for X (matmul_bf16_copy_cuda, as model.c offers the RMSNorms')
     * is what the products read, held or not, and X is converted again once it is
     * withdrawn. The copy is deliberately bf16(X + 1), to tell it from a conversion of X. */
    float *x_plus = braid_calloc(nx, sizeof(float), "X + 1");
    uint16_t *bits = braid_calloc(nx, sizeof(uint16_t), "bf16(X + 1)");
    for (size_t i = 0; i < nx; i++) {
        x_plus[i] = x[i] + 1.0f;
        const float r = round_to_bf16(x_plus[i]);
        uint32_t u;
        memcpy(&u, &r, sizeof u);
        bits[i] = (uint16_t)(u >> 16);
    }
    uint16_t *d_bits;
    CUDA_CHECK(cudaMalloc((void **)&d_bits, nx * sizeof(uint16_t)));
    CUDA_CHECK(cudaMemcpy(d_bits, bits, nx * sizeof(uint16_t), cudaMemcpyHostToDevice));
    matmul_bf16_copy_cuda(d_x, nx, d_bits);
    check_bf16_products("X's offered copy read", d_x, x_plus, d_params, params, offsets[0], N, C, OC);
    matmul_hold_input_cuda(d_x, nx);
    check_bf16_products("X's offered copy read while X is held", d_x, x_plus, d_params, params, offsets[0], N, C,
                        OC);
    matmul_release_input_cuda();
    check_bf16_products("Y beside X's offered copy", d_y, y, d_params, params, offsets[1], N, C, OC);
    matmul_bf16_copy_cuda(NULL, 0, NULL);
    check_bf16_products("X converted once its copy is withdrawn", d_x, x, d_params, params, offsets[0], N, C, OC);
    free(x_plus); free(bits);
    CUDA_CHECK(cudaFree(d_bits));

    /* an output gradient held (the dense FFN's dy, Mamba's dout: a backward with an op
     * between its dinp and dweight products) is read by both products from one copy, and
     * converted afresh once released and changed under the same pointer. Y is the dout
     * (N·OC floats: C = OC here), X the input. */
    ck_assert_msg(matmul_bf16_operands_cuda(N, C, OC), "N=%d C=%d OC=%d: not a bf16 operands shape", N, C, OC);
    matmul_hold_input_cuda(d_y, nx);
    check_bf16_split_backward("held dout Y", d_y, y, d_x, x, d_params, params, N, C, OC);
    matmul_release_input_cuda();
    for (size_t i = 0; i < nx; i++) y[i] = 0.75f * y[i] + 0.5f;
    CUDA_CHECK(cudaMemcpy(d_y, y, nx * sizeof(float), cudaMemcpyHostToDevice));
    check_bf16_split_backward("dout Y changed after release", d_y, y, d_x, x, d_params, params, N, C, OC);

    free(params); free(x); free(y);
    CUDA_CHECK(cudaFree(d_params)); CUDA_CHECK(cudaFree(d_x)); CUDA_CHECK(cudaFree(d_y));
    ck_assert_int_eq(matmul_set_precision_cuda("fp32"), 0);
}
END_TEST

/* ---------------------------------------------------------------- embedding */

typedef struct EmbeddingShape { int N, V, C; } EmbeddingShape;
/* V small against N, so tokens repeat and backward's adds collide */
static const EmbeddingShape embedding_shapes[] = {{1, 5, 7}, {7, 3, 64}, {129, 11, 300}, {300, 50, 1}};
#define N_EMBEDDING_SHAPES (sizeof embedding_shapes / sizeof embedding_shapes[0])

static int *random_tokens(int N, int V) {
    int *tokens = braid_malloc((size_t)N * sizeof(int), "tokens");
    for (int n = 0; n < N; n++) tokens[n] = (int)rng_below(&rng, (uint32_t)V);
    return tokens;
}

START_TEST(test_embedding_forward_matches_cpu) {
    for (size_t s = 0; s < N_EMBEDDING_SHAPES; s++) {
        const EmbeddingShape e = embedding_shapes[s];
        char shape[128];
        snprintf(shape, sizeof shape, "N=%d V=%d C=%d", e.N, e.V, e.C);
        const size_t n_out = (size_t)e.N * e.C;
        int *tokens = random_tokens(e.N, e.V);
        float *table = cuda_test_host_normal(&rng, (size_t)e.V * e.C, 1.0f);
        float *out = cuda_test_host_normal(&rng, n_out, 1.0f);
        int *d_tokens = device_copy_int(tokens, e.N);
        float *d_table = cuda_test_device_copy(table, (size_t)e.V * e.C);
        float *d_out = cuda_test_device_poisoned(n_out);
        embedding_forward(out, tokens, table, e.N, e.C);
        embedding_forward_cuda(d_out, d_tokens, d_table, e.N, e.C, stream);
        cuda_test_check_device_close("embedding_forward", shape, d_out, out, n_out, ELEMENTWISE_TOL);
        free(tokens); free(table); free(out);
        CUDA_CHECK(cudaFree(d_tokens)); CUDA_CHECK(cudaFree(d_table)); CUDA_CHECK(cudaFree(d_out));
    }
}
END_TEST

START_TEST(test_embedding_backward_accumulates_repeated_tokens) {
    for (size_t s = 0; s < N_EMBEDDING_SHAPES; s++) {
        const EmbeddingShape e = embedding_shapes[s];
        char shape[128];
        snprintf(shape, sizeof shape, "N=%d V=%d C=%d", e.N, e.V, e.C);
        const size_t n_table = (size_t)e.V * e.C;
        int *tokens = random_tokens(e.N, e.V);
        float *dout = cuda_test_host_normal(&rng, (size_t)e.N * e.C, 1.0f);
        float *dtable = cuda_test_host_normal(&rng, n_table, 1.0f);
        int *d_tokens = device_copy_int(tokens, e.N);
        float *d_dout = cuda_test_device_copy(dout, (size_t)e.N * e.C);
        float *d_dtable = cuda_test_device_copy(dtable, n_table);
        embedding_backward(dtable, dout, tokens, e.N, e.C);
        embedding_backward_cuda(d_dtable, d_dout, d_tokens, e.N, e.C, stream);
        cuda_test_check_device_close("embedding_backward dtable", shape, d_dtable, dtable, n_table,
                                     ELEMENTWISE_TOL);
        free(tokens); free(dout); free(dtable);
        CUDA_CHECK(cudaFree(d_tokens)); CUDA_CHECK(cudaFree(d_dout)); CUDA_CHECK(cudaFree(d_dtable));
    }
}
END_TEST

/* The backward adds rows with the same token in a fixed order (embedding.cu), so the
 * same bits every run: 6000 rows over 5 tokens, twice, into the same start values. */
START_TEST(test_embedding_backward_is_deterministic) {
    const int N = 6000, V = 5, C = 300;
    const size_t n_table = (size_t)V * C;
    int *tokens = random_tokens(N, V);
    float *dout = cuda_test_host_normal(&rng, (size_t)N * C, 1.0f), *start = cuda_test_host_normal(&rng, n_table, 1.0f);
    int *d_tokens = device_copy_int(tokens, N);
    float *d_dout = cuda_test_device_copy(dout, (size_t)N * C);
    float *got[2];
    for (int run = 0; run < 2; run++) {
        float *d_dtable = cuda_test_device_copy(start, n_table);
        embedding_backward_cuda(d_dtable, d_dout, d_tokens, N, C, stream);
        got[run] = cuda_test_host_from_device(d_dtable, n_table);
        CUDA_CHECK(cudaFree(d_dtable));
    }
    ck_assert_msg(!memcmp(got[0], got[1], n_table * sizeof(float)),
                  "embedding backward: two runs on the same input differ in their bits");
    embedding_backward(start, dout, tokens, N, C);   /* and the sums are right */
    cuda_test_check_close("embedding_backward dtable (5 tokens, 6000 rows)", "N=6000 V=5 C=300", got[0], start,
                          n_table, 1e-5);
    free(tokens); free(dout); free(start); free(got[0]); free(got[1]);
    CUDA_CHECK(cudaFree(d_tokens)); CUDA_CHECK(cudaFree(d_dout));
}
END_TEST

/* ---------------------------------------------------------------- rmsnorm */

/* rmsnorm.cu has row kernels (C % 4 == 0 up to 2048 floats, 16-byte aligned arrays: the
 * row in registers, float4 loads, dw from per-block partials) and general kernels (any
 * other shape). shift puts arrays one element off alignment: 1 every row array (x, y, the
 * bf16 copy, dy, dx), 2 the weight only, 3 one output only (y in the float32-only forward,
 * the bf16 copy in the other, dx in the backward); each alone must send the call to the
 * general kernels. */
typedef struct RowsShape { int N, C, shift; } RowsShape;
static const RowsShape rmsnorm_shapes[] = {
    /* general kernels: C % 4 ≠ 0, past the row kernels' 2048, arrays off alignment */
    {1, 7, 0}, {300, 33, 0}, {64, 1, 0}, {40, 770, 0}, {9, 2052, 0},
    {33, 256, 1}, {257, 768, 1}, {31, 768, 2}, {45, 768, 3}, {19, 48, 1},
    /* row kernels with several rows a warp: C = 4 (a lane a row), 16 (4 lanes: Mamba's
     * state norm), 48 (16 lanes, 12 of them busy: Mamba's dt norm), 64 (16) */
    {97, 4, 0}, {257, 16, 0}, {333, 48, 0}, {7, 64, 0},
    /* a warp a row: C = 100 (25 float4, lanes idle), 300 (3 float4 a lane, the last
     * ragged), 256, 768 (jamba-small's d_model; N = 5003: one block per slot, slices of
     * 19 rows, the last of 6), 1024, 1500 (12 a lane, ragged), 2048 (16: the largest).
     * 1999 rows: the backward's slices of 16 rows, the last one shorter */
    {1999, 100, 0}, {129, 300, 0}, {200, 256, 0}, {1, 768, 0}, {1031, 768, 0}, {5003, 768, 0},
    {130, 1024, 0}, {50, 1500, 0}, {65, 2048, 0},
};
#define N_RMSNORM_SHAPES (sizeof rmsnorm_shapes / sizeof rmsnorm_shapes[0])

/* n device floats `shift` floats past a cudaMalloc'd (256-byte aligned) start, a copy of
 * x or (x NULL) poisoned; *base is what to cudaFree */
static float *rmsnorm_device_floats(const float *x, size_t n, int shift, float **base) {
    *base = cuda_test_device_poisoned(n + 1);
    if (x) CUDA_CHECK(cudaMemcpy(*base + shift, x, n * sizeof(float), cudaMemcpyHostToDevice));
    return *base + shift;
}

/* The bf16 copy against the float32 output it copies: every value exactly bf16_rn of the
 * CUDA y (what matmul.cu's own conversion of y would give), and within bf16's rounding of
 * the CPU's y (a copy of the wrong values, or one never written (NaN), fails both). */
static void check_rmsnorm_bf16_copy(const char *shape, const uint16_t *d_out16, const float *got_out,
                                    const float *want_out, size_t n) {
    uint16_t *bits = braid_calloc(n, sizeof(uint16_t), "bf16 copy");
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(bits, d_out16, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    float *copy = braid_calloc(n, sizeof(float), "bf16 copy as float"), *want = braid_calloc(n, sizeof(float), "bf16(y)");
    size_t first_off = n;
    for (size_t i = 0; i < n; i++) {
        const uint32_t u = (uint32_t)bits[i] << 16;
        memcpy(&copy[i], &u, sizeof u);
        want[i] = round_to_bf16(want_out[i]);
        const float exact = round_to_bf16(got_out[i]);
        if (first_off == n && memcmp(&copy[i], &exact, sizeof exact)) first_off = i;
    }
    ck_assert_msg(first_off == n, "rmsnorm bf16 copy %s: element %zu is %.9g, bf16_rn of the float32 output %.9g is %.9g",
                  shape, first_off, first_off < n ? copy[first_off] : 0.0f, first_off < n ? got_out[first_off] : 0.0f,
                  first_off < n ? round_to_bf16(got_out[first_off]) : 0.0f);
    cuda_test_check_close("rmsnorm_forward bf16 copy", shape, copy, want, n, 1e-2);
    free(bits); free(copy); free(want);
}

/* Both forward entries (float32 only, and with the bf16 copy), every output poisoned */
START_TEST(test_rmsnorm_forward_matches_cpu) {
    for (size_t s = 0; s < N_RMSNORM_SHAPES; s++) {
        const RowsShape r = rmsnorm_shapes[s];
        const int row_shift = r.shift == 1, weight_shift = r.shift == 2;
        const size_t n = (size_t)r.N * r.C;
        float *inp = cuda_test_host_normal(&rng, n, 2.0f), *weight = cuda_test_host_normal(&rng, r.C, 1.0f);
        float *out = cuda_test_host_normal(&rng, n, 1.0f), *rstd = cuda_test_host_normal(&rng, r.N, 1.0f);
        float *base[4];
        float *d_inp = rmsnorm_device_floats(inp, n, row_shift, &base[0]);
        float *d_weight = rmsnorm_device_floats(weight, r.C, weight_shift, &base[1]);
        rmsnorm_forward(out, rstd, inp, weight, r.N, r.C, 1e-6f);
        for (int copy = 0; copy <= 1; copy++) {
            char shape[128];
            snprintf(shape, sizeof shape, "N=%d C=%d shift=%d%s", r.N, r.C, r.shift, copy ? " bf16 copy" : "");
            const int out_shift = row_shift || (r.shift == 3 && !copy), out16_shift = row_shift || (r.shift == 3 && copy);
            float *d_out = rmsnorm_device_floats(NULL, n, out_shift, &base[2]);
            float *d_rstd = rmsnorm_device_floats(NULL, r.N, 0, &base[3]);
            uint16_t *base16 = cuda_test_device_alloc((n + 1) * sizeof(uint16_t)), *d_out16 = base16 + out16_shift;
            CUDA_CHECK(cudaMemset(base16, 0xFF, (n + 1) * sizeof(uint16_t)));
            if (copy) rmsnorm_forward_bf16_copy_cuda(d_out, d_out16, d_rstd, d_inp, d_weight, r.N, r.C, 1e-6f, stream);
            else rmsnorm_forward_cuda(d_out, d_rstd, d_inp, d_weight, r.N, r.C, 1e-6f, stream);
            float *got = cuda_test_host_from_device(d_out, n);
            cuda_test_check_close("rmsnorm_forward out", shape, got, out, n, ELEMENTWISE_TOL);
            cuda_test_check_device_close("rmsnorm_forward rstd", shape, d_rstd, rstd, r.N, ELEMENTWISE_TOL);
            if (copy) check_rmsnorm_bf16_copy(shape, d_out16, got, out, n);
            free(got);
            CUDA_CHECK(cudaFree(base[2])); CUDA_CHECK(cudaFree(base[3])); CUDA_CHECK(cudaFree(base16));
        }
        free(inp); free(weight); free(out); free(rstd);
        CUDA_CHECK(cudaFree(base[0])); CUDA_CHECK(cudaFree(base[1]));
    }
}
END_TEST

/* The residual stream's forward (rmsnorm_residual_forward_cuda): x ← x + residual, written
 * back bit for bit as the CPU's float sum, then the norm of the sum, with and without the
 * bf16 copy; every output poisoned. shift 3 here puts the residual alone off alignment. */
START_TEST(test_rmsnorm_residual_forward_matches_cpu) {
    for (size_t s = 0; s < N_RMSNORM_SHAPES; s++) {
        const RowsShape r = rmsnorm_shapes[s];
        const int row_shift = r.shift == 1, weight_shift = r.shift == 2, res_shift = r.shift == 1 || r.shift == 3;
        const size_t n = (size_t)r.N * r.C;
        float *inp = cuda_test_host_normal(&rng, n, 2.0f), *res = cuda_test_host_normal(&rng, n, 1.0f);
        float *weight = cuda_test_host_normal(&rng, r.C, 1.0f);
        float *sum = braid_malloc(n * sizeof(float), "sum"), *out = braid_malloc(n * sizeof(float), "out");
        float *rstd = braid_malloc(r.N * sizeof(float), "rstd");
        for (size_t i = 0; i < n; i++) sum[i] = inp[i] + res[i];
        rmsnorm_forward(out, rstd, sum, weight, r.N, r.C, 1e-6f);
        float *base[6];
        float *d_res = rmsnorm_device_floats(res, n, res_shift, &base[0]);
        float *d_weight = rmsnorm_device_floats(weight, r.C, weight_shift, &base[1]);
        for (int copy = 0; copy <= 1; copy++) {
            char shape[128];
            snprintf(shape, sizeof shape, "N=%d C=%d shift=%d%s", r.N, r.C, r.shift, copy ? " bf16 copy" : "");
            float *d_x = rmsnorm_device_floats(inp, n, row_shift, &base[2]);
            float *d_out = rmsnorm_device_floats(NULL, n, row_shift, &base[3]);
            float *d_rstd = rmsnorm_device_floats(NULL, r.N, 0, &base[4]);
            uint16_t *base16 = cuda_test_device_alloc((n + 1) * sizeof(uint16_t)), *d_out16 = base16 + row_shift;
            CUDA_CHECK(cudaMemset(base16, 0xFF, (n + 1) * sizeof(uint16_t)));
            rmsnorm_residual_forward_cuda(d_out, copy ? d_out16 : NULL, d_rstd, d_x, d_res, d_weight, r.N, r.C, 1e-6f,
                                          stream);
            float *got_sum = cuda_test_host_from_device(d_x, n), *got = cuda_test_host_from_device(d_out, n);
            size_t first_off = n;
            for (size_t i = 0; i < n && first_off == n; i++)
                if (memcmp(&got_sum[i], &sum[i], sizeof(float))) first_off = i;
            ck_assert_msg(first_off == n, "rmsnorm residual forward %s: x[%zu] is %.9g after the add, x + residual is %.9g",
                          shape, first_off, first_off < n ? got_sum[first_off] : 0.0f,
                          first_off < n ? sum[first_off] : 0.0f);
            cuda_test_check_close("rmsnorm_residual_forward out", shape, got, out, n, ELEMENTWISE_TOL);
            cuda_test_check_device_close("rmsnorm_residual_forward rstd", shape, d_rstd, rstd, r.N, ELEMENTWISE_TOL);
            if (copy) check_rmsnorm_bf16_copy(shape, d_out16, got, out, n);
            free(got_sum); free(got);
            for (int b = 2; b < 5; b++) CUDA_CHECK(cudaFree(base[b]));
            CUDA_CHECK(cudaFree(base16));
        }
        free(inp); free(res); free(weight); free(sum); free(out); free(rstd);
        CUDA_CHECK(cudaFree(base[0])); CUDA_CHECK(cudaFree(base[1]));
    }
}
END_TEST

/* The backward's entries against the CPU's rmsnorm_backward on every shape; dweight
 * accumulates onto random values in each. The variants:
 *   RMSNORM_BWD_ACCUMULATE  rmsnorm_backward_cuda: dinp starts random and is added into
 *   RMSNORM_BWD_ONTO        rmsnorm_backward_onto_cuda: dinp (poisoned) WRITTEN as dbase +
 *                           the gradient
 *   RMSNORM_BWD_FROM_ZERO   the same with dbase NULL
 *   RMSNORM_BWD_ONTO_COPY   ONTO with dinp's bf16 copy, bit for bit bf16_rn of the CUDA dinp
 * shift 3 puts dinp (and its copy) alone off alignment. */
enum { RMSNORM_BWD_ACCUMULATE, RMSNORM_BWD_ONTO, RMSNORM_BWD_FROM_ZERO, RMSNORM_BWD_ONTO_COPY };

static void check_rmsnorm_backward_every_shape(const int *variants, int n_variants) {
    static const char *names[] = {"", " onto a base", " from zero", " onto a base, bf16 copy"};
    for (size_t s = 0; s < N_RMSNORM_SHAPES; s++) {
        const RowsShape r = rmsnorm_shapes[s];
        const int row_shift = r.shift == 1, weight_shift = r.shift == 2, out_shift = r.shift == 1 || r.shift == 3;
        const size_t n = (size_t)r.N * r.C;
        float *inp = cuda_test_host_normal(&rng, n, 2.0f), *weight = cuda_test_host_normal(&rng, r.C, 1.0f);
        float *dout = cuda_test_host_normal(&rng, n, 1.0f), *dbase = cuda_test_host_normal(&rng, n, 1.0f);
        float *out = braid_malloc(n * sizeof(float), "out"), *rstd = braid_malloc(r.N * sizeof(float), "rstd");
        rmsnorm_forward(out, rstd, inp, weight, r.N, r.C, 1e-6f);
        float *dweight0 = cuda_test_host_normal(&rng, r.C, 1.0f);
        float *base[5];
        float *d_inp = rmsnorm_device_floats(inp, n, row_shift, &base[0]);
        float *d_weight = rmsnorm_device_floats(weight, r.C, weight_shift, &base[1]);
        float *d_dout = rmsnorm_device_floats(dout, n, row_shift, &base[2]);
        float *d_rstd = rmsnorm_device_floats(rstd, r.N, 0, &base[3]);
        float *d_dbase = rmsnorm_device_floats(dbase, n, row_shift, &base[4]);
        for (int v = 0; v < n_variants; v++) {
            const int variant = variants[v], from_zero = variant == RMSNORM_BWD_FROM_ZERO;
            const int copy = variant == RMSNORM_BWD_ONTO_COPY;
            char shape[128];
            snprintf(shape, sizeof shape, "N=%d C=%d shift=%d%s", r.N, r.C, r.shift, names[variant]);
            float *dinp = braid_calloc(n, sizeof(float), "dinp");
            if (!from_zero) memcpy(dinp, dbase, n * sizeof(float));
            float *dweight = braid_malloc(r.C * sizeof(float), "dweight");
            memcpy(dweight, dweight0, r.C * sizeof(float));
            rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, r.N, r.C);
            float *dinp_base, *dweight_base;
            float *d_dinp = rmsnorm_device_floats(variant == RMSNORM_BWD_ACCUMULATE ? dbase : NULL, n, out_shift,
                                                  &dinp_base);
            float *d_dweight = rmsnorm_device_floats(dweight0, r.C, 0, &dweight_base);
            uint16_t *base16 = cuda_test_device_alloc((n + 1) * sizeof(uint16_t)), *d_dinp16 = base16 + out_shift;
            CUDA_CHECK(cudaMemset(base16, 0xFF, (n + 1) * sizeof(uint16_t)));
            if (variant == RMSNORM_BWD_ACCUMULATE)
                rmsnorm_backward_cuda(d_dinp, d_dweight, d_dout, d_inp, d_weight, d_rstd, r.N, r.C, stream);
            else
                rmsnorm_backward_onto_cuda(d_dinp, from_zero ? NULL : d_dbase, copy ? d_dinp16 : NULL, d_dweight,
                                           d_dout, d_inp, d_weight, d_rstd, r.N, r.C, stream);
            cuda_test_check_device_close("rmsnorm_backward dinp", shape, d_dinp, dinp, n, ELEMENTWISE_TOL);
            if (copy) {
                float *got = cuda_test_host_from_device(d_dinp, n);
                check_rmsnorm_bf16_copy(shape, d_dinp16, got, dinp, n);
                free(got);
            }
            CUDA_CHECK(cudaFree(base16));
            cuda_test_check_device_close("rmsnorm_backward dweight", shape, d_dweight, dweight, r.C,
                                         ELEMENTWISE_TOL);
            free(dinp); free(dweight);
            CUDA_CHECK(cudaFree(dinp_base)); CUDA_CHECK(cudaFree(dweight_base));
        }
        free(inp); free(weight); free(dout); free(dbase); free(out); free(rstd); free(dweight0);
        for (int b = 0; b < 5; b++) CUDA_CHECK(cudaFree(base[b]));
    }
}

START_TEST(test_rmsnorm_backward_accumulates_like_cpu) {
    const int variants[] = {RMSNORM_BWD_ACCUMULATE};
    check_rmsnorm_backward_every_shape(variants, 1);
}
END_TEST

START_TEST(test_rmsnorm_backward_onto_matches_cpu) {
    const int variants[] = {RMSNORM_BWD_ONTO, RMSNORM_BWD_FROM_ZERO, RMSNORM_BWD_ONTO_COPY};
    check_rmsnorm_backward_every_shape(variants, 3);
}
END_TEST

/* Same bits on every run (the dw partials are added in a fixed order, no atomics), and
 * dinp or dweight alone (NULL for the other) the same bits as both together: jamba-small's
 * width over enough rows for one block per slot of the GPU. */
START_TEST(test_rmsnorm_backward_is_deterministic) {
    const int N = 5003, C = 768;
    const size_t n = (size_t)N * C;
    float *inp = cuda_test_host_normal(&rng, n, 2.0f), *weight = cuda_test_host_normal(&rng, C, 1.0f);
    float *dout = cuda_test_host_normal(&rng, n, 1.0f);
    float *out = braid_malloc(n * sizeof(float), "out"), *rstd = braid_malloc(N * sizeof(float), "rstd");
    rmsnorm_forward(out, rstd, inp, weight, N, C, 1e-6f);
    float *dinp0 = cuda_test_host_normal(&rng, n, 1.0f), *dweight0 = cuda_test_host_normal(&rng, C, 1.0f);
    float *d_inp = cuda_test_device_copy(inp, n), *d_weight = cuda_test_device_copy(weight, C);
    float *d_dout = cuda_test_device_copy(dout, n), *d_rstd = cuda_test_device_copy(rstd, N);
    /* runs 0 and 1 both outputs, 2 dinp only, 3 dweight only */
    float *dinp[4] = {NULL}, *dweight[4] = {NULL};
    for (int run = 0; run < 4; run++) {
        float *d_dinp = cuda_test_device_copy(dinp0, n), *d_dweight = cuda_test_device_copy(dweight0, C);
        rmsnorm_backward_cuda(run == 3 ? NULL : d_dinp, run == 2 ? NULL : d_dweight, d_dout, d_inp, d_weight, d_rstd,
                              N, C, stream);
        dinp[run] = cuda_test_host_from_device(d_dinp, n);
        dweight[run] = cuda_test_host_from_device(d_dweight, C);
        CUDA_CHECK(cudaFree(d_dinp)); CUDA_CHECK(cudaFree(d_dweight));
    }
    ck_assert_msg(!memcmp(dweight[0], dweight[1], C * sizeof(float)), "rmsnorm backward: two runs' dweight differ in their bits");
    ck_assert_msg(!memcmp(dinp[0], dinp[1], n * sizeof(float)), "rmsnorm backward: two runs' dinp differ in their bits");
    ck_assert_msg(!memcmp(dinp[0], dinp[2], n * sizeof(float)), "rmsnorm backward: dinp differs without dweight");
    ck_assert_msg(!memcmp(dweight[0], dweight[3], C * sizeof(float)), "rmsnorm backward: dweight differs without dinp");
    ck_assert_msg(!memcmp(dinp0, dinp[3], n * sizeof(float)), "rmsnorm backward: dinp NULL, yet dinp changed");
    ck_assert_msg(!memcmp(dweight0, dweight[2], C * sizeof(float)), "rmsnorm backward: dweight NULL, yet dweight changed");
    for (int run = 0; run < 4; run++) { free(dinp[run]); free(dweight[run]); }
    free(inp); free(weight); free(dout); free(out); free(rstd); free(dinp0); free(dweight0);
    CUDA_CHECK(cudaFree(d_inp)); CUDA_CHECK(cudaFree(d_weight)); CUDA_CHECK(cudaFree(d_dout));
    CUDA_CHECK(cudaFree(d_rstd));
}
END_TEST

/* ---------------------------------------------------------------- swiglu */

static const size_t swiglu_sizes[] = {1, 7, 1000, 129 * 300};
#define N_SWIGLU_SIZES (sizeof swiglu_sizes / sizeof swiglu_sizes[0])

START_TEST(test_swiglu_forward_matches_cpu) {
    for (size_t s = 0; s < N_SWIGLU_SIZES; s++) {
        const size_t n = swiglu_sizes[s];
        char shape[64];
        snprintf(shape, sizeof shape, "n=%zu", n);
        float *gate = cuda_test_host_normal(&rng, n, 3.0f), *up = cuda_test_host_normal(&rng, n, 1.0f);
        float *out = cuda_test_host_normal(&rng, n, 1.0f);
        float *d_gate = cuda_test_device_copy(gate, n), *d_up = cuda_test_device_copy(up, n);
        float *d_out = cuda_test_device_poisoned(n);
        swiglu_forward(out, gate, up, n);
        swiglu_forward_cuda(d_out, d_gate, d_up, n, stream);
        cuda_test_check_device_close("swiglu_forward", shape, d_out, out, n, ELEMENTWISE_TOL);
        free(gate); free(up); free(out);
        CUDA_CHECK(cudaFree(d_gate)); CUDA_CHECK(cudaFree(d_up)); CUDA_CHECK(cudaFree(d_out));
    }
}
END_TEST

/* The residual add of the model's CUDA step (elementwise.cu): every element of y must
 * change (a skipped one keeps its old value, not y + x), so y starts from its own random
 * values rather than poison. */
START_TEST(test_add_inplace_matches_cpu) {
    for (size_t s = 0; s < N_SWIGLU_SIZES; s++) {
        const size_t n = swiglu_sizes[s];
        char shape[64];
        snprintf(shape, sizeof shape, "n=%zu", n);
        float *y = cuda_test_host_normal(&rng, n, 1.0f), *x = cuda_test_host_normal(&rng, n, 1.0f);
        float *d_y = cuda_test_device_copy(y, n), *d_x = cuda_test_device_copy(x, n);
        for (size_t i = 0; i < n; i++) y[i] += x[i];
        add_inplace_cuda(d_y, d_x, n, stream);
        cuda_test_check_device_close("add_inplace", shape, d_y, y, n, ELEMENTWISE_TOL);
        free(y); free(x);
        CUDA_CHECK(cudaFree(d_y)); CUDA_CHECK(cudaFree(d_x));
    }
}
END_TEST

/* What the SwiGLU backward writes with dgate and dup as rows ld = 2H apart, dup = dgate + H
 * (the FFNs' one [rows, 2H] gradient array, layers/ffn_dense.c), made without the kernel under
 * test: the flat [rows, H] dgate and dup (elements of es bytes, from element `shift` on)
 * copied into want's rows as [dgate | dup] (2H elements a row, from element `shift` on). */
/* The three SwiGLU inputs (gate, up, dout) of n random non-zero values on the host (in) and on
 * the device (d_in, `shift` floats past the aligned d_in_base: 1 makes every float4 path
 * unusable); the caller frees both. */
static void swiglu_inputs_on_device(float *in[3], float *d_in_base[3], float *d_in[3], size_t n, size_t shift) {
    for (int a = 0; a < 3; a++) {
        in[a] = cuda_test_host_normal_nonzero(&rng, n, a == 0 ? 3.0f : 1.0f);
        d_in_base[a] = cuda_test_device_alloc((n + 1) * sizeof(float));
        d_in[a] = d_in_base[a] + shift;
        CUDA_CHECK(cudaMemcpy(d_in[a], in[a], n * sizeof(float), cudaMemcpyHostToDevice));
    }
}

/* want's rows ld apart = [dgate | … | dup at column up_col], from the flat outputs (the rest of
 * want left as it is) */
static void interleave_rows(void *want, const void *dgate, const void *dup, size_t rows, size_t H, size_t ld,
                            size_t up_col, size_t es, size_t shift) {
    char *at = (char *)want + shift * es;
    cuda_test_copy_rows_strided(at, ld, (const char *)dgate + shift * es, rows, H, es);
    cuda_test_copy_rows_strided(at + up_col * es, ld, (const char *)dup + shift * es, rows, H, es);
}

/* The SwiGLU backward with its gradients as rows ld apart (ld = 2H, dup = dgate + H: the layers'
 * [dg | du] rows) writes in every element of both halves the bits of the flat call (ld = H),
 * and nothing past the array or between the halves (its outputs start poisoned, a guard of
 * poison after them): swiglu_backward_cuda, swiglu_backward_bf16_cuda, and
 * swiglu_backward_and_forward_bf16_cuda (whose h stays flat: the bits of
 * swiglu_forward_bf16_cuda). The float4 path: H = 8, 64 and, in float32, 12 and 100 (in bf16
 * those two put dup = dgate + H off 16-byte alignment: scalar). The scalar path: H = 6 with
 * n = 36, H = 5, H = 16 with every array one element off, and H = 6 in rows of 16 with dup at
 * column 8: n = 24 a multiple of 4 and every array and row 16-byte aligned, so only the rule
 * that a piece of 4 must not straddle a row (H % 4) keeps it scalar. Ragged row counts. */
START_TEST(test_swiglu_backward_rows_apart_match_flat) {
    /* ld, up_col 0: the layers' layout, 2H and H */
    const struct { size_t rows, H, ld, up_col; int shift; } cases[] = {
        {1, 8, 0, 0, 0},    {6, 6, 0, 0, 0},   {7, 5, 0, 0, 0},   {129, 64, 0, 0, 0},
        {300, 12, 0, 0, 0}, {33, 100, 0, 0, 0}, {50, 16, 0, 0, 1}, {4, 6, 16, 8, 0}};
    const size_t guard = 8;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const size_t rows = cases[c].rows, H = cases[c].H, n = rows * H, shift = (size_t)cases[c].shift;
        const size_t ld_z = cases[c].ld ? cases[c].ld : 2 * H, up_col = cases[c].up_col ? cases[c].up_col : H;
        const int row = (int)H, ld = (int)ld_z;
        char shape[80];
        snprintf(shape, sizeof shape, "rows=%zu H=%zu ld=%zu dup at column %zu%s", rows, H, ld_z, up_col,
                 shift ? ", arrays 1 element off" : "");
        float *in[3], *d_in_base[3], *d_in[3];   /* gate, up, dout */
        swiglu_inputs_on_device(in, d_in_base, d_in, n, (size_t)shift);
        const float *gate = d_in[0], *up = d_in[1], *dout = d_in[2];
        for (int bf16 = 0; bf16 < 2; bf16++) {
            const size_t es = bf16 ? sizeof(uint16_t) : sizeof(float);
            const size_t flat_bytes = (shift + n + guard) * es, rows_bytes = (shift + rows * ld_z + guard) * es;
            void *flat[2];   /* dgate, dup as the flat call writes them */
            void *want = cuda_test_device_poisoned_bytes(rows_bytes);
            void *got = cuda_test_device_poisoned_bytes(rows_bytes);
            for (int o = 0; o < 2; o++) flat[o] = cuda_test_device_poisoned_bytes(flat_bytes);
            char what[80];
            snprintf(what, sizeof what, "swiglu_backward%s rows apart", bf16 ? "_bf16" : "");
            if (bf16) {
                uint16_t *g16 = (uint16_t *)got + shift;
                swiglu_backward_bf16_cuda((uint16_t *)flat[0] + shift, (uint16_t *)flat[1] + shift, dout, gate, up, n,
                                          row, row, stream);
                swiglu_backward_bf16_cuda(g16, g16 + up_col, dout, gate, up, n, row, ld, stream);
            } else {
                float *g32 = (float *)got + shift;
                swiglu_backward_cuda((float *)flat[0] + shift, (float *)flat[1] + shift, dout, gate, up, n, row, row,
                                     stream);
                swiglu_backward_cuda(g32, g32 + up_col, dout, gate, up, n, row, ld, stream);
            }
            interleave_rows(want, flat[0], flat[1], rows, H, ld_z, up_col, es, shift);
            cuda_test_check_same_bits(what, shape, got, want, rows_bytes);
            if (bf16) {   /* the fused kernel: its gradients rows apart, h flat */
                const size_t h_bytes = (shift + n + guard) * sizeof(uint16_t);
                uint16_t *h_want = cuda_test_device_poisoned_bytes(h_bytes);
                uint16_t *h_got = cuda_test_device_poisoned_bytes(h_bytes);
                uint16_t *fused = cuda_test_device_poisoned_bytes(rows_bytes), *f16 = fused + shift;
                swiglu_forward_bf16_cuda(h_want + shift, gate, up, n, stream);
                swiglu_backward_and_forward_bf16_cuda(h_got + shift, f16, f16 + up_col, dout, gate, up, n, row, ld,
                                                      stream);
                cuda_test_check_same_bits("swiglu_backward_and_forward_bf16 rows apart", shape, fused, want,
                                          rows_bytes);
                cuda_test_check_same_bits("swiglu_backward_and_forward_bf16 h", shape, h_got, h_want, h_bytes);
                CUDA_CHECK(cudaFree(h_want)); CUDA_CHECK(cudaFree(h_got)); CUDA_CHECK(cudaFree(fused));
            }
            for (int o = 0; o < 2; o++) CUDA_CHECK(cudaFree(flat[o]));
            CUDA_CHECK(cudaFree(want)); CUDA_CHECK(cudaFree(got));
        }
        for (int a = 0; a < 3; a++) {
            free(in[a]);
            CUDA_CHECK(cudaFree(d_in_base[a]));
        }
    }
}
END_TEST

/* The elementwise kernels take float4 pieces only where n is a multiple of 4 AND every
 * array is 16-byte aligned (grid.cuh, aligned16): arrays one float past an aligned start,
 * with n = 1000, must take the scalar path and still match (a float4 access there would be
 * a misaligned-address error). */
START_TEST(test_elementwise_on_unaligned_arrays_matches_cpu) {
    const size_t n = 1000;
    float *gate = cuda_test_host_normal(&rng, n, 3.0f), *up = cuda_test_host_normal(&rng, n, 1.0f);
    float *out = cuda_test_host_normal(&rng, n, 1.0f);
    float *d_gate = cuda_test_device_poisoned(n + 1), *d_up = cuda_test_device_poisoned(n + 1);
    float *d_out = cuda_test_device_poisoned(n + 1);
    CUDA_CHECK(cudaMemcpy(d_gate + 1, gate, n * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_up + 1, up, n * sizeof(float), cudaMemcpyHostToDevice));
    swiglu_forward(out, gate, up, n);
    swiglu_forward_cuda(d_out + 1, d_gate + 1, d_up + 1, n, stream);
    cuda_test_check_device_close("swiglu_forward", "n=1000, arrays 4 bytes past alignment", d_out + 1, out, n,
                                 ELEMENTWISE_TOL);
    for (size_t i = 0; i < n; i++) out[i] = gate[i] + up[i];
    add_inplace_cuda(d_gate + 1, d_up + 1, n, stream);
    cuda_test_check_device_close("add_inplace", "n=1000, arrays 4 bytes past alignment", d_gate + 1, out, n,
                                 ELEMENTWISE_TOL);
    free(gate); free(up); free(out);
    CUDA_CHECK(cudaFree(d_gate)); CUDA_CHECK(cudaFree(d_up)); CUDA_CHECK(cudaFree(d_out));
}
END_TEST

START_TEST(test_swiglu_backward_matches_cpu) {
    for (size_t s = 0; s < N_SWIGLU_SIZES; s++) {
        const size_t n = swiglu_sizes[s];
        char shape[64];
        snprintf(shape, sizeof shape, "n=%zu", n);
        float *gate = cuda_test_host_normal(&rng, n, 3.0f), *up = cuda_test_host_normal(&rng, n, 1.0f);
        float *dout = cuda_test_host_normal(&rng, n, 1.0f);
        float *dgate = cuda_test_host_normal(&rng, n, 1.0f), *dup = cuda_test_host_normal(&rng, n, 1.0f);
        float *d_gate = cuda_test_device_copy(gate, n), *d_up = cuda_test_device_copy(up, n);
        float *d_dout = cuda_test_device_copy(dout, n);
        /* swiglu_backward WRITES its gradients (layer-owned intermediates): poison them */
        float *d_dgate = cuda_test_device_poisoned(n), *d_dup = cuda_test_device_poisoned(n);
        swiglu_backward(dgate, dup, dout, gate, up, n);
        swiglu_backward_cuda(d_dgate, d_dup, d_dout, d_gate, d_up, n, (int)n, (int)n, stream);   /* one row: flat */
        cuda_test_check_device_close("swiglu_backward dgate", shape, d_dgate, dgate, n, ELEMENTWISE_TOL);
        cuda_test_check_device_close("swiglu_backward dup", shape, d_dup, dup, n, ELEMENTWISE_TOL);
        free(gate); free(up); free(dout); free(dgate); free(dup);
        CUDA_CHECK(cudaFree(d_gate)); CUDA_CHECK(cudaFree(d_up)); CUDA_CHECK(cudaFree(d_dout));
        CUDA_CHECK(cudaFree(d_dgate)); CUDA_CHECK(cudaFree(d_dup));
    }
}
END_TEST

/* swiglu_backward_and_forward_bf16_cuda writes the bits that swiglu_forward_bf16_cuda (h)
 * and swiglu_backward_bf16_cuda (dgate, dup) write for the same inputs: the dense FFN's
 * bf16 backward swapped the two for the one (layers/ffn_dense.c), and its products must not
 * change. Every input is pushed away from 0 (a zero dout makes both gradients 0 whatever
 * the kernel computes); the outputs start poisoned, a guard of poison after them. The
 * float4 path (n a multiple of 4, arrays aligned) and the scalar one (n ragged, or every
 * array one element past its alignment). */
START_TEST(test_swiglu_backward_and_forward_bf16_matches_separate_kernels) {
    const struct { size_t n; int shift; } cases[] = {{1, 0}, {7, 0}, {1000, 0}, {129 * 300, 0}, {1000, 1}, {7, 1}};
    const size_t guard = 8;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const size_t n = cases[c].n;
        const int shift = cases[c].shift;
        char shape[64];
        snprintf(shape, sizeof shape, "n=%zu%s", n, shift ? ", arrays 1 element off" : "");
        float *in[3], *d_in_base[3], *d_in[3];   /* gate, up, dout */
        swiglu_inputs_on_device(in, d_in_base, d_in, n, (size_t)shift);
        const size_t bytes = (shift + n + guard) * sizeof(uint16_t);
        uint16_t *want[3], *got[3];   /* h, dgate, dup */
        for (int o = 0; o < 3; o++) {
            want[o] = cuda_test_device_poisoned_bytes(bytes);
            got[o] = cuda_test_device_poisoned_bytes(bytes);
        }
        swiglu_forward_bf16_cuda(want[0] + shift, d_in[0], d_in[1], n, stream);
        swiglu_backward_bf16_cuda(want[1] + shift, want[2] + shift, d_in[2], d_in[0], d_in[1], n, (int)n, (int)n,
                                  stream);
        swiglu_backward_and_forward_bf16_cuda(got[0] + shift, got[1] + shift, got[2] + shift, d_in[2], d_in[0],
                                              d_in[1], n, (int)n, (int)n, stream);
        cuda_test_check_same_bits("swiglu_backward_and_forward_bf16 h", shape, got[0], want[0], bytes);
        cuda_test_check_same_bits("swiglu_backward_and_forward_bf16 dgate", shape, got[1], want[1], bytes);
        cuda_test_check_same_bits("swiglu_backward_and_forward_bf16 dup", shape, got[2], want[2], bytes);
        for (int a = 0; a < 3; a++) {
            free(in[a]);
            CUDA_CHECK(cudaFree(d_in_base[a]));
        }
        for (int o = 0; o < 3; o++) {
            CUDA_CHECK(cudaFree(want[o]));
            CUDA_CHECK(cudaFree(got[o]));
        }
    }
}
END_TEST

/* ---------------------------------------------------------------- cross-entropy */

typedef struct CrossEntropyShape { int N, V, with_grad; } CrossEntropyShape;
static const CrossEntropyShape cross_entropy_shapes[] = {
    {1, 7, 1}, {7, 256, 1}, {129, 1000, 1}, {300, 33, 1}, {64, 256, 0},
};

START_TEST(test_cross_entropy_matches_cpu) {
    for (size_t s = 0; s < sizeof cross_entropy_shapes / sizeof cross_entropy_shapes[0]; s++) {
        const CrossEntropyShape c = cross_entropy_shapes[s];
        char shape[128];
        snprintf(shape, sizeof shape, "N=%d V=%d dlogits=%s", c.N, c.V, c.with_grad ? "yes" : "NULL");
        const size_t n = (size_t)c.N * c.V;
        float *logits = cuda_test_host_normal(&rng, n, 4.0f);   /* peaky rows: the max-subtraction matters */
        int *targets = braid_malloc((size_t)c.N * sizeof(int), "targets");
        for (int r = 0; r < c.N; r++) {
            const uint32_t pick = r == 0 ? 1 : rng_below(&rng, 4);   /* row 0 is correct */
            if (pick == 0 && c.N > 1) targets[r] = -100;          /* ignored */
            else if (pick == 1) {                                   /* the argmax: counted correct */
                int best = 0;
                for (int v = 1; v < c.V; v++) if (logits[(size_t)r * c.V + v] > logits[(size_t)r * c.V + best]) best = v;
                targets[r] = best;
            } else targets[r] = (int)rng_below(&rng, (uint32_t)c.V);
        }
        const float grad_scale = 1.0f / c.N;
        float *dlogits = cuda_test_host_normal(&rng, n, 1.0f);
        float *d_logits = cuda_test_device_copy(logits, n), *d_dlogits = cuda_test_device_poisoned(n);
        int *d_targets = device_copy_int(targets, c.N);
        void *scratch = cuda_test_device_alloc(cross_entropy_cuda_scratch_bytes(c.N));
        int valid = -1, correct = -1, d_valid = -2, d_correct = -2;
        const double loss = cross_entropy_forward_backward(c.with_grad ? dlogits : NULL, logits, targets,
                                                           c.N, c.V, grad_scale, &valid, &correct);
        const double d_loss = cross_entropy_forward_backward_cuda(
            c.with_grad ? d_dlogits : NULL, d_logits, d_targets, c.N, c.V, grad_scale, &d_valid,
            &d_correct, scratch, stream);
        ck_assert_msg(fabs(d_loss - loss) <= 1e-5 * fabs(loss),
                      "cross_entropy %s: loss sum %.10g, expected %.10g (|diff| %.3g)", shape, d_loss,
                      loss, fabs(d_loss - loss));
        ck_assert_msg(d_valid == valid && d_correct == correct,
                      "cross_entropy %s: n_valid %d, n_correct %d; expected %d, %d", shape, d_valid,
                      d_correct, valid, correct);
        ck_assert_msg(correct > 0, "cross_entropy %s: the test meant some rows to be correct", shape);
        if (c.with_grad)
            cuda_test_check_device_close("cross_entropy dlogits", shape, d_dlogits, dlogits, n,
                                         ELEMENTWISE_TOL);
        free(logits); free(targets); free(dlogits);
        CUDA_CHECK(cudaFree(d_logits)); CUDA_CHECK(cudaFree(d_dlogits));
        CUDA_CHECK(cudaFree(d_targets)); CUDA_CHECK(cudaFree(scratch));
    }
}
END_TEST

/* ---------------------------------------------------------------- rope */

/* In this order, so that the CUDA op's cached (cos, sin) table (rope.cu, keyed on T, hd
 * and base) must be remade for a new hd at the same T and for a new base at the same T and
 * hd, and reused where all three repeat. */
typedef struct RopeShape { int B, T, H, hd; float base; } RopeShape;
static const RopeShape rope_shapes[] = {{1, 1, 2, 16, 1e4f},    {2, 7, 3, 64, 1e4f},  {2, 7, 3, 16, 1e4f},
                                        {2, 7, 3, 16, 500.0f},  {1, 7, 5, 16, 500.0f}, {1, 129, 4, 128, 1e4f},
                                        {2, 300, 2, 16, 1e4f}};
#define N_ROPE_SHAPES (sizeof rope_shapes / sizeof rope_shapes[0])

static void check_rope(int backward) {
    for (size_t s = 0; s < N_ROPE_SHAPES; s++) {
        const RopeShape r = rope_shapes[s];
        char shape[128];
        snprintf(shape, sizeof shape, "B=%d T=%d H=%d hd=%d base=%g", r.B, r.T, r.H, r.hd, r.base);
        const size_t n = (size_t)r.B * r.T * r.H * r.hd;
        float *x = cuda_test_host_normal(&rng, n, 1.0f);
        float *d_x = cuda_test_device_copy(x, n);
        if (backward) {
            rope_backward(x, r.B, r.T, r.H, r.hd, r.base);
            rope_backward_cuda(d_x, r.B, r.T, r.H, r.hd, r.base, stream);
        } else {
            rope_forward(x, r.B, r.T, r.H, r.hd, r.base);
            rope_forward_cuda(d_x, r.B, r.T, r.H, r.hd, r.base, stream);
        }
        cuda_test_check_device_close(backward ? "rope_backward" : "rope_forward", shape, d_x, x, n,
                                     ELEMENTWISE_TOL);
        free(x);
        CUDA_CHECK(cudaFree(d_x));
    }
}

START_TEST(test_rope_forward_matches_cpu) { check_rope(0); }
END_TEST

START_TEST(test_rope_backward_matches_cpu) { check_rope(1); }
END_TEST

/* ---------------------------------------------------------------- attention */

typedef struct AttentionShape { int B, T, H, Hkv, hd, window; } AttentionShape;
static const AttentionShape attention_shapes[] = {
    {1, 1, 2, 2, 16, 0},   {2, 7, 4, 2, 16, 5},    {1, 64, 8, 2, 64, 0},   {2, 129, 8, 2, 64, 5},
    {1, 300, 8, 2, 128, 64}, {1, 300, 4, 4, 128, 0}, {2, 129, 8, 8, 24, 64}, {1, 33, 8, 1, 128, 0},
    /* head dims inside the kernels' 32/64/128 buckets, a window wider than T, GQA group 4 */
    {2, 40, 2, 2, 7, 0},     {1, 70, 4, 1, 48, 200},  {1, 65, 8, 2, 100, 0},
    /* many key blocks meeting each query tile (the tensor-core backward adds their dq parts
     * in order), with and without a window, in every head-dim bucket */
    {1, 1000, 4, 2, 64, 0},  {2, 777, 2, 1, 64, 300}, {1, 600, 2, 1, 128, 0}, {1, 700, 4, 4, 32, 150},
};
#define N_ATTENTION_SHAPES (sizeof attention_shapes / sizeof attention_shapes[0])

/* cuda_test_check_device_close, returning the observed error relative to the largest value. */
static double check_attention_output(const char *op, const char *shape, const float *device,
                                     const float *want, size_t n, double tol) {
    float *got = cuda_test_host_from_device(device, n);
    cuda_test_check_close(op, shape, got, want, n, tol);
    const CudaComparison c = cuda_test_compare(got, want, n);
    free(got);
    return c.max_want > 0 ? c.worst_diff / c.max_want : c.worst_diff;
}

static void attention_shape_name(char *buf, size_t len, AttentionShape a) {
    snprintf(buf, len, "B=%d T=%d H=%d Hkv=%d hd=%d window=%d", a.B, a.T, a.H, a.Hkv, a.hd, a.window);
}

/* Forward at every shape with the given train.matmul_precision, against the float32 CPU op.
 * Returns the largest error over the shapes relative to each output's largest value, so the
 * tensor-core test can also check that TF32 rounding shows (that the path was taken). */
static double check_attention_forward(const char *precision, double tol) {
    ck_assert_int_eq(attention_set_precision_cuda(precision), 0);
    double worst = 0.0;
    for (size_t s = 0; s < N_ATTENTION_SHAPES; s++) {
        const AttentionShape a = attention_shapes[s];
        char shape[128];
        attention_shape_name(shape, sizeof shape, a);
        const size_t n_q = (size_t)a.B * a.T * a.H * a.hd, n_kv = (size_t)a.B * a.T * a.Hkv * a.hd;
        const size_t n_lse = (size_t)a.B * a.H * a.T;
        float *q = cuda_test_host_normal(&rng, n_q, 2.0f), *k = cuda_test_host_normal(&rng, n_kv, 1.0f);
        float *v = cuda_test_host_normal(&rng, n_kv, 1.0f);
        float *out = cuda_test_host_normal(&rng, n_q, 1.0f), *lse = cuda_test_host_normal(&rng, n_lse, 1.0f);
        float *d_q = cuda_test_device_copy(q, n_q), *d_k = cuda_test_device_copy(k, n_kv);
        float *d_v = cuda_test_device_copy(v, n_kv);
        float *d_out = cuda_test_device_poisoned(n_q), *d_lse = cuda_test_device_poisoned(n_lse);
        attention_forward(out, lse, q, k, v, a.B, a.T, a.H, a.Hkv, a.hd, a.window);
        attention_forward_cuda(d_out, d_lse, d_q, d_k, d_v, a.B, a.T, a.H, a.Hkv, a.hd, a.window, stream);
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), " %s", precision);
        worst = fmax(worst, check_attention_output("attention_forward out", shape, d_out, out, n_q, tol));
        worst = fmax(worst, check_attention_output("attention_forward lse", shape, d_lse, lse, n_lse, tol));
        free(q); free(k); free(v); free(out); free(lse);
        CUDA_CHECK(cudaFree(d_q)); CUDA_CHECK(cudaFree(d_k)); CUDA_CHECK(cudaFree(d_v));
        CUDA_CHECK(cudaFree(d_out)); CUDA_CHECK(cudaFree(d_lse));
    }
    return worst;
}

START_TEST(test_attention_forward_matches_cpu) { check_attention_forward("fp32", ATTENTION_TOL); }
END_TEST

/* Backward at every shape, into gradients that already hold values; as the forward. */
static double check_attention_backward(const char *precision, double tol) {
    ck_assert_int_eq(attention_set_precision_cuda(precision), 0);
    double worst = 0.0;
    for (size_t s = 0; s < N_ATTENTION_SHAPES; s++) {
        const AttentionShape a = attention_shapes[s];
        char shape[128];
        attention_shape_name(shape, sizeof shape, a);
        const size_t n_q = (size_t)a.B * a.T * a.H * a.hd, n_kv = (size_t)a.B * a.T * a.Hkv * a.hd;
        const size_t n_lse = (size_t)a.B * a.H * a.T;
        float *q = cuda_test_host_normal(&rng, n_q, 2.0f), *k = cuda_test_host_normal(&rng, n_kv, 1.0f);
        float *v = cuda_test_host_normal(&rng, n_kv, 1.0f);
        float *out = braid_malloc(n_q * sizeof(float), "out"), *lse = braid_malloc(n_lse * sizeof(float), "lse");
        attention_forward(out, lse, q, k, v, a.B, a.T, a.H, a.Hkv, a.hd, a.window);
        float *dout = cuda_test_host_normal(&rng, n_q, 1.0f);
        float *dq = cuda_test_host_normal(&rng, n_q, 1.0f), *dk = cuda_test_host_normal(&rng, n_kv, 1.0f);
        float *dv = cuda_test_host_normal(&rng, n_kv, 1.0f);
        /* both backward passes see the same forward results (the CPU's) */
        float *d_q = cuda_test_device_copy(q, n_q), *d_k = cuda_test_device_copy(k, n_kv);
        float *d_v = cuda_test_device_copy(v, n_kv);
        float *d_out = cuda_test_device_copy(out, n_q), *d_lse = cuda_test_device_copy(lse, n_lse);
        float *d_dout = cuda_test_device_copy(dout, n_q);
        float *d_dq = cuda_test_device_copy(dq, n_q), *d_dk = cuda_test_device_copy(dk, n_kv);
        float *d_dv = cuda_test_device_copy(dv, n_kv);
        attention_backward(dq, dk, dv, dout, q, k, v, out, lse, a.B, a.T, a.H, a.Hkv, a.hd, a.window);
        attention_backward_cuda(d_dq, d_dk, d_dv, d_dout, d_q, d_k, d_v, d_out, d_lse, a.B, a.T, a.H,
                                a.Hkv, a.hd, a.window, stream);
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), " %s", precision);
        worst = fmax(worst, check_attention_output("attention_backward dq", shape, d_dq, dq, n_q, tol));
        worst = fmax(worst, check_attention_output("attention_backward dk", shape, d_dk, dk, n_kv, tol));
        worst = fmax(worst, check_attention_output("attention_backward dv", shape, d_dv, dv, n_kv, tol));
        free(q); free(k); free(v); free(out); free(lse); free(dout); free(dq); free(dk); free(dv);
        CUDA_CHECK(cudaFree(d_q)); CUDA_CHECK(cudaFree(d_k)); CUDA_CHECK(cudaFree(d_v));
        CUDA_CHECK(cudaFree(d_out)); CUDA_CHECK(cudaFree(d_lse)); CUDA_CHECK(cudaFree(d_dout));
        CUDA_CHECK(cudaFree(d_dq)); CUDA_CHECK(cudaFree(d_dk)); CUDA_CHECK(cudaFree(d_dv));
    }
    return worst;
}

START_TEST(test_attention_backward_accumulates_like_cpu) { check_attention_backward("fp32", ATTENTION_TOL); }
END_TEST

/* Forward and backward at every shape through one precision's tensor-core kernels: within
 * `tol` of the float32 CPU op, and at least `min_diff` off it, or the setting would have
 * been ignored (the float32 kernels land ~1e-6 off). */
static void check_attention_tensor_cores(const char *precision, double tol, double min_diff) {
    const double fwd = check_attention_forward(precision, tol);
    const double bwd = check_attention_backward(precision, tol);
    ck_assert_msg(fwd >= min_diff && bwd >= min_diff,
                  "%s attention agrees with float32 to %.2e (forward) and %.2e (backward), under "
                  "%.0e: its rounding not seen, so its tensor-core path was not taken", precision, fwd,
                  bwd, min_diff);
    ck_assert_int_eq(attention_set_precision_cuda("fp32"), 0);
}

/* train.matmul_precision tf32 runs attention's tile products on the TF32 tensor cores
 * (attention_tc.cu): the same shapes, ragged ones included, within TF32 rounding. */
START_TEST(test_attention_tensor_cores_within_tf32_rounding) {
    check_attention_tensor_cores("tf32", ATTENTION_TF32_TOL, ATTENTION_TF32_MIN_DIFF);
    ck_assert_int_eq(attention_set_precision_cuda("fp16"), -1);
}
END_TEST

/* train.matmul_precision bf16: the bf16 tensor cores (7 mantissa bits, 4× TF32's rounding
 * error); the floor sits above what TF32 reaches on these shapes, so TF32 in bf16's place
 * fails too. */
START_TEST(test_attention_tensor_cores_within_bf16_rounding) {
    check_attention_tensor_cores("bf16", ATTENTION_BF16_TOL, ATTENTION_BF16_MIN_DIFF);
    /* On Hopper, head dims in (32, 64] run the wgmma kernels (attention_wgmma.cu); the
     * mma.sync kernels for them (the only 128-row blocks) are what other GPUs run: check
     * them too, with wgmma switched off. */
    ck_assert_int_eq(setenv("BRAID_ATTENTION_WGMMA", "0", 1), 0);
    check_attention_tensor_cores("bf16", ATTENTION_BF16_TOL, ATTENTION_BF16_MIN_DIFF);
    unsetenv("BRAID_ATTENTION_WGMMA");
}
END_TEST

/* The accumulated gradients above start from values of the same size as the gradients
 * themselves, so a kernel that overwrote instead of adding would fail there; this checks
 * it exactly, and the dq-only path (dk = dv = NULL): backward into zeros, plus the start
 * values, equals backward into the start values to the last bit (both add the same
 * increment once). */
START_TEST(test_attention_backward_adds_to_existing_gradients) {
    static const char *precisions[] = {"fp32", "tf32", "bf16"};   /* CUDA cores, then tensor cores */
    for (int p = 0; p < 3; p++) {
    ck_assert_int_eq(attention_set_precision_cuda(precisions[p]), 0);
    const AttentionShape a = {1, 40, 4, 2, 32, 0};
    char shape[128];
    attention_shape_name(shape, sizeof shape, a);
    snprintf(shape + strlen(shape), sizeof shape - strlen(shape), " %s", precisions[p]);
    const size_t n_q = (size_t)a.B * a.T * a.H * a.hd, n_kv = (size_t)a.B * a.T * a.Hkv * a.hd;
    const size_t n_lse = (size_t)a.B * a.H * a.T;
    float *q = cuda_test_host_normal(&rng, n_q, 1.0f), *k = cuda_test_host_normal(&rng, n_kv, 1.0f);
    float *v = cuda_test_host_normal(&rng, n_kv, 1.0f);
    float *dout = cuda_test_host_normal(&rng, n_q, 1.0f), *start = cuda_test_host_normal(&rng, n_q, 10.0f);
    float *d_q = cuda_test_device_copy(q, n_q), *d_k = cuda_test_device_copy(k, n_kv);
    float *d_v = cuda_test_device_copy(v, n_kv);
    float *d_dout = cuda_test_device_copy(dout, n_q), *d_out = cuda_test_device_poisoned(n_q);
    float *d_lse = cuda_test_device_poisoned(n_lse);
    attention_forward_cuda(d_out, d_lse, d_q, d_k, d_v, a.B, a.T, a.H, a.Hkv, a.hd, a.window, stream);
    float *d_dq_zero = cuda_test_device_alloc(n_q * sizeof(float));
    float *d_dq_start = cuda_test_device_copy(start, n_q);
    CUDA_CHECK(cudaMemset(d_dq_zero, 0, n_q * sizeof(float)));
    attention_backward_cuda(d_dq_zero, NULL, NULL, d_dout, d_q, d_k, d_v, d_out, d_lse, a.B, a.T, a.H,
                            a.Hkv, a.hd, a.window, stream);
    attention_backward_cuda(d_dq_start, NULL, NULL, d_dout, d_q, d_k, d_v, d_out, d_lse, a.B, a.T, a.H,
                            a.Hkv, a.hd, a.window, stream);
    float *from_zero = cuda_test_host_from_device(d_dq_zero, n_q);
    float *from_start = cuda_test_host_from_device(d_dq_start, n_q);
    for (size_t i = 0; i < n_q; i++) from_zero[i] += start[i];
    cuda_test_check_close("attention_backward dq (start + grad vs grad into start)", shape, from_start,
                          from_zero, n_q, 1e-6);
    free(q); free(k); free(v); free(dout); free(start); free(from_zero); free(from_start);
    CUDA_CHECK(cudaFree(d_q)); CUDA_CHECK(cudaFree(d_k)); CUDA_CHECK(cudaFree(d_v));
    CUDA_CHECK(cudaFree(d_dout)); CUDA_CHECK(cudaFree(d_out)); CUDA_CHECK(cudaFree(d_lse));
    CUDA_CHECK(cudaFree(d_dq_zero)); CUDA_CHECK(cudaFree(d_dq_start));
    }
    attention_set_precision_cuda("fp32");
}
END_TEST

/* The tensor-core backward sums dq over key blocks through a scratch tile that the blocks
 * add to in a fixed order (attention_tc.cu), and the float32 one with no such sum: the
 * same bits on every run, whichever block the scheduler starts first. Also that asking
 * for dq alone, or dk and dv alone, gives the same bits as asking for all three. */
START_TEST(test_attention_backward_is_deterministic) {
    static const char *precisions[] = {"fp32", "tf32", "bf16"};
    const AttentionShape a = {2, 1000, 6, 2, 64, 0};
    const size_t n_q = (size_t)a.B * a.T * a.H * a.hd, n_kv = (size_t)a.B * a.T * a.Hkv * a.hd;
    const size_t n_lse = (size_t)a.B * a.H * a.T;
    float *q = cuda_test_host_normal(&rng, n_q, 2.0f), *k = cuda_test_host_normal(&rng, n_kv, 1.0f);
    float *v = cuda_test_host_normal(&rng, n_kv, 1.0f), *dout = cuda_test_host_normal(&rng, n_q, 1.0f);
    float *d_q = cuda_test_device_copy(q, n_q), *d_k = cuda_test_device_copy(k, n_kv);
    float *d_v = cuda_test_device_copy(v, n_kv), *d_dout = cuda_test_device_copy(dout, n_q);
    float *d_out = cuda_test_device_poisoned(n_q), *d_lse = cuda_test_device_poisoned(n_lse);
    float *d_dq = cuda_test_device_alloc(n_q * sizeof(float)), *d_dk = cuda_test_device_alloc(n_kv * sizeof(float));
    float *d_dv = cuda_test_device_alloc(n_kv * sizeof(float));
    for (int p = 0; p < 3; p++) {
        ck_assert_int_eq(attention_set_precision_cuda(precisions[p]), 0);
        attention_forward_cuda(d_out, d_lse, d_q, d_k, d_v, a.B, a.T, a.H, a.Hkv, a.hd, a.window, stream);
        float *first[3] = {NULL, NULL, NULL};
        /* runs: all three twice, then dq alone, then dk and dv alone */
        for (int run = 0; run < 4; run++) {
            CUDA_CHECK(cudaMemset(d_dq, 0, n_q * sizeof(float)));
            CUDA_CHECK(cudaMemset(d_dk, 0, n_kv * sizeof(float)));
            CUDA_CHECK(cudaMemset(d_dv, 0, n_kv * sizeof(float)));
            const int want_q = run != 3, want_kv = run != 2;
            attention_backward_cuda(want_q ? d_dq : NULL, want_kv ? d_dk : NULL, want_kv ? d_dv : NULL, d_dout,
                                    d_q, d_k, d_v, d_out, d_lse, a.B, a.T, a.H, a.Hkv, a.hd, a.window, stream);
            float *got[3] = {cuda_test_host_from_device(d_dq, n_q), cuda_test_host_from_device(d_dk, n_kv),
                             cuda_test_host_from_device(d_dv, n_kv)};
            static const char *names[3] = {"dq", "dk", "dv"};
            const size_t sizes[3] = {n_q, n_kv, n_kv};
            for (int g = 0; g < 3; g++) {
                if (run == 0) { first[g] = got[g]; continue; }
                if ((g == 0 && want_q) || (g > 0 && want_kv))
                    ck_assert_msg(!memcmp(first[g], got[g], sizes[g] * sizeof(float)),
                                  "attention backward %s (%s): run %d differs from run 0 in its bits", names[g],
                                  precisions[p], run);
                free(got[g]);
            }
        }
        for (int g = 0; g < 3; g++) free(first[g]);
    }
    attention_set_precision_cuda("fp32");
    free(q); free(k); free(v); free(dout);
    CUDA_CHECK(cudaFree(d_q)); CUDA_CHECK(cudaFree(d_k)); CUDA_CHECK(cudaFree(d_v)); CUDA_CHECK(cudaFree(d_dout));
    CUDA_CHECK(cudaFree(d_out)); CUDA_CHECK(cudaFree(d_lse)); CUDA_CHECK(cudaFree(d_dq));
    CUDA_CHECK(cudaFree(d_dk)); CUDA_CHECK(cudaFree(d_dv));
}
END_TEST

/* ---------------------------------------------------------------- AdamW and the norm */

/* Device arrays of n floats starting `shift` floats into an allocation: shift 1 puts them
 * off the 16-byte alignment the float4 paths need (*base is what to free). */
static float *device_copy_shifted(const float *x, size_t n, int shift, float **base) {
    *base = cuda_test_device_alloc((n + 1) * sizeof(float));
    CUDA_CHECK(cudaMemcpy(*base + shift, x, n * sizeof(float), cudaMemcpyHostToDevice));
    return *base + shift;
}

/* Decayed and no_decay tensors interleaved, ragged sizes (ranges that start and end off a
 * multiple of 4: the float4 middle and the single ends), three steps of which the second
 * is clipped (grad_scale ≠ 1); aligned arrays (float4 path) and arrays one float off
 * (every element singly). */
START_TEST(test_adamw_update_matches_cpu_with_no_decay_tensors) {
    ParamList list = {0};
    const int shapes[][2] = {{33, 7}, {33, 1}, {129, 64}, {300, 1}, {5, 3}, {64, 300}};
    const int no_decay[] = {0, 1, 0, 1, 1, 0};
    for (int t = 0; t < 6; t++) {
        char name[32];
        snprintf(name, sizeof name, "tensor%d", t);
        param_list_add(&list, "", name, 2, shapes[t], INIT_NORMAL, 1.0f, no_decay[t]);
    }
    const size_t n = list.total;
    for (int shift = 0; shift <= 1; shift++) {
        AdamWSettings settings = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                                  .weight_decay = 0.1f, .grad_scale = 1.0f};
        float *params = cuda_test_host_normal(&rng, n, 1.0f), *m = cuda_test_host_normal(&rng, n, 0.1f);
        float *v = cuda_test_host_normal(&rng, n, 0.1f);
        for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i];   /* a second moment is ≥ 0 */
        float *base[4];
        float *d_params = device_copy_shifted(params, n, shift, &base[0]);
        float *d_m = device_copy_shifted(m, n, shift, &base[1]);
        float *d_v = device_copy_shifted(v, n, shift, &base[2]);
        float *grads = braid_malloc(n * sizeof(float), "grads");
        base[3] = cuda_test_device_alloc((n + 1) * sizeof(float));
        float *d_grads = base[3] + shift;
        for (long step = 1; step <= 3; step++) {
            settings.grad_scale = step == 2 ? 0.37f : 1.0f;   /* a clipped step: the factor folded in */
            rng_fill_normal(&rng, grads, n, 0.5f);
            CUDA_CHECK(cudaMemcpy(d_grads, grads, n * sizeof(float), cudaMemcpyHostToDevice));
            adamw_update(params, grads, m, v, &list, &settings, step);
            adamw_update_cuda(d_params, d_grads, d_m, d_v, &list, &settings, step, stream);
        }
        /* a missed no_decay flag would move a parameter by lr·λ·θ ≈ 1e-3·θ per step, a
         * missed clipping factor m by ~0.06·g */
        char shape[96];
        snprintf(shape, sizeof shape, "%zu floats in 6 tensors, 3 steps, arrays %s", n,
                 shift ? "one float off alignment" : "aligned");
        cuda_test_check_device_close("adamw_update params", shape, d_params, params, n, 1e-5);
        cuda_test_check_device_close("adamw_update m", shape, d_m, m, n, 1e-5);
        cuda_test_check_device_close("adamw_update v", shape, d_v, v, n, 1e-5);
        free(params); free(m); free(v); free(grads);
        for (int i = 0; i < 4; i++) CUDA_CHECK(cudaFree(base[i]));
    }
    param_list_free(&list);
}
END_TEST

/* sizes with n % 4 = 1, 0, 0, 3; aligned (float4 pieces, then the tail) and one float off */
START_TEST(test_global_grad_norm_matches_cpu) {
    const size_t sizes[] = {1, 1000, 300 * 129, 1000003};
    double *d_norm = cuda_test_device_alloc(sizeof(double));
    double *partials = cuda_test_device_alloc(GLOBAL_GRAD_NORM_CUDA_PARTIALS * sizeof(double));
    for (int shift = 0; shift <= 1; shift++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            const size_t n = sizes[s];
            float *grads = cuda_test_host_normal(&rng, n, 0.01f), *base;
            float *d_grads = device_copy_shifted(grads, n, shift, &base);
            const double poison = NAN;
            CUDA_CHECK(cudaMemcpy(d_norm, &poison, sizeof poison, cudaMemcpyHostToDevice));
            global_grad_norm_cuda(d_norm, d_grads, n, partials, stream);
            double norm = NAN;
            CUDA_CHECK(cudaStreamSynchronize(stream));
            CUDA_CHECK(cudaMemcpy(&norm, d_norm, sizeof norm, cudaMemcpyDeviceToHost));
            const double want = global_grad_norm(grads, n);
            ck_assert_msg(fabs(norm - want) <= 1e-10 * want,
                          "global_grad_norm n=%zu shift %d: %.15g, expected %.15g (|diff| %.3g)", n, shift, norm,
                          want, fabs(norm - want));
            free(grads);
            CUDA_CHECK(cudaFree(base));
        }
    CUDA_CHECK(cudaFree(d_norm));
    CUDA_CHECK(cudaFree(partials));
}
END_TEST

/* ---------------------------------------------------------------- suite */

static Suite *cuda_ops_suite(void) {
    Suite *s = suite_create("cuda_ops");
    TCase *tc = tcase_create("cuda_vs_cpu");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_comparison_flags_unwritten_and_wrong_elements);
    tcase_add_test(tc, test_matmul_forward_matches_cpu);
    tcase_add_test(tc, test_matmul_backward_accumulates_like_cpu);
    tcase_add_test(tc, test_matmul_backward_write_dinp_overwrites);
    tcase_add_test(tc, test_embedding_forward_matches_cpu);
    tcase_add_test(tc, test_embedding_backward_accumulates_repeated_tokens);
    tcase_add_test(tc, test_embedding_backward_is_deterministic);
    tcase_add_test(tc, test_rmsnorm_forward_matches_cpu);
    tcase_add_test(tc, test_rmsnorm_backward_accumulates_like_cpu);
    tcase_add_test(tc, test_rmsnorm_residual_forward_matches_cpu);
    tcase_add_test(tc, test_rmsnorm_backward_onto_matches_cpu);
    tcase_add_test(tc, test_rmsnorm_backward_is_deterministic);
    tcase_add_test(tc, test_swiglu_forward_matches_cpu);
    tcase_add_test(tc, test_swiglu_backward_matches_cpu);
    tcase_add_test(tc, test_swiglu_backward_and_forward_bf16_matches_separate_kernels);
    tcase_add_test(tc, test_swiglu_backward_rows_apart_match_flat);
    tcase_add_test(tc, test_elementwise_on_unaligned_arrays_matches_cpu);
    tcase_add_test(tc, test_add_inplace_matches_cpu);
    tcase_add_test(tc, test_cross_entropy_matches_cpu);
    tcase_add_test(tc, test_rope_forward_matches_cpu);
    tcase_add_test(tc, test_rope_backward_matches_cpu);
    tcase_add_test(tc, test_matmul_reduced_precision_within_rounding);
    tcase_add_test(tc, test_matmul_bf16_is_float32_on_rounded_operands);
    tcase_add_test(tc, test_matmul_bf16_mirror_and_held_input_stay_fresh);
    tcase_add_test(tc, test_attention_forward_matches_cpu);
    tcase_add_test(tc, test_attention_backward_accumulates_like_cpu);
    tcase_add_test(tc, test_attention_backward_adds_to_existing_gradients);
    tcase_add_test(tc, test_attention_backward_is_deterministic);
    tcase_add_test(tc, test_attention_tensor_cores_within_tf32_rounding);
    tcase_add_test(tc, test_attention_tensor_cores_within_bf16_rounding);
    tcase_add_test(tc, test_adamw_update_matches_cpu_with_no_decay_tensors);
    tcase_add_test(tc, test_global_grad_norm_matches_cpu);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("test_cuda_ops: no CUDA device — skipped\n");
        return 77;
    }
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("test_cuda_ops: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    rng_seed(&rng, 8);
    CUDA_CHECK(cudaStreamCreate(&stream));
    ops_cuda_init();

    SRunner *sr = srunner_create(cuda_ops_suite());
    srunner_set_fork_status(sr, CK_NOFORK);   /* a CUDA context does not survive fork() */
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    ops_cuda_shutdown();
    CUDA_CHECK(cudaStreamDestroy(stream));
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
