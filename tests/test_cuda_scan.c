/* test_cuda_scan.c — the CUDA Mamba kernels (src/cuda/mamba_cuda.h: causal conv1d and the
 * chunked selective scan) against the CPU kernels of layers/mamba_cpu.h on the same data.
 *
 * Inputs are seeded random, never zeros: u, B, C, dy normal; δ uniform in [0.001, 0.5]
 * (softplus outputs of a trained Mamba live around there); A = −(n+1)·U[0.5, 1.5] (the
 * init's −exp(A_log) = −(n+1), jittered), so exp(δA) spans 0.0003 … 1. Shapes cover
 * B 1…4, T 1, 7, 64, 129, 160, 200, 300, di 16…256, N 4, 5 (not a power of two), 8, 16, 32
 * and chunk 8, 16, 24, 32, 48, 64, 300 (and chunk ≥ T), channel counts that leave a block
 * half full; both staging paths of the kernels (16-byte pieces where channels and N are
 * multiples of 4, else 4-byte: the N = 5 and 38-channel shapes).
 * Outputs a kernel WRITES (y, chunk_states, conv out) are poisoned first (bytes 0xFF, a
 * NaN), so an unwritten element fails; gradients a kernel ACCUMULATES into start from the
 * same random values on both sides, so adding (not overwriting) is what gets checked.
 * Tolerances, |cuda − cpu| ≤ tol · max|cpu|: 1e-4 forward, 1e-3 backward (sums over up to
 * 300 steps and 256 channels in another order; exp2f against the CPU's polynomial exp).
 *
 * `test_cuda_scan --bench [B T di N chunk]` times the scan (default B=8, T=2048, di=1536,
 * N=16, chunk 64: jamba-small's) instead of testing (tools/gpu_scan_test.sh runs both).
 * No GPU: prints that it skipped and exits 77 (CTest: skipped). Check runs in-process
 * (CK_NOFORK): a CUDA context does not survive fork(). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "core/common.h"
#include "core/rng.h"
#include "cuda/cuda_check.h"
#include "cuda/mamba_cuda.h"
#include "cuda_harness.h"
#include "layers/mamba_cpu.h"

#define FORWARD_TOL 1e-4
#define BACKWARD_TOL 1e-3

static Rng rng;
static cudaStream_t stream;

/* ---------------------------------------------------------------- helpers */

/* A (channels, N): −(n+1) · U[0.5, 1.5], the init's A jittered. */
static float *host_scan_A(int channels, int N) {
    float *A = braid_malloc((size_t)channels * N * sizeof(float), "A");
    for (int c = 0; c < channels; c++)
        for (int n = 0; n < N; n++) A[(size_t)c * N + n] = -(float)(n + 1) * rng_uniform_range(&rng, 0.5f, 1.5f);
    return A;
}

/* ---------------------------------------------------------------- conv1d */

typedef struct ConvShape { int Bsz, T, C, K, use_bias; } ConvShape;
static const ConvShape conv_shapes[] = {
    {1, 1, 16, 4, 1}, {2, 7, 48, 4, 1}, {3, 64, 100, 2, 0}, {4, 129, 256, 4, 1}, {2, 300, 33, 8, 1},
    {8, 250, 40, 4, 1},   /* dw, dbias over 16 row slices that cross sequence starts (column_sum.cuh) */
};
#define N_CONV_SHAPES (sizeof conv_shapes / sizeof conv_shapes[0])

/* Every shape, plain and with Mamba's silu written beside the output
 * (causal_conv1d_silu_forward_cuda: u = silu(out) against the CPU's, and its bf16 copy
 * exactly the CUDA u rounded to nearest even); outputs poisoned first. */
START_TEST(test_conv1d_forward_matches_cpu) {
    for (size_t s = 0; s < 2 * N_CONV_SHAPES; s++) {
        const ConvShape m = conv_shapes[s / 2];
        const int with_silu = s % 2;
        char shape[96];
        snprintf(shape, sizeof shape, "B=%d T=%d C=%d K=%d bias=%d%s", m.Bsz, m.T, m.C, m.K, m.use_bias,
                 with_silu ? " with silu" : "");
        const size_t n = (size_t)m.Bsz * m.T * m.C, nw = (size_t)m.C * m.K;
        float *x = cuda_test_host_normal(&rng, n, 1.0f), *w = cuda_test_host_normal(&rng, nw, 0.5f);
        float *bias = cuda_test_host_normal(&rng, m.C, 1.0f);
        float *out = braid_malloc(n * sizeof(float), "out");
        float *d_x = cuda_test_device_copy(x, n), *d_w = cuda_test_device_copy(w, nw);
        float *d_bias = cuda_test_device_copy(bias, m.C);
        float *d_out = cuda_test_device_poisoned(n), *d_u = cuda_test_device_poisoned(n);
        uint16_t *d_u16 = cuda_test_device_poisoned_bytes(n * sizeof(uint16_t));
        causal_conv1d_forward(out, x, w, m.use_bias ? bias : NULL, m.Bsz, m.T, m.C, m.K);
        if (with_silu)
            causal_conv1d_silu_forward_cuda(d_out, d_u, d_u16, d_x, d_w, m.use_bias ? d_bias : NULL, m.Bsz, m.T, m.C,
                                            m.K, stream);
        else
            causal_conv1d_forward_cuda(d_out, d_x, d_w, m.use_bias ? d_bias : NULL, m.Bsz, m.T, m.C, m.K, stream);
        cuda_test_check_device_close("causal_conv1d_forward", shape, d_out, out, n, FORWARD_TOL);
        if (with_silu) {
            for (size_t i = 0; i < n; i++) out[i] = out[i] / (1.0f + expf(-out[i]));
            cuda_test_check_device_close("causal_conv1d_silu_forward u", shape, d_u, out, n, FORWARD_TOL);
            float *u = cuda_test_host_from_device(d_u, n);
            uint16_t *u16 = braid_malloc(n * sizeof(uint16_t), "u16");
            CUDA_CHECK(cudaMemcpy(u16, d_u16, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < n; i++)
                ck_assert_msg(u16[i] == cuda_test_bf16_bits(u[i]), "%s: u16[%zu] = 0x%04x, bf16 of u %g is 0x%04x", shape,
                              i, u16[i], (double)u[i], cuda_test_bf16_bits(u[i]));
            free(u); free(u16);
        }
        free(x); free(w); free(bias); free(out);
        CUDA_CHECK(cudaFree(d_x)); CUDA_CHECK(cudaFree(d_w));
        CUDA_CHECK(cudaFree(d_bias)); CUDA_CHECK(cudaFree(d_out));
        CUDA_CHECK(cudaFree(d_u)); CUDA_CHECK(cudaFree(d_u16));
    }
}
END_TEST

/* Every shape, plain and through the silu (silu_in: the conv's output gradient is
 * dout ⊙ silu'(a), as the Mamba layer calls it; the CPU reference applies it first). */
START_TEST(test_conv1d_backward_accumulates_like_cpu) {
    for (size_t s = 0; s < 2 * N_CONV_SHAPES; s++) {
        const ConvShape m = conv_shapes[s / 2];
        const int through_silu = s % 2;
        char shape[96];
        snprintf(shape, sizeof shape, "B=%d T=%d C=%d K=%d%s", m.Bsz, m.T, m.C, m.K,
                 through_silu ? " through silu" : "");
        const size_t n = (size_t)m.Bsz * m.T * m.C, nw = (size_t)m.C * m.K;
        float *x = cuda_test_host_normal(&rng, n, 1.0f), *w = cuda_test_host_normal(&rng, nw, 0.5f);
        float *dout = cuda_test_host_normal(&rng, n, 1.0f), *pre = cuda_test_host_normal(&rng, n, 2.0f);
        /* gradients start from the same random values on both sides */
        float *dx = cuda_test_host_normal(&rng, n, 1.0f), *dw = cuda_test_host_normal(&rng, nw, 1.0f);
        float *dbias = cuda_test_host_normal(&rng, m.C, 1.0f);
        float *d_x = cuda_test_device_copy(x, n), *d_w = cuda_test_device_copy(w, nw);
        float *d_dout = cuda_test_device_copy(dout, n), *d_pre = cuda_test_device_copy(pre, n);
        float *d_dx = cuda_test_device_copy(dx, n), *d_dw = cuda_test_device_copy(dw, nw);
        float *d_dbias = cuda_test_device_copy(dbias, m.C);
        if (through_silu)
            for (size_t i = 0; i < n; i++) {
                const float sg = 1.0f / (1.0f + expf(-pre[i]));
                dout[i] *= sg * (1.0f + pre[i] * (1.0f - sg));
            }
        causal_conv1d_backward(dx, dw, dbias, dout, x, w, m.Bsz, m.T, m.C, m.K);
        causal_conv1d_backward_cuda(d_dx, d_dw, d_dbias, d_dout, through_silu ? d_pre : NULL, d_x, d_w, m.Bsz, m.T,
                                    m.C, m.C, m.K, stream);
        cuda_test_check_device_close("causal_conv1d_backward dx", shape, d_dx, dx, n, BACKWARD_TOL);
        cuda_test_check_device_close("causal_conv1d_backward dweight", shape, d_dw, dw, nw, BACKWARD_TOL);
        cuda_test_check_device_close("causal_conv1d_backward dbias", shape, d_dbias, dbias, m.C,
                                     BACKWARD_TOL);
        free(x); free(w); free(dout); free(pre); free(dx); free(dw); free(dbias);
        CUDA_CHECK(cudaFree(d_x)); CUDA_CHECK(cudaFree(d_w)); CUDA_CHECK(cudaFree(d_dout)); CUDA_CHECK(cudaFree(d_pre));
        CUDA_CHECK(cudaFree(d_dx)); CUDA_CHECK(cudaFree(d_dw)); CUDA_CHECK(cudaFree(d_dbias));
    }
}
END_TEST

/* ---------------------------------------------------------------- selective scan */

typedef struct ScanShape { int Bsz, T, channels, N, chunk, use_D; } ScanShape;
static const ScanShape scan_shapes[] = {
    {1, 1, 16, 4, 8, 1},      /* one step */
    {2, 7, 48, 16, 8, 1},     /* chunk ≥ T */
    {3, 64, 64, 4, 64, 1},    /* T = chunk: one full chunk */
    {4, 129, 256, 16, 64, 1}, /* ragged last chunk of 1 step */
    {2, 300, 100, 16, 8, 0},  /* 38 chunks, half-full channel block, D = NULL */
    {1, 300, 40, 5, 64, 1},   /* N not a power of two: padded state lanes */
    {2, 129, 24, 32, 8, 1},   /* N = 32: a whole warp per channel */
    {2, 100, 72, 16, 24, 1},  /* chunk not a multiple of the backward's 16-step sub-tile */
    {1, 300, 32, 16, 300, 1}, /* one chunk of 19 sub-tiles: long walks from the checkpoint */
    {2, 50, 38, 16, 8, 1},    /* channels not a multiple of 4: the kernels' 4-byte staging */
    {2, 200, 64, 8, 32, 1},   /* N = 8 (2 threads a channel), chunk = the forward's tile, ragged */
    {2, 160, 64, 16, 16, 1},  /* chunk 16 (jamba-small's): two saves in each full forward tile */
    {1, 200, 40, 16, 48, 1},  /* chunk 48: a multiple of the forward's save group, not its tile */
    {2, 75, 64, 16, 25, 1},   /* chunk 25: sub-tiles of 16 and 9 steps (odd: the backward's pairs start late) */
    {3, 45, 250, 16, 16, 1},  /* 8 channel blocks' dB, dC partials at chunk 16, the 4-byte path, ragged */
    {1, 37, 500, 5, 16, 1},   /* the same with padded states (n ≥ N) */
};
#define N_SCAN_SHAPES (sizeof scan_shapes / sizeof scan_shapes[0])

/* One shape's inputs on the host and the device. */
typedef struct ScanData {
    ScanShape m;
    size_t n_seq, n_bc, n_A, n_states;
    float *u, *delta, *A, *B, *C, *D, *dy;
    float *d_u, *d_delta, *d_A, *d_B, *d_C, *d_D, *d_dy;
} ScanData;

static ScanData scan_data(ScanShape m) {
    ScanData s;
    s.m = m;
    s.n_seq = (size_t)m.Bsz * m.T * m.channels;
    s.n_bc = (size_t)m.Bsz * m.T * m.N;
    s.n_A = (size_t)m.channels * m.N;
    s.n_states = (size_t)m.Bsz * selective_scan_n_chunks(m.T, m.chunk) * m.channels * m.N;
    s.u = cuda_test_host_normal(&rng, s.n_seq, 1.0f);
    s.delta = cuda_test_host_uniform(&rng, s.n_seq, 0.001f, 0.5f);
    s.A = host_scan_A(m.channels, m.N);
    s.B = cuda_test_host_normal(&rng, s.n_bc, 1.0f);
    s.C = cuda_test_host_normal(&rng, s.n_bc, 1.0f);
    s.D = cuda_test_host_normal(&rng, m.channels, 1.0f);
    s.dy = cuda_test_host_normal(&rng, s.n_seq, 1.0f);
    s.d_u = cuda_test_device_copy(s.u, s.n_seq);
    s.d_delta = cuda_test_device_copy(s.delta, s.n_seq);
    s.d_A = cuda_test_device_copy(s.A, s.n_A);
    s.d_B = cuda_test_device_copy(s.B, s.n_bc);
    s.d_C = cuda_test_device_copy(s.C, s.n_bc);
    s.d_D = cuda_test_device_copy(s.D, m.channels);
    s.d_dy = cuda_test_device_copy(s.dy, s.n_seq);
    return s;
}

static void scan_data_free(ScanData *s) {
    float *host[] = {s->u, s->delta, s->A, s->B, s->C, s->D, s->dy};
    float *device[] = {s->d_u, s->d_delta, s->d_A, s->d_B, s->d_C, s->d_D, s->d_dy};
    for (int i = 0; i < 7; i++) {
        free(host[i]);
        CUDA_CHECK(cudaFree(device[i]));
    }
}

static void scan_shape_name(char *out, size_t size, ScanShape m) {
    snprintf(out, size, "B=%d T=%d di=%d N=%d chunk=%d D=%s", m.Bsz, m.T, m.channels, m.N, m.chunk,
             m.use_D ? "yes" : "NULL");
}

/* The scans split T into time segments run in parallel (scan.cu, "Segments"); the tests run
 * every shape with the launcher's own choice and with BRAID_SCAN_SEGMENTS forcing one
 * segment and three (ragged: the shapes' chunk counts are not multiples of 3). */
static const char *const segment_settings[] = {NULL, "1", "3"};
#define N_SEGMENT_SETTINGS (sizeof segment_settings / sizeof segment_settings[0])

static void set_segments(const char *setting) {
    if (setting) setenv("BRAID_SCAN_SEGMENTS", setting, 1);
    else unsetenv("BRAID_SCAN_SEGMENTS");
}

START_TEST(test_scan_forward_matches_cpu) {
    for (size_t i = 0; i < N_SCAN_SHAPES * N_SEGMENT_SETTINGS; i++) {
        const char *segments = segment_settings[i % N_SEGMENT_SETTINGS];
        set_segments(segments);
        ScanData s = scan_data(scan_shapes[i / N_SEGMENT_SETTINGS]);
        const ScanShape m = s.m;
        char shape[128];
        scan_shape_name(shape, sizeof shape, m);
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), " segments=%s", segments ? segments : "auto");
        float *y = braid_malloc(s.n_seq * sizeof(float), "y");
        float *states = braid_malloc(s.n_states * sizeof(float), "states");
        float *d_y = cuda_test_device_poisoned(s.n_seq), *d_states = cuda_test_device_poisoned(s.n_states);
        selective_scan_forward(y, states, s.u, s.delta, s.A, s.B, s.C, m.use_D ? s.D : NULL, m.Bsz,
                               m.T, m.channels, m.N, m.chunk);
        selective_scan_forward_cuda(d_y, d_states, s.d_u, s.d_delta, s.d_A, s.d_B, s.d_C,
                                    m.use_D ? s.d_D : NULL, m.Bsz, m.T, m.channels, m.N, m.chunk, stream);
        cuda_test_check_device_close("selective_scan_forward y", shape, d_y, y, s.n_seq, FORWARD_TOL);
        /* chunk 0's start state is exactly zero: compared against max|cpu| it still counts */
        cuda_test_check_device_close("selective_scan_forward chunk_states", shape, d_states, states,
                           s.n_states, FORWARD_TOL);
        free(y); free(states);
        CUDA_CHECK(cudaFree(d_y)); CUDA_CHECK(cudaFree(d_states));
        scan_data_free(&s);
    }
    set_segments(NULL);
}
END_TEST

/* The CPU backward on the CPU's forward; the CUDA backward on the same chunk states
 * (uploaded), so that the backward alone is compared. Gradients start random. */
typedef struct ScanGrads { float *du, *ddelta, *dA, *dB, *dC, *dD; } ScanGrads;

static ScanGrads scan_grads_random(const ScanData *s) {
    ScanGrads g = {cuda_test_host_normal(&rng, s->n_seq, 1.0f), cuda_test_host_normal(&rng, s->n_seq, 1.0f),
                   cuda_test_host_normal(&rng, s->n_A, 1.0f), cuda_test_host_normal(&rng, s->n_bc, 1.0f),
                   cuda_test_host_normal(&rng, s->n_bc, 1.0f),
                   cuda_test_host_normal(&rng, s->m.channels, 1.0f)};
    return g;
}

static ScanGrads scan_grads_to_device(const ScanData *s, const ScanGrads *g) {
    ScanGrads d = {cuda_test_device_copy(g->du, s->n_seq), cuda_test_device_copy(g->ddelta, s->n_seq),
                   cuda_test_device_copy(g->dA, s->n_A), cuda_test_device_copy(g->dB, s->n_bc),
                   cuda_test_device_copy(g->dC, s->n_bc), cuda_test_device_copy(g->dD, s->m.channels)};
    return d;
}

static void scan_grads_free(ScanGrads *g, int on_device) {
    float *all[] = {g->du, g->ddelta, g->dA, g->dB, g->dC, g->dD};
    for (int i = 0; i < 6; i++) {
        if (on_device) CUDA_CHECK(cudaFree(all[i]));
        else free(all[i]);
    }
}

/* The CPU's chunk states for s (forward on the CPU), and the CPU backward into g. */
static float *cpu_forward_backward(const ScanData *s, ScanGrads *g) {
    const ScanShape m = s->m;
    const float *D = m.use_D ? s->D : NULL;
    float *y = braid_malloc(s->n_seq * sizeof(float), "y");
    float *states = braid_malloc(s->n_states * sizeof(float), "states");
    selective_scan_forward(y, states, s->u, s->delta, s->A, s->B, s->C, D, m.Bsz, m.T, m.channels,
                           m.N, m.chunk);
    const size_t scratch_floats = selective_scan_backward_scratch_floats(m.Bsz, m.T, m.N, m.chunk, 1);
    float *scratch = braid_malloc(scratch_floats * sizeof(float), "scratch");
    selective_scan_backward(g->du, g->ddelta, g->dA, g->dB, g->dC, m.use_D ? g->dD : NULL, s->dy, s->u,
                            s->delta, s->A, s->B, s->C, D, states, m.Bsz, m.T, m.channels, m.N,
                            m.chunk, scratch, scratch_floats);
    free(y); free(scratch);
    return states;
}

/* How the backward under test leaves du and dδ: accumulated (selective_scan_backward_cuda),
 * written (selective_scan_backward_write_cuda), or written with dδ through the softplus
 * (the same with delta_softplus: da = dδ·(−expm1(−δ)), the Mamba layer's call). */
enum { BWD_ACCUMULATE, BWD_WRITE, BWD_WRITE_SOFTPLUS };

/* The CUDA backward on the uploaded chunk states, in the given mode. */
static void cuda_backward(const ScanData *s, const ScanGrads *d, const float *d_states, int mode) {
    const ScanShape m = s->m;
    const size_t scratch_floats = selective_scan_backward_cuda_scratch_floats(m.Bsz, m.T, m.channels, m.N);
    float *d_scratch = cuda_test_device_poisoned(scratch_floats);
    if (mode == BWD_ACCUMULATE)
        selective_scan_backward_cuda(d->du, d->ddelta, d->dA, d->dB, d->dC, m.use_D ? d->dD : NULL, s->d_dy, s->d_u,
                                     s->d_delta, s->d_A, s->d_B, s->d_C, m.use_D ? s->d_D : NULL, d_states, m.Bsz,
                                     m.T, m.channels, m.N, m.chunk, d_scratch, scratch_floats, stream);
    else
        selective_scan_backward_write_cuda(d->du, d->ddelta, d->dA, d->dB, d->dC, m.use_D ? d->dD : NULL, s->d_dy,
                                           s->d_u, s->d_delta, s->d_A, s->d_B, s->d_C, m.use_D ? s->d_D : NULL,
                                           d_states, m.Bsz, m.T, m.channels, m.N, m.chunk, d_scratch,
                                           scratch_floats, mode == BWD_WRITE_SOFTPLUS, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaFree(d_scratch));
}

/* Every shape with every segment setting: the CUDA backward against the CPU's on the CPU's
 * chunk states, all six gradients starting from the same random values on both sides —
 * except, when written, du and dδ: poisoned on the device and zero on the CPU, so the write
 * variant must write every element of them without reading any; through the softplus the
 * CPU's dδ is then multiplied by −expm1(−δ), as the layer's CPU path does. */
static void check_backward_every_shape(int mode) {
    const int write = mode != BWD_ACCUMULATE;
    const char *op = mode == BWD_ACCUMULATE ? "selective_scan_backward"
                     : mode == BWD_WRITE    ? "selective_scan_backward_write"
                                            : "selective_scan_backward_write (delta_softplus)";
    for (size_t i = 0; i < N_SCAN_SHAPES * N_SEGMENT_SETTINGS; i++) {
        const char *segments = segment_settings[i % N_SEGMENT_SETTINGS];
        set_segments(segments);
        ScanData s = scan_data(scan_shapes[i / N_SEGMENT_SETTINGS]);
        char shape[128], what[64];
        scan_shape_name(shape, sizeof shape, s.m);
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), " segments=%s", segments ? segments : "auto");
        ScanGrads g = scan_grads_random(&s);
        ScanGrads d = scan_grads_to_device(&s, &g);
        if (write) {
            memset(g.du, 0, s.n_seq * sizeof(float));
            memset(g.ddelta, 0, s.n_seq * sizeof(float));
            CUDA_CHECK(cudaFree(d.du));
            CUDA_CHECK(cudaFree(d.ddelta));
            d.du = cuda_test_device_poisoned(s.n_seq);
            d.ddelta = cuda_test_device_poisoned(s.n_seq);
        }
        float *states = cpu_forward_backward(&s, &g);
        if (mode == BWD_WRITE_SOFTPLUS)
            for (size_t e = 0; e < s.n_seq; e++) g.ddelta[e] *= -expm1f(-s.delta[e]);
        float *d_states = cuda_test_device_copy(states, s.n_states);
        cuda_backward(&s, &d, d_states, mode);
        const struct { const char *name; const float *got, *want; size_t n; } grads[] = {
            {"du", d.du, g.du, s.n_seq},          {"ddelta", d.ddelta, g.ddelta, s.n_seq},
            {"dA", d.dA, g.dA, s.n_A},            {"dB", d.dB, g.dB, s.n_bc},
            {"dC", d.dC, g.dC, s.n_bc},           {"dD", d.dD, g.dD, (size_t)s.m.channels}};
        for (size_t k = 0; k < sizeof grads / sizeof grads[0]; k++) {
            snprintf(what, sizeof what, "%s %s", op, grads[k].name);
            cuda_test_check_device_close(what, shape, grads[k].got, grads[k].want, grads[k].n, BACKWARD_TOL);
        }
        free(states);
        CUDA_CHECK(cudaFree(d_states));
        scan_grads_free(&g, 0);
        scan_grads_free(&d, 1);
        scan_data_free(&s);
    }
    set_segments(NULL);
}

START_TEST(test_scan_backward_accumulates_like_cpu) { check_backward_every_shape(BWD_ACCUMULATE); }
END_TEST

/* selective_scan_backward_write_cuda writes du and dδ (from a poisoned start they must equal
 * the CPU's from zero) while dA, dB, dC, dD still accumulate onto their random start. */
START_TEST(test_scan_backward_write_overwrites_du_and_ddelta) { check_backward_every_shape(BWD_WRITE); }
END_TEST

/* The Mamba layer's call: the same, with dδ leaving through δ = softplus(a) as da. */
START_TEST(test_scan_backward_write_through_softplus) { check_backward_every_shape(BWD_WRITE_SOFTPLUS); }
END_TEST

/* NULL gradients are skipped and the others still come out right (only dδ and dB asked
 * for), and two runs from the same start give the same bits (fixed-order sums, no atomics). */
START_TEST(test_scan_backward_skips_null_gradients_and_is_deterministic) {
    const ScanShape m = {3, 129, 80, 16, 64, 1};
    ScanData s = scan_data(m);
    char shape[96];
    scan_shape_name(shape, sizeof shape, m);
    float *y = braid_malloc(s.n_seq * sizeof(float), "y");
    float *states = braid_malloc(s.n_states * sizeof(float), "states");
    selective_scan_forward(y, states, s.u, s.delta, s.A, s.B, s.C, s.D, m.Bsz, m.T, m.channels, m.N, m.chunk);
    float *start_ddelta = cuda_test_host_normal(&rng, s.n_seq, 1.0f);
    float *start_dB = cuda_test_host_normal(&rng, s.n_bc, 1.0f);
    float *cpu_ddelta = cuda_test_host_copy(start_ddelta, s.n_seq);
    float *cpu_dB = cuda_test_host_copy(start_dB, s.n_bc);
    const size_t scratch_floats = selective_scan_backward_scratch_floats(m.Bsz, m.T, m.N, m.chunk, 1);
    float *scratch = braid_malloc(scratch_floats * sizeof(float), "scratch");
    selective_scan_backward(NULL, cpu_ddelta, NULL, cpu_dB, NULL, NULL, s.dy, s.u, s.delta, s.A, s.B, s.C,
                            s.D, states, m.Bsz, m.T, m.channels, m.N, m.chunk, scratch, scratch_floats);

    float *d_states = cuda_test_device_copy(states, s.n_states);
    float *d_ddelta = cuda_test_device_copy(start_ddelta, s.n_seq);
    float *d_dB = cuda_test_device_copy(start_dB, s.n_bc);
    ScanGrads only = {NULL, d_ddelta, NULL, d_dB, NULL, NULL};
    cuda_backward(&s, &only, d_states, BWD_ACCUMULATE);
    float *first_ddelta = cuda_test_host_from_device(d_ddelta, s.n_seq);
    float *first_dB = cuda_test_host_from_device(d_dB, s.n_bc);
    cuda_test_check_close("selective_scan_backward ddelta (others NULL)", shape, first_ddelta, cpu_ddelta,
                          s.n_seq, BACKWARD_TOL);
    cuda_test_check_close("selective_scan_backward dB (others NULL)", shape, first_dB, cpu_dB, s.n_bc,
                          BACKWARD_TOL);

    CUDA_CHECK(cudaMemcpy(d_ddelta, start_ddelta, s.n_seq * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_dB, start_dB, s.n_bc * sizeof(float), cudaMemcpyHostToDevice));
    cuda_backward(&s, &only, d_states, BWD_ACCUMULATE);
    float *second_ddelta = cuda_test_host_from_device(d_ddelta, s.n_seq);
    float *second_dB = cuda_test_host_from_device(d_dB, s.n_bc);
    for (size_t i = 0; i < s.n_seq; i++)
        ck_assert_msg(memcmp(&first_ddelta[i], &second_ddelta[i], sizeof(float)) == 0,
                      "selective_scan_backward_cuda %s: ddelta[%zu] is %.9g, then %.9g on a second run",
                      shape, i, first_ddelta[i], second_ddelta[i]);
    for (size_t i = 0; i < s.n_bc; i++)
        ck_assert_msg(memcmp(&first_dB[i], &second_dB[i], sizeof(float)) == 0,
                      "selective_scan_backward_cuda %s: dB[%zu] is %.9g, then %.9g on a second run",
                      shape, i, first_dB[i], second_dB[i]);

    free(y); free(states); free(scratch); free(start_ddelta); free(start_dB); free(cpu_ddelta); free(cpu_dB);
    free(first_ddelta); free(first_dB); free(second_ddelta); free(second_dB);
    CUDA_CHECK(cudaFree(d_states)); CUDA_CHECK(cudaFree(d_ddelta)); CUDA_CHECK(cudaFree(d_dB));
    scan_data_free(&s);
}
END_TEST

/* ---------------------------------------------------------------- timing (--bench) */

static int compare_floats(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

#define BENCH_REPEATS 25
#define BENCH_BANDWIDTH 3.0e12   /* bytes/s: the H100's measured device-to-device copy */

typedef struct BenchArgs {
    float *y, *states, *u, *delta, *A, *B, *C, *D, *dy, *du, *ddelta, *dA, *dB, *dC, *dD, *scratch;
    size_t scratch_floats;
    int Bsz, T, channels, N, chunk;
} BenchArgs;

static void bench_forward(const BenchArgs *a) {
    selective_scan_forward_cuda(a->y, a->states, a->u, a->delta, a->A, a->B, a->C, a->D, a->Bsz, a->T,
                                a->channels, a->N, a->chunk, stream);
}

static void bench_backward(const BenchArgs *a) {
    selective_scan_backward_cuda(a->du, a->ddelta, a->dA, a->dB, a->dC, a->dD, a->dy, a->u, a->delta,
                                 a->A, a->B, a->C, a->D, a->states, a->Bsz, a->T, a->channels, a->N,
                                 a->chunk, a->scratch, a->scratch_floats, stream);
}

/* The Mamba layer's backward before and after selective_scan_backward_write_cuda: du and dδ
 * zeroed, then accumulated into; or written. */
static void bench_backward_zeroed(const BenchArgs *a) {
    const size_t btc = (size_t)a->Bsz * a->T * a->channels;
    CUDA_CHECK(cudaMemsetAsync(a->du, 0, btc * sizeof(float), stream));
    CUDA_CHECK(cudaMemsetAsync(a->ddelta, 0, btc * sizeof(float), stream));
    bench_backward(a);
}

static void bench_backward_write(const BenchArgs *a) {
    selective_scan_backward_write_cuda(a->du, a->ddelta, a->dA, a->dB, a->dC, a->dD, a->dy, a->u, a->delta,
                                       a->A, a->B, a->C, a->D, a->states, a->Bsz, a->T, a->channels, a->N,
                                       a->chunk, a->scratch, a->scratch_floats, 0, stream);
}

/* Median of BENCH_REPEATS timed calls after 3 untimed ones, in milliseconds. */
static void time_it(const char *name, void (*fn)(const BenchArgs *), const BenchArgs *a, double floor_bytes) {
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    for (int i = 0; i < 3; i++) fn(a);
    float ms[BENCH_REPEATS];
    for (int i = 0; i < BENCH_REPEATS; i++) {
        CUDA_CHECK(cudaEventRecord(start, stream));
        fn(a);
        CUDA_CHECK(cudaEventRecord(stop, stream));
        CUDA_CHECK(cudaEventSynchronize(stop));
        CUDA_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
    }
    qsort(ms, BENCH_REPEATS, sizeof ms[0], compare_floats);
    const double median = ms[BENCH_REPEATS / 2], floor_ms = floor_bytes / BENCH_BANDWIDTH * 1e3;
    printf("bench %-22s median %8.3f ms (min %.3f, max %.3f, %d runs) | floor %7.1f MB / 3.0 TB/s = "
           "%6.3f ms | achieved %6.0f GB/s | time / floor %.2fx\n",
           name, median, ms[0], ms[BENCH_REPEATS - 1], BENCH_REPEATS, floor_bytes / 1e6, floor_ms,
           floor_bytes / (median * 1e-3) / 1e9, median / floor_ms);
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
}

static float *bench_device(size_t n, float lo, float hi) {
    float *h = cuda_test_host_uniform(&rng, n, lo, hi), *d = cuda_test_device_copy(h, n);
    free(h);
    return d;
}

static int run_bench(int Bsz, int T, int channels, int N, int chunk) {
    BenchArgs a = {0};
    a.Bsz = Bsz; a.T = T; a.channels = channels; a.N = N; a.chunk = chunk;
    const size_t btc = (size_t)a.Bsz * a.T * a.channels, btn = (size_t)a.Bsz * a.T * a.N;
    const size_t cn = (size_t)a.channels * a.N;
    const size_t n_states = (size_t)a.Bsz * selective_scan_n_chunks(a.T, a.chunk) * cn;
    float *A = host_scan_A(a.channels, a.N);
    a.A = cuda_test_device_copy(A, cn);
    free(A);
    a.u = bench_device(btc, -1.0f, 1.0f); a.delta = bench_device(btc, 0.001f, 0.5f);
    a.dy = bench_device(btc, -1.0f, 1.0f);
    a.B = bench_device(btn, -1.0f, 1.0f); a.C = bench_device(btn, -1.0f, 1.0f);
    a.D = bench_device(a.channels, 0.5f, 1.5f);
    a.y = cuda_test_device_alloc(btc * sizeof(float));
    a.states = cuda_test_device_alloc(n_states * sizeof(float));
    a.du = cuda_test_device_alloc(btc * sizeof(float));
    a.ddelta = cuda_test_device_alloc(btc * sizeof(float));
    a.dA = cuda_test_device_alloc(cn * sizeof(float));
    a.dB = cuda_test_device_alloc(btn * sizeof(float));
    a.dC = cuda_test_device_alloc(btn * sizeof(float));
    a.dD = cuda_test_device_alloc(a.channels * sizeof(float));
    CUDA_CHECK(cudaMemset(a.du, 0, btc * sizeof(float)));
    CUDA_CHECK(cudaMemset(a.ddelta, 0, btc * sizeof(float)));
    a.scratch_floats = selective_scan_backward_cuda_scratch_floats(a.Bsz, a.T, a.channels, a.N);
    a.scratch = cuda_test_device_alloc(a.scratch_floats * sizeof(float));
    /* bytes that must move: forward reads u, δ, B, C, A, D once, writes y and the chunk
     * states once; backward reads dy, u, δ, B, C, A, D, the chunk states once, and reads and
     * writes du, dδ, dB, dC, dA, dD once (it accumulates into them) */
    const double f = sizeof(float);
    const double fwd = f * (3.0 * btc + 2.0 * btn + cn + a.channels + n_states);
    const double bwd = f * (3.0 * btc + 2.0 * btn + cn + a.channels + n_states +
                            2.0 * (2.0 * btc + 2.0 * btn + cn + a.channels));
    printf("bench shape: B=%d T=%d di=%d N=%d chunk=%d; backward scratch %.1f MB (partials of dB, dC "
           "per channel block: written and read once more, not in the floor)\n",
           a.Bsz, a.T, a.channels, a.N, a.chunk, a.scratch_floats * f / 1e6);
    time_it("selective_scan_fwd", bench_forward, &a, fwd);
    time_it("selective_scan_bwd", bench_backward, &a, bwd);
    /* (du, dδ zeroed: written once more; written by the scan: not read) */
    time_it("selective_scan_bwd_zeroed", bench_backward_zeroed, &a, bwd + f * 2.0 * btc);
    time_it("selective_scan_bwd_write", bench_backward_write, &a, bwd - f * 2.0 * btc);
    float *all[] = {a.y, a.states, a.u, a.delta, a.A, a.B, a.C, a.D, a.dy, a.du, a.ddelta, a.dA, a.dB, a.dC, a.dD, a.scratch};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) CUDA_CHECK(cudaFree(all[i]));
    return EXIT_SUCCESS;
}

/* ---------------------------------------------------------------- suite */

static Suite *cuda_scan_suite(void) {
    Suite *s = suite_create("cuda_scan");
    TCase *tc = tcase_create("cuda_vs_cpu");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_conv1d_forward_matches_cpu);
    tcase_add_test(tc, test_conv1d_backward_accumulates_like_cpu);
    tcase_add_test(tc, test_scan_forward_matches_cpu);
    tcase_add_test(tc, test_scan_backward_accumulates_like_cpu);
    tcase_add_test(tc, test_scan_backward_write_overwrites_du_and_ddelta);
    tcase_add_test(tc, test_scan_backward_write_through_softplus);
    tcase_add_test(tc, test_scan_backward_skips_null_gradients_and_is_deterministic);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("test_cuda_scan: no CUDA device — skipped\n");
        return 77;
    }
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("test_cuda_scan: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    rng_seed(&rng, 8);
    CUDA_CHECK(cudaStreamCreate(&stream));
    int failed = 0;
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        /* --bench [B T di N chunk]: jamba-small's Mamba shape by default */
        int shape[5] = {8, 2048, 1536, 16, 64};
        for (int i = 0; i < 5 && 2 + i < argc; i++) shape[i] = atoi(argv[2 + i]);
        if (shape[0] < 1 || shape[1] < 1 || shape[2] < 1 || shape[3] < 1 || shape[3] > 32 || shape[4] < 1) {
            fprintf(stderr, "test_cuda_scan --bench B T di N chunk: positive sizes, N ≤ 32\n");
            return 2;
        }
        failed = run_bench(shape[0], shape[1], shape[2], shape[3], shape[4]) != EXIT_SUCCESS;
    } else {
        SRunner *sr = srunner_create(cuda_scan_suite());
        srunner_set_fork_status(sr, CK_NOFORK);   /* a CUDA context does not survive fork() */
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
