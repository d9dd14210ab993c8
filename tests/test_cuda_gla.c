/* test_cuda_gla.c — the CUDA GLA chunk kernel (src/cuda/gla_cuda.h) against the CPU kernel
 * of layers/gla_cpu.h, and the GLA layer's CUDA path against its CPU path in all three
 * modes (tests/cuda_harness.h).
 *
 * Kernel: q, k, v normal; log α uniform in a range per shape (mild, strong enough that an
 * e^{−b} factorisation would overflow, and 0 = linear attention). Shapes cover T = 1, 13,
 * 40, 50, 64, 77, 100, 129, 300; chunk 1, 4, 16, 24 (not a multiple of the kernel's
 * 16-token tile), 32, 64 and chunk > T; dk 3 … 256 (the limit); dv 5 … 128, including
 * widths that leave the last 32-column slice part empty (33, 40, 70).
 * Outputs the kernel WRITES (o, chunk_states, final_state) are poisoned first (bytes 0xFF,
 * a NaN), so an unwritten element fails; gradients it ACCUMULATES into start from the same
 * random values on both sides; the backward's scratch is poisoned too, so reading a
 * partial sum or tile state it never wrote fails. The CUDA backward runs on the CPU's
 * chunk states (uploaded), so the backward alone is compared.
 * Layer: T = 1, 13, 64, 129, 300 with chunk 16 / 64 (ragged), B 1–3, heads 1/2/4,
 * d_model 16…128 (dk up to 128, dv up to 128), gate rank 4 / 16.
 * Tolerances, |cuda − cpu| ≤ tol · max|cpu| per tensor: 1e-4 forward, 1e-3 backward (sums
 * in other orders: tiles of 16 inside the CPU's chunks, slices of 32 value columns added
 * afterwards, cuBLAS against OpenBLAS).
 * No GPU: prints that it skipped and exits 77 (CTest: skipped). Check runs in-process
 * (CK_NOFORK): a CUDA context does not survive fork(). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "core/common.h"
#include "core/rng.h"
#include "cuda/cuda_check.h"
#include "cuda/gla_cuda.h"
#include "cuda/ops_cuda.h"
#include "cuda_harness.h"
#include "layers/gla_cpu.h"
#include "models/config.h"

extern const LayerKind gla_kind;

#define FORWARD_TOL 1e-4
#define BACKWARD_TOL 1e-3

static Rng rng;

/* ---------------------------------------------------------------- the kernel */

typedef struct KernelShape {
    int B, T, H, dk, dv, chunk;
    float decay_lo, decay_hi;   /* log α uniform in [lo, hi] */
} KernelShape;

static const KernelShape kernel_shapes[] = {
    {1, 1, 1, 4, 5, 16, -0.6f, -0.02f},         /* one token */
    {2, 13, 2, 8, 8, 4, -0.6f, -0.02f},         /* chunk 4 < tile; last chunk of 1 */
    {2, 64, 2, 16, 32, 64, -0.6f, -0.02f},      /* one chunk of 4 whole tiles */
    {3, 129, 4, 32, 40, 16, -0.3f, -0.01f},     /* last chunk of 1 token; dv 40 = 32 + 8 */
    {1, 300, 1, 128, 128, 64, -0.2f, -0.001f},  /* dk = dv = 128; last chunk 44 = 16+16+12 */
    {2, 300, 2, 64, 64, 24, -0.5f, -0.01f},     /* chunk 24 = tiles of 16 + 8 */
    {1, 100, 2, 3, 70, 1, -0.6f, -0.02f},       /* chunk 1; odd dk; dv 70 = 32+32+6 */
    {2, 40, 2, 4, 5, 16, -12.0f, -4.0f},        /* b down to ≈ −190 in a chunk */
    {1, 129, 1, 16, 16, 32, 0.0f, 0.0f},        /* no decay: linear attention (log α = 0) */
    {2, 77, 2, 256, 16, 64, -0.1f, -0.001f},    /* dk at the kernel's limit */
    {1, 50, 3, 8, 33, 64, -0.6f, -0.02f},       /* chunk > T (4 tiles); dv 33 = 32 + 1 */
};
#define N_KERNEL_SHAPES (sizeof kernel_shapes / sizeof kernel_shapes[0])

typedef struct KernelData {
    KernelShape m;
    size_t nk, nv, ns, nf;      /* q-like, v-like, chunk states, final state */
    float scale;
    float *q, *k, *v, *log_alpha, *dout;
    float *d_q, *d_k, *d_v, *d_log_alpha, *d_dout;
} KernelData;

static KernelData kernel_data(KernelShape m) {
    KernelData s;
    s.m = m;
    s.nk = (size_t)m.B * m.T * m.H * m.dk;
    s.nv = (size_t)m.B * m.T * m.H * m.dv;
    s.ns = (size_t)m.B * m.H * gla_chunk_count(m.T, m.chunk) * m.dk * m.dv;
    s.nf = (size_t)m.B * m.H * m.dk * m.dv;
    s.scale = 1.0f / sqrtf((float)m.dk);
    s.q = cuda_test_host_normal(&rng, s.nk, 1.0f);
    s.k = cuda_test_host_normal(&rng, s.nk, 1.0f);
    s.v = cuda_test_host_normal(&rng, s.nv, 1.0f);
    s.log_alpha = cuda_test_host_uniform(&rng, s.nk, m.decay_lo, m.decay_hi);
    s.dout = cuda_test_host_normal(&rng, s.nv, 1.0f);
    s.d_q = cuda_test_device_copy(s.q, s.nk);
    s.d_k = cuda_test_device_copy(s.k, s.nk);
    s.d_v = cuda_test_device_copy(s.v, s.nv);
    s.d_log_alpha = cuda_test_device_copy(s.log_alpha, s.nk);
    s.d_dout = cuda_test_device_copy(s.dout, s.nv);
    return s;
}

static void kernel_data_free(KernelData *s) {
    float *host[] = {s->q, s->k, s->v, s->log_alpha, s->dout};
    float *device[] = {s->d_q, s->d_k, s->d_v, s->d_log_alpha, s->d_dout};
    for (int i = 0; i < 5; i++) {
        free(host[i]);
        CUDA_CHECK(cudaFree(device[i]));
    }
}

static void kernel_shape_name(char *out, size_t size, KernelShape m) {
    snprintf(out, size, "B=%d T=%d H=%d dk=%d dv=%d chunk=%d logα∈[%g,%g]", m.B, m.T, m.H, m.dk, m.dv,
             m.chunk, m.decay_lo, m.decay_hi);
}

/* CPU forward: o, chunk states, final state (caller frees). */
static void cpu_forward(const KernelData *s, float **o, float **states, float **final_state) {
    const KernelShape m = s->m;
    *o = braid_malloc(s->nv * sizeof(float), "o");
    *states = braid_malloc(s->ns * sizeof(float), "states");
    *final_state = braid_malloc(s->nf * sizeof(float), "final state");
    float *scratch = braid_malloc(gla_chunk_scratch_floats(m.B, m.H, m.dk, m.dv, m.chunk) * sizeof(float),
                                  "cpu scratch");
    gla_chunk_forward(*o, *states, *final_state, s->q, s->k, s->v, s->log_alpha, m.B, m.T, m.H, m.dk, m.dv,
                      m.chunk, s->scale, scratch);
    free(scratch);
}

START_TEST(test_kernel_forward_matches_cpu) {
    for (size_t i = 0; i < N_KERNEL_SHAPES; i++) {
        KernelData s = kernel_data(kernel_shapes[i]);
        const KernelShape m = s.m;
        char shape[128];
        kernel_shape_name(shape, sizeof shape, m);
        float *o, *states, *final_state;
        cpu_forward(&s, &o, &states, &final_state);
        float *d_o = cuda_test_device_poisoned(s.nv), *d_states = cuda_test_device_poisoned(s.ns);
        float *d_final = cuda_test_device_poisoned(s.nf);
        gla_chunk_forward_cuda(d_o, d_states, d_final, s.d_q, s.d_k, s.d_v, s.d_log_alpha, m.B, m.T, m.H,
                               m.dk, m.dv, m.chunk, s.scale, NULL, 0);
        cuda_test_check_device_close("gla_chunk_forward o", shape, d_o, o, s.nv, FORWARD_TOL);
        /* chunk 0's start state is exactly zero; compared against max|cpu| it still counts */
        cuda_test_check_device_close("gla_chunk_forward chunk_states", shape, d_states, states, s.ns,
                                     FORWARD_TOL);
        cuda_test_check_device_close("gla_chunk_forward final_state", shape, d_final, final_state, s.nf,
                                     FORWARD_TOL);
        free(o); free(states); free(final_state);
        CUDA_CHECK(cudaFree(d_o)); CUDA_CHECK(cudaFree(d_states)); CUDA_CHECK(cudaFree(d_final));
        kernel_data_free(&s);
    }
}
END_TEST

/* No final state asked for (as the layer calls it): o and the chunk states still right. */
START_TEST(test_kernel_forward_without_final_state) {
    KernelData s = kernel_data(kernel_shapes[3]);
    const KernelShape m = s.m;
    char shape[128];
    kernel_shape_name(shape, sizeof shape, m);
    float *o, *states, *final_state;
    cpu_forward(&s, &o, &states, &final_state);
    float *d_o = cuda_test_device_poisoned(s.nv), *d_states = cuda_test_device_poisoned(s.ns);
    gla_chunk_forward_cuda(d_o, d_states, NULL, s.d_q, s.d_k, s.d_v, s.d_log_alpha, m.B, m.T, m.H, m.dk,
                           m.dv, m.chunk, s.scale, NULL, 0);
    cuda_test_check_device_close("gla_chunk_forward o (no final)", shape, d_o, o, s.nv, FORWARD_TOL);
    cuda_test_check_device_close("gla_chunk_forward states (no final)", shape, d_states, states, s.ns,
                                 FORWARD_TOL);
    free(o); free(states); free(final_state);
    CUDA_CHECK(cudaFree(d_o)); CUDA_CHECK(cudaFree(d_states));
    kernel_data_free(&s);
}
END_TEST

typedef struct KernelGrads { float *dq, *dk, *dv, *dlog; } KernelGrads;

static KernelGrads grads_random(const KernelData *s) {
    KernelGrads g = {cuda_test_host_normal(&rng, s->nk, 1.0f), cuda_test_host_normal(&rng, s->nk, 1.0f),
                     cuda_test_host_normal(&rng, s->nv, 1.0f), cuda_test_host_normal(&rng, s->nk, 1.0f)};
    return g;
}

static KernelGrads grads_to_device(const KernelData *s, const KernelGrads *g) {
    KernelGrads d = {cuda_test_device_copy(g->dq, s->nk), cuda_test_device_copy(g->dk, s->nk),
                     cuda_test_device_copy(g->dv, s->nv), cuda_test_device_copy(g->dlog, s->nk)};
    return d;
}

static void grads_free(KernelGrads *g, int on_device) {
    float *all[] = {g->dq, g->dk, g->dv, g->dlog};
    for (int i = 0; i < 4; i++) {
        if (on_device) CUDA_CHECK(cudaFree(all[i]));
        else free(all[i]);
    }
}

/* The CUDA backward from the given device chunk states, with a poisoned scratch. */
static void cuda_backward(const KernelData *s, float *dq, float *dk, float *dv, float *dlog,
                          const float *d_states) {
    const KernelShape m = s->m;
    const size_t scratch_floats = gla_chunk_backward_cuda_scratch_floats(m.B, m.T, m.H, m.dk, m.dv, m.chunk);
    float *d_scratch = cuda_test_device_poisoned(scratch_floats);
    gla_chunk_backward_cuda(dq, dk, dv, dlog, s->d_dout, s->d_q, s->d_k, s->d_v, s->d_log_alpha, d_states,
                            m.B, m.T, m.H, m.dk, m.dv, m.chunk, s->scale, d_scratch, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaFree(d_scratch));
}

/* The CPU backward (into g) on the CPU's forward; returns the CPU chunk states. */
static float *cpu_forward_backward(const KernelData *s, KernelGrads *g, int with_dlog) {
    const KernelShape m = s->m;
    float *o, *states, *final_state;
    cpu_forward(s, &o, &states, &final_state);
    float *scratch = braid_malloc(gla_chunk_scratch_floats(m.B, m.H, m.dk, m.dv, m.chunk) * sizeof(float),
                                  "cpu scratch");
    gla_chunk_backward(g->dq, g->dk, g->dv, with_dlog ? g->dlog : NULL, s->dout, s->q, s->k, s->v,
                       s->log_alpha, states, m.B, m.T, m.H, m.dk, m.dv, m.chunk, s->scale, scratch);
    free(scratch); free(o); free(final_state);
    return states;
}

/* Backward from the gradients g (host; their device copy starts the CUDA side) on both
 * devices, then dq, dk, dv, dlog compared under `names` (one per tensor); frees g. */
static void check_backward_from(KernelData *s, KernelGrads *g, const char *shape, const char *const names[4]) {
    KernelGrads d = grads_to_device(s, g);
    float *states = cpu_forward_backward(s, g, 1);
    float *d_states = cuda_test_device_copy(states, s->ns);
    cuda_backward(s, d.dq, d.dk, d.dv, d.dlog, d_states);
    cuda_test_check_device_close(names[0], shape, d.dq, g->dq, s->nk, BACKWARD_TOL);
    cuda_test_check_device_close(names[1], shape, d.dk, g->dk, s->nk, BACKWARD_TOL);
    cuda_test_check_device_close(names[2], shape, d.dv, g->dv, s->nv, BACKWARD_TOL);
    cuda_test_check_device_close(names[3], shape, d.dlog, g->dlog, s->nk, BACKWARD_TOL);
    free(states);
    CUDA_CHECK(cudaFree(d_states));
    grads_free(g, 0);
    grads_free(&d, 1);
}

START_TEST(test_kernel_backward_accumulates_like_cpu) {
    static const char *const names[4] = {"gla_chunk_backward dq", "gla_chunk_backward dk",
                                         "gla_chunk_backward dv", "gla_chunk_backward dlog_alpha"};
    for (size_t i = 0; i < N_KERNEL_SHAPES; i++) {
        KernelData s = kernel_data(kernel_shapes[i]);
        char shape[128];
        kernel_shape_name(shape, sizeof shape, s.m);
        KernelGrads g = grads_random(&s);
        check_backward_from(&s, &g, shape, names);
        kernel_data_free(&s);
    }
}
END_TEST

/* The increments alone against the CPU's, from zero gradients: a start of random values
 * (above) could hide an increment much smaller than them, e.g. one slice's share lost. */
START_TEST(test_kernel_backward_increments_match_cpu) {
    static const char *const names[4] = {"gla_chunk_backward dq (from 0)", "gla_chunk_backward dk (from 0)",
                                         "gla_chunk_backward dv (from 0)", "gla_chunk_backward dlog (from 0)"};
    const size_t picks[] = {3, 4, 6};   /* multi-slice shapes */
    for (size_t p = 0; p < sizeof picks / sizeof *picks; p++) {
        KernelData s = kernel_data(kernel_shapes[picks[p]]);
        char shape[128];
        kernel_shape_name(shape, sizeof shape, s.m);
        KernelGrads g = {calloc(s.nk, sizeof(float)), calloc(s.nk, sizeof(float)), calloc(s.nv, sizeof(float)),
                         calloc(s.nk, sizeof(float))};
        check_backward_from(&s, &g, shape, names);
        kernel_data_free(&s);
    }
}
END_TEST

/* grad_log_alpha = NULL (retention, linear) leaves dq, dk, dv right; two runs from the
 * same start give the same bits (fixed-order sums, no atomics). */
START_TEST(test_kernel_backward_without_dlog_is_deterministic) {
    KernelData s = kernel_data(kernel_shapes[5]);
    char shape[128];
    kernel_shape_name(shape, sizeof shape, s.m);
    KernelGrads g = grads_random(&s);
    float *start_dq = cuda_test_host_copy(g.dq, s.nk), *start_dk = cuda_test_host_copy(g.dk, s.nk);
    float *start_dv = cuda_test_host_copy(g.dv, s.nv);
    float *states = cpu_forward_backward(&s, &g, 0);
    float *d_states = cuda_test_device_copy(states, s.ns);
    float *d_dq = cuda_test_device_copy(start_dq, s.nk), *d_dk = cuda_test_device_copy(start_dk, s.nk);
    float *d_dv = cuda_test_device_copy(start_dv, s.nv);

    cuda_backward(&s, d_dq, d_dk, d_dv, NULL, d_states);
    float *first[3] = {cuda_test_host_from_device(d_dq, s.nk), cuda_test_host_from_device(d_dk, s.nk),
                       cuda_test_host_from_device(d_dv, s.nv)};
    cuda_test_check_close("gla_chunk_backward dq (no dlog)", shape, first[0], g.dq, s.nk, BACKWARD_TOL);
    cuda_test_check_close("gla_chunk_backward dk (no dlog)", shape, first[1], g.dk, s.nk, BACKWARD_TOL);
    cuda_test_check_close("gla_chunk_backward dv (no dlog)", shape, first[2], g.dv, s.nv, BACKWARD_TOL);

    CUDA_CHECK(cudaMemcpy(d_dq, start_dq, s.nk * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_dk, start_dk, s.nk * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_dv, start_dv, s.nv * sizeof(float), cudaMemcpyHostToDevice));
    cuda_backward(&s, d_dq, d_dk, d_dv, NULL, d_states);
    float *second[3] = {cuda_test_host_from_device(d_dq, s.nk), cuda_test_host_from_device(d_dk, s.nk),
                        cuda_test_host_from_device(d_dv, s.nv)};
    const char *names[3] = {"dq", "dk", "dv"};
    const size_t sizes[3] = {s.nk, s.nk, s.nv};
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < sizes[t]; i++)
            ck_assert_msg(memcmp(&first[t][i], &second[t][i], sizeof(float)) == 0,
                          "%s[%zu] differs between two identical runs (%.9g vs %.9g)", names[t], i,
                          first[t][i], second[t][i]);
        free(first[t]);
        free(second[t]);
    }
    free(start_dq); free(start_dk); free(start_dv); free(states);
    CUDA_CHECK(cudaFree(d_dq)); CUDA_CHECK(cudaFree(d_dk)); CUDA_CHECK(cudaFree(d_dv));
    CUDA_CHECK(cudaFree(d_states));
    grads_free(&g, 0);
    kernel_data_free(&s);
}
END_TEST

/* ---------------------------------------------------------------- the layer */

static const char *const MODES[] = {"gla", "retention", "linear"};

typedef struct LayerCase { int B, T, d, H, rank, chunk; float expand_k; } LayerCase;
static const LayerCase LAYER_CASES[] = {
    {1, 1, 16, 2, 4, 16, 0.5f},      /* one token */
    {2, 13, 16, 2, 4, 16, 0.5f},     /* the CPU tests' small shape; one ragged chunk */
    {3, 64, 64, 4, 16, 64, 0.5f},    /* one whole chunk; dk 8, dv 16 */
    {2, 129, 128, 4, 16, 64, 0.5f},  /* last chunk of 1 token; dk 16, dv 32 */
    {1, 300, 128, 1, 16, 64, 1.0f},  /* one head: dk = dv = 128, four value slices */
    {2, 300, 48, 2, 4, 16, 0.5f},    /* 19 chunks, the last of 12; dk 12, dv 24 */
};
#define N_LAYER_CASES (int)(sizeof LAYER_CASES / sizeof LAYER_CASES[0])

START_TEST(test_layer_matches_cpu) {
    const LayerCase *c = &LAYER_CASES[_i % N_LAYER_CASES];
    const char *mode = MODES[_i / N_LAYER_CASES];
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = c->d;
    cfg.model.gla.n_heads = c->H;
    cfg.model.gla.gate_rank = c->rank;
    cfg.model.gla.chunk = c->chunk;
    cfg.model.gla.expand_k = c->expand_k;
    snprintf(cfg.model.gla.mode, sizeof cfg.model.gla.mode, "%s", mode);
    char what[96];
    snprintf(what, sizeof what, "%s B%d T%d d%d H%d r%d c%d", mode, c->B, c->T, c->d, c->H, c->rank, c->chunk);
    ck_assert_msg(cuda_layer_check(&gla_kind, &cfg, c->B, c->T, 300 + _i, FORWARD_TOL, BACKWARD_TOL, what),
                  "%s: CUDA differs from CPU (see the table above)", what);
}
END_TEST

static Suite *cuda_gla_suite(void) {
    Suite *s = suite_create("cuda_gla");
    TCase *kernel = tcase_create("kernel");
    tcase_set_timeout(kernel, 300);
    tcase_add_test(kernel, test_kernel_forward_matches_cpu);
    tcase_add_test(kernel, test_kernel_forward_without_final_state);
    tcase_add_test(kernel, test_kernel_backward_accumulates_like_cpu);
    tcase_add_test(kernel, test_kernel_backward_increments_match_cpu);
    tcase_add_test(kernel, test_kernel_backward_without_dlog_is_deterministic);
    suite_add_tcase(s, kernel);
    TCase *layer = tcase_create("layer");
    tcase_set_timeout(layer, 300);
    tcase_add_loop_test(layer, test_layer_matches_cpu, 0, 3 * N_LAYER_CASES);
    suite_add_tcase(s, layer);
    return s;
}

int main(void) {
    rng_seed(&rng, 20261201);
    return cuda_test_main("test_cuda_gla", cuda_gla_suite);
}
