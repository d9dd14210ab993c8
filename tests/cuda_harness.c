/* cuda_harness.c — see cuda_harness.h. */
#include "cuda_harness.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "core/common.h"
#include "core/device.h"
#include "cuda/cuda_check.h"
#include "cuda/ops_cuda.h"
#include "layer_harness.h"

int cuda_harness_have_gpu(const char *test) {
    if (device_cuda_available()) {
        printf("%s: %s\n", test, device_cuda_name());
        return 1;
    }
    printf("%s: no CUDA device — skipped\n", test);
    return 0;
}

int cuda_test_main(const char *test, Suite *(*make_suite)(void)) {
    if (!cuda_harness_have_gpu(test)) return 77;
    ops_cuda_init();
    SRunner *sr = srunner_create(make_suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    ops_cuda_shutdown();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

double cuda_rel_err(const float *a, const float *b, const float *a0, const float *b0, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = a[i] - (a0 ? a0[i] : 0.0f), y = b[i] - (b0 ? b0[i] : 0.0f);
        double d = fabs(x - y);
        if (!(d <= num)) num = isnan(d) ? INFINITY : d;   /* a NaN anywhere fails */
        if (fabs(y) > den) den = fabs(y);
    }
    return num / (den > 0.0 ? den : 1.0);
}

static void *upload_copy(const float *host, size_t n, const char *what) {
    float *d = device_alloc(DEVICE_CUDA, n * sizeof(float), what);
    device_upload(DEVICE_CUDA, d, host, n * sizeof(float));
    return d;
}

int cuda_layer_check(const LayerKind *kind, const Config *cfg, int B, int T, unsigned long seed,
                     double fwd_tol, double bwd_tol, const char *what) {
    return cuda_layer_check_prepared(kind, cfg, B, T, seed, fwd_tol, bwd_tol, what, NULL, NULL);
}

int cuda_layer_check_prepared(const LayerKind *kind, const Config *cfg, int B, int T,
                              unsigned long seed, double fwd_tol, double bwd_tol, const char *what,
                              void (*prepare)(struct LayerHarness *h, void *arg), void *arg) {
    BRAID_CHECK(kind->forward_cuda && kind->backward_cuda, "%s: kind '%s' has no CUDA path", what,
                kind->name);
    LayerHarness *h = harness_create(kind, cfg, B, T, seed, 0.05f);
    if (prepare) prepare(h, arg);
    size_t n = (size_t)B * T * h->d, P = h->params.total;
    Rng rng;
    rng_seed(&rng, seed + 17);
    rng_fill_normal(&rng, h->dy, n, 1.0f);
    rng_fill_normal(&rng, h->dx, n, 0.5f);
    rng_fill_normal(&rng, h->grad_data, P, 0.5f);
    float *dx0 = braid_malloc(n * sizeof(float), "dx0"), *g0 = braid_malloc(P * sizeof(float), "g0");
    memcpy(dx0, h->dx, n * sizeof(float));
    memcpy(g0, h->grad_data, P * sizeof(float));

    /* the device layer: same kind and config, its own init and sizes */
    Layer L;
    memset(&L, 0, sizeof L);
    L.kind = kind; L.cfg = cfg; L.index = 0; L.d_model = h->d; L.device = DEVICE_CUDA;
    snprintf(L.prefix, sizeof L.prefix, "%s", h->layer.prefix);
    if (kind->init) kind->init(&L);
    ParamList pl = {0};
    kind->declare_params(&L, &pl);
    BRAID_CHECK(pl.total == P && pl.count == h->params.count, "%s: CUDA layer declares other params", what);
    L.n_params = pl.count;
    float *dparams = upload_copy(h->param_data, P, "device params");
    float *dgrads = upload_copy(g0, P, "device grads");
    L.params = braid_calloc((size_t)pl.count, sizeof(float *), "param pointers");
    L.grads = braid_calloc((size_t)pl.count, sizeof(float *), "grad pointers");
    for (int i = 0; i < pl.count; i++) {
        L.params[i] = dparams + pl.items[i].offset;
        L.grads[i] = dgrads + pl.items[i].offset;
    }
    size_t saved = kind->saved_floats ? kind->saved_floats(&L, B, T) : 0;
    size_t scratch = kind->scratch_floats ? kind->scratch_floats(&L, B, T) : 0;
    L.saved = device_alloc(DEVICE_CUDA, (saved + 1) * sizeof(float), "device saved");
    Ctx ctx = {.device = DEVICE_CUDA, .scratch_floats = scratch, .training = 1, .aux_grad_scale = 1.0f};
    ctx.scratch = device_alloc(DEVICE_CUDA, (scratch + 1) * sizeof(float), "device scratch");
    /* poison both so a kernel reading what it never wrote shows up as NaN */
    CUDA_CHECK(cudaMemset(L.saved, 0xFF, (saved + 1) * sizeof(float)));
    CUDA_CHECK(cudaMemset(ctx.scratch, 0xFF, (scratch + 1) * sizeof(float)));
    float *dxin = upload_copy(h->x, n, "device x");
    float *dy_dev = upload_copy(h->dy, n, "device dy");
    float *dx_dev = upload_copy(dx0, n, "device dx");
    float *y_dev = device_alloc(DEVICE_CUDA, n * sizeof(float), "device y");
    CUDA_CHECK(cudaMemset(y_dev, 0xFF, n * sizeof(float)));

    /* CPU reference, then the device */
    harness_forward(h);
    harness_backward(h);
    L.aux_loss = 0.0;
    kind->forward_cuda(&L, y_dev, dxin, B, T, &ctx);
    double aux_cuda = L.aux_loss;
    float *stats_cuda = NULL;
    if (L.stats_count > 0) {
        stats_cuda = braid_malloc((size_t)L.stats_count * sizeof(float), "stats");
        memcpy(stats_cuda, L.stats, (size_t)L.stats_count * sizeof(float));
    }
    kind->backward_cuda(&L, dx_dev, dy_dev, dxin, B, T, &ctx);
    CUDA_CHECK(cudaDeviceSynchronize());
    float *y = braid_malloc(n * sizeof(float), "y"), *dx = braid_malloc(n * sizeof(float), "dx");
    float *g = braid_malloc(P * sizeof(float), "g");
    device_download(DEVICE_CUDA, y, y_dev, n * sizeof(float));
    device_download(DEVICE_CUDA, dx, dx_dev, n * sizeof(float));
    device_download(DEVICE_CUDA, g, dgrads, P * sizeof(float));

    int ok = 1;
    double e = cuda_rel_err(y, h->y, NULL, NULL, n);
    printf("  %-28s %-26s %.2e%s\n", what, "y", e, e <= fwd_tol ? "" : "  FAIL");
    ok &= e <= fwd_tol;
    e = cuda_rel_err(dx, h->dx, dx0, dx0, n);
    printf("  %-28s %-26s %.2e%s\n", what, "dx", e, e <= bwd_tol ? "" : "  FAIL");
    ok &= e <= bwd_tol;
    for (int i = 0; i < pl.count; i++) {
        const ParamDecl *pd = &pl.items[i];
        e = cuda_rel_err(g + pd->offset, h->grad_data + pd->offset, g0 + pd->offset, g0 + pd->offset, pd->numel);
        printf("  %-28s d %-24s %.2e%s\n", what, pd->name + strlen(L.prefix) + 1, e,
               e <= bwd_tol ? "" : "  FAIL");
        ok &= e <= bwd_tol;
    }
    double aux_err = fabs(aux_cuda - h->aux_loss) / fmax(fabs(h->aux_loss), 1e-30);
    if (h->aux_loss != 0.0 || aux_cuda != 0.0) {
        printf("  %-28s %-26s %.2e%s\n", what, "aux_loss", aux_err, aux_err <= fwd_tol ? "" : "  FAIL");
        ok &= aux_err <= fwd_tol;
    }
    if (h->layer.stats_count > 0) {
        int same = L.stats_count == h->layer.stats_count;
        for (int i = 0; same && i < L.stats_count; i++) same = stats_cuda[i] == h->layer.stats[i];
        printf("  %-28s %-26s %s\n", what, h->layer.stats_name, same ? "equal" : "DIFFER  FAIL");
        ok &= same;
    }

    free(y); free(dx); free(g); free(dx0); free(g0); free(stats_cuda);
    device_free(DEVICE_CUDA, dparams); device_free(DEVICE_CUDA, dgrads);
    device_free(DEVICE_CUDA, L.saved); device_free(DEVICE_CUDA, ctx.scratch);
    device_free(DEVICE_CUDA, dxin); device_free(DEVICE_CUDA, dy_dev);
    device_free(DEVICE_CUDA, dx_dev); device_free(DEVICE_CUDA, y_dev);
    if (kind->destroy) kind->destroy(&L);
    free(L.params); free(L.grads);
    param_list_free(&pl);
    harness_free(h);
    return ok;
}

/* ---------------------------------------------------------------- op-level helpers */

float *cuda_test_host_normal(Rng *rng, size_t n, float scale) {
    float *p = braid_malloc(n * sizeof(float), "test tensor");
    rng_fill_normal(rng, p, n, scale);
    return p;
}

float *cuda_test_host_normal_nonzero(Rng *rng, size_t n, float scale) {
    float *x = cuda_test_host_normal(rng, n, scale);
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) < 1e-3f) x[i] = x[i] < 0.0f ? -1e-3f : 1e-3f;
    return x;
}

float *cuda_test_host_uniform(Rng *rng, size_t n, float lo, float hi) {
    float *p = braid_malloc(n * sizeof(float), "test tensor");
    rng_fill_uniform(rng, p, n, lo, hi);
    return p;
}

float *cuda_test_host_copy(const float *x, size_t n) {
    float *p = braid_malloc(n * sizeof(float), "test tensor");
    memcpy(p, x, n * sizeof(float));
    return p;
}

void *cuda_test_device_alloc(size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes > 0 ? bytes : 1));
    return p;
}

float *cuda_test_device_copy(const float *x, size_t n) {
    float *p = cuda_test_device_alloc(n * sizeof(float));
    CUDA_CHECK(cudaMemcpy(p, x, n * sizeof(float), cudaMemcpyHostToDevice));
    return p;
}

float *cuda_test_device_poisoned(size_t n) {
    float *p = cuda_test_device_alloc(n * sizeof(float));
    CUDA_CHECK(cudaMemset(p, 0xFF, n * sizeof(float)));
    return p;
}

uint16_t cuda_test_bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);   /* half the dropped unit, then keep the top */
}

void *cuda_test_device_poisoned_bytes(size_t bytes) {
    void *p = cuda_test_device_alloc(bytes);
    CUDA_CHECK(cudaMemset(p, 0xFF, bytes));
    return p;
}

void cuda_test_copy_rows_strided(void *dst, size_t ld, const void *src, size_t rows, size_t cols, size_t size) {
    CUDA_CHECK(cudaMemcpy2D(dst, ld * size, src, cols * size, cols * size, rows, cudaMemcpyDeviceToDevice));
}

void cuda_test_check_same_bits(const char *op, const char *shape, const void *d_got, const void *d_want,
                               size_t bytes) {
    unsigned char *got = braid_malloc(bytes, "got"), *want = braid_malloc(bytes, "want");
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(got, d_got, bytes, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(want, d_want, bytes, cudaMemcpyDeviceToHost));
    size_t first = 0;
    while (first < bytes && got[first] == want[first]) first++;
    printf("  %-40s %-34s %s\n", op, shape, first == bytes ? "same bits" : "DIFFERENT BITS");
    ck_assert_msg(first == bytes, "%s (%s): byte %zu of %zu is 0x%02x, the reference's is 0x%02x", op, shape,
                  first, bytes, first < bytes ? got[first] : 0, first < bytes ? want[first] : 0);
    free(got); free(want);
}

float *cuda_test_host_from_device(const float *d, size_t n) {
    float *p = braid_malloc(n * sizeof(float), "test tensor");
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(p, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    return p;
}

CudaComparison cuda_test_compare(const float *got, const float *want, size_t n) {
    CudaComparison c = {0, 0, 0, 0.0, 0.0};
    for (size_t i = 0; i < n; i++) c.max_want = fmax(c.max_want, fabs((double)want[i]));
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i])) {
            if (c.n_nan++ == 0) c.first_nan = i;
            continue;
        }
        double diff = fabs((double)got[i] - (double)want[i]);
        if (diff > c.worst_diff) { c.worst_diff = diff; c.worst = i; }
    }
    return c;
}

void cuda_test_check_close(const char *op, const char *shape, const float *got, const float *want,
                           size_t n, double tol) {
    CudaComparison c = cuda_test_compare(got, want, n);
    /* the observed error, for the log (how much room each tolerance leaves) */
    printf("  %-40s %-44s worst |diff|/max %.2e (tol %.0e)\n", op, shape,
           c.max_want > 0 ? c.worst_diff / c.max_want : c.worst_diff, tol);
    ck_assert_msg(c.n_nan == 0, "%s %s: %zu of %zu elements not written (still NaN), first at %zu",
                  op, shape, c.n_nan, n, c.first_nan);
    ck_assert_msg(c.worst_diff <= tol * c.max_want,
                  "%s %s: element %zu is %.8g, expected %.8g (|diff| %.3g > %.3g = %.0e of max %.4g)",
                  op, shape, c.worst, got[c.worst], want[c.worst], c.worst_diff,
                  tol * c.max_want, tol, c.max_want);
}

void cuda_test_check_device_close(const char *op, const char *shape, const float *device,
                                  const float *want, size_t n, double tol) {
    float *got = cuda_test_host_from_device(device, n);
    cuda_test_check_close(op, shape, got, want, n, tol);
    free(got);
}
