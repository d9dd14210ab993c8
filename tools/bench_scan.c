/* bench_scan.c — micro-benchmark of the CPU selective scan (src/layers/mamba_cpu.c):
 * median wall time of selective_scan_forward and selective_scan_backward at the shape of
 * DESIGN.md's CPU benchmark (one Mamba layer of d_model 64: B 64, T 64, d_inner 128,
 * N 16, chunk 64), at 1 and 2 OpenMP threads. Standalone, not part of CMake; built and
 * run (from the repository root) with the two lines below the comment.
 *
 * Inputs look like a layer at init: δ log-uniform in [0.001, 0.1] (what dt_proj's bias
 * gives), A = −(n+1) (A_log's init), u, B, C, dy normal. Under callgrind, run it with
 * repeats 1 and max_threads 1 (docs/performance-scan.md has the commands).
 *
 * It also prints checksums of the outputs of the last run (Σ|y|, Σ|du|, Σ|dδ|, …), so
 * that two builds of the kernel can be compared for equal results on this shape. */
//   cc -O3 -march=native -fopenmp -Isrc tools/bench_scan.c src/layers/mamba_cpu.c src/core/*.c -lopenblas -lm -o /tmp/bench_scan
//   /tmp/bench_scan [B T di N chunk repeats max_threads]      (defaults 64 64 128 16 64 21 2)
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/rng.h"
#include "layers/mamba_cpu.h"

static void fill_normal(float *p, size_t n, Rng *rng, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = scale * rng_normal(rng);
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double sum_abs(const float *p, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += fabs((double)p[i]);
    return s;
}

int main(int argc, char **argv) {
    int B = 64, T = 64, C = 128, N = 16, chunk = 64, repeats = 21, max_threads = 2;
    int *dims[] = {&B, &T, &C, &N, &chunk, &repeats, &max_threads};
    for (int i = 1; i < argc && i <= 7; i++) *dims[i - 1] = atoi(argv[i]);
    BRAID_CHECK(B > 0 && T > 0 && C > 0 && N > 0 && chunk > 0 && repeats > 0 && max_threads > 0,
                "usage: %s [B T di N chunk repeats max_threads], all positive", argv[0]);

    size_t btc = (size_t)B * T * C, btn = (size_t)B * T * N, cn = (size_t)C * N;
    size_t n_states = (size_t)B * selective_scan_n_chunks(T, chunk) * C * N;
    float *u = braid_malloc(btc * sizeof(float), "u"), *delta = braid_malloc(btc * sizeof(float), "delta");
    float *Bm = braid_malloc(btn * sizeof(float), "B"), *Cm = braid_malloc(btn * sizeof(float), "C");
    float *A = braid_malloc(cn * sizeof(float), "A"), *D = braid_malloc((size_t)C * sizeof(float), "D");
    float *y = braid_malloc(btc * sizeof(float), "y"), *dy = braid_malloc(btc * sizeof(float), "dy");
    float *states = braid_malloc(n_states * sizeof(float), "chunk states");
    float *du = braid_calloc(btc, sizeof(float), "du"), *ddelta = braid_calloc(btc, sizeof(float), "ddelta");
    float *dA = braid_calloc(cn, sizeof(float), "dA"), *dD = braid_calloc((size_t)C, sizeof(float), "dD");
    float *dB = braid_calloc(btn, sizeof(float), "dB"), *dC = braid_calloc(btn, sizeof(float), "dC");

    Rng rng;
    rng_seed(&rng, 1234);
    fill_normal(u, btc, &rng, 1.0f);
    fill_normal(Bm, btn, &rng, 1.0f);
    fill_normal(Cm, btn, &rng, 1.0f);
    fill_normal(dy, btc, &rng, 1.0f);
    for (size_t i = 0; i < btc; i++)   /* δ log-uniform in [0.001, 0.1] */
        delta[i] = expf(logf(0.001f) + (logf(0.1f) - logf(0.001f)) * rng_uniform(&rng));
    for (int c = 0; c < C; c++) {
        D[c] = 1.0f;
        for (int n = 0; n < N; n++) A[(size_t)c * N + n] = -(float)(n + 1);
    }
    size_t scratch_floats = selective_scan_backward_scratch_floats(B, T, N, chunk, max_threads);
    float *scratch = braid_malloc(scratch_floats * sizeof(float), "scan scratch");

    printf("selective scan B=%d T=%d di=%d N=%d chunk=%d, median of %d runs\n", B, T, C, N, chunk,
           repeats);
    printf("%8s %14s %14s\n", "threads", "forward ms", "backward ms");
    double *fwd = braid_malloc((size_t)repeats * sizeof(double), "times");
    double *bwd = braid_malloc((size_t)repeats * sizeof(double), "times");
    for (int threads = 1; threads <= max_threads; threads++) {
        omp_set_num_threads(threads);
        for (int r = 0; r < repeats; r++) {
            double t0 = time_seconds();
            selective_scan_forward(y, states, u, delta, A, Bm, Cm, D, B, T, C, N, chunk);
            double t1 = time_seconds();
            /* the backward accumulates: start each run from zero, outside the timing */
            memset(du, 0, btc * sizeof(float));
            memset(ddelta, 0, btc * sizeof(float));
            memset(dA, 0, cn * sizeof(float));
            memset(dD, 0, (size_t)C * sizeof(float));
            memset(dB, 0, btn * sizeof(float));
            memset(dC, 0, btn * sizeof(float));
            double t2 = time_seconds();
            selective_scan_backward(du, ddelta, dA, dB, dC, dD, dy, u, delta, A, Bm, Cm, D, states, B,
                                    T, C, N, chunk, scratch, scratch_floats);
            double t3 = time_seconds();
            fwd[r] = 1e3 * (t1 - t0);
            bwd[r] = 1e3 * (t3 - t2);
        }
        printf("%8d %14.3f %14.3f\n", threads, median(fwd, repeats), median(bwd, repeats));
    }
    printf("checksums: sum|y| %.6e  sum|du| %.6e  sum|ddelta| %.6e  sum|dA| %.6e  sum|dB| %.6e  "
           "sum|dC| %.6e  sum|dD| %.6e\n", sum_abs(y, btc), sum_abs(du, btc), sum_abs(ddelta, btc),
           sum_abs(dA, cn), sum_abs(dB, btn), sum_abs(dC, btn), sum_abs(dD, (size_t)C));

    free(u); free(delta); free(Bm); free(Cm); free(A); free(D); free(y); free(dy); free(states);
    free(du); free(ddelta); free(dA); free(dD); free(dB); free(dC); free(scratch); free(fwd); free(bwd);
    return 0;
}
