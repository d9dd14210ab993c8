/* test_cuda_moe.c — the CUDA path of the mixture-of-experts FFN (src/cuda/moe.cu and
 * moe_forward_cuda / moe_backward_cuda in src/layers/moe.c) against the CPU.
 *
 * Kernel level, each against a plain loop in double written here:
 *  - routing: softmax, logsumexp, top-k (exact ties must go to the lower expert index),
 *    renormalized or not; and the double sums behind the aux and z losses;
 *  - gather, combine, the combine's backward and the scatter-add, on random routings;
 *  - the router backward (load-balancing and z-loss terms included).
 * Outputs a kernel writes are poisoned first (bytes 0xFF: NaN, or −1 for ints), so an
 * element it forgets fails.
 * The combine's backward also in its bf16 form (deo as bf16 bits), on float4 and scalar paths,
 * with eo left unchanged; the gather also in its bf16 form (from x or from its bf16 copy x16),
 * on 8-wide and scalar paths, bit for bit.
 * Layer level, with cuda_layer_check_prepared (tests/cuda_harness.h): y, dx, every
 * parameter gradient and aux_loss within tolerance, expert_load exactly, at experts 4 and 8,
 * top_k 1 and 2, renormalize on and off, z-loss on and off, T = 1, 7, 64, 129, B 1–3,
 * d 16–128, and cases where an expert receives no token at all.
 * Tolerances, relative to each tensor's largest element: 1e-4 forward, 1e-3 backward, as
 * for the other layers (cuBLAS and OpenBLAS sum in other orders). And, on the device alone:
 * a backward run twice on one forward gives the same bits and leaves the saved activations
 * untouched, in float32 and bf16; in bf16 the producers on and off give the same bits, with
 * x's bf16 copy offered or not, and the producers' path converts nothing (the weights read
 * from their bf16 mirror).
 * No GPU: prints that it skipped and exits 77. Check runs in-process (CK_NOFORK): a CUDA
 * context does not survive fork(). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "core/common.h"
#include "core/device.h"
#include "core/rng.h"
#include "cuda/cuda_check.h"
#include "cuda/moe_cuda.h"
#include "cuda/ops_cuda.h"
#include "cuda_harness.h"
#include "layer_harness.h"
#include "models/config.h"

extern const LayerKind moe_kind;

#define FWD_TOL 1e-4
#define BWD_TOL 1e-3
#define MAX_E 64

/* ---- helpers ------------------------------------------------------------------------ */

static void *to_device(const void *host, size_t bytes) {
    void *d = device_alloc(DEVICE_CUDA, bytes, "test buffer");
    device_upload(DEVICE_CUDA, d, host, bytes);
    return d;
}

static void *poisoned_device(size_t bytes) {
    void *d = device_alloc(DEVICE_CUDA, bytes, "test buffer");
    CUDA_CHECK(cudaMemset(d, 0xFF, bytes));
    return d;
}

/* device → host, after everything queued (cudaMemcpy waits for the default stream) */
static void from_device(void *host, const void *dev, size_t bytes) {
    device_download(DEVICE_CUDA, host, dev, bytes);
}

/* max |got − ref| / max |ref|; a NaN in got (an unwritten element) fails. */
static double rel_err(const float *got, const double *ref, size_t n, size_t *where) {
    double num = 0.0, den = 0.0;
    *where = 0;
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)got[i] - ref[i]);
        if (!(diff <= num)) { num = isnan(diff) ? INFINITY : diff; *where = i; }
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return num / (den > 0.0 ? den : 1.0);
}

static void assert_close(const char *what, const float *got, const double *ref, size_t n, double tol) {
    size_t wi;
    double e = rel_err(got, ref, n, &wi);
    ck_assert_msg(e <= tol, "%s[%zu]: cuda %.8g, reference %.8g (error %.3g relative to max > %.1g)",
                  what, wi, got[wi], ref[wi], e, tol);
}

/* A random routing: each token picks k distinct experts in random order, never expert
 * `idle` (−1: any), then moe.c's counting sort (experts ascending, tokens ascending inside
 * one) gives slot_of (N·k), slot_token (S) and offset (E+1). */
static void random_routing(Rng *rng, int *expert, int *slot_of, int *slot_token, int *offset, int N,
                           int E, int k, int idle) {
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            int e, dup;
            do {
                e = (int)rng_below(rng, (uint32_t)E);
                dup = e == idle;
                for (int i = 0; i < j; i++) dup |= expert[n * k + i] == e;
            } while (dup);
            expert[n * k + j] = e;
        }
    int cursor[MAX_E];
    for (int e = 0; e <= E; e++) offset[e] = 0;
    for (int i = 0; i < N * k; i++) offset[expert[i] + 1]++;
    for (int e = 0; e < E; e++) offset[e + 1] += offset[e];
    for (int e = 0; e < E; e++) cursor[e] = offset[e];
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            int s = cursor[expert[n * k + j]]++;
            slot_of[n * k + j] = s;
            slot_token[s] = n;
        }
}

/* ---- (1) routing ---------------------------------------------------------------------- */

typedef struct RouteCase { int N, E, k, renormalize; } RouteCase;
static const RouteCase ROUTE_CASES[] = {
    {1, 4, 1, 0}, {7, 4, 2, 1}, {129, 8, 2, 0}, {1000, 8, 2, 1},   /* 1000: several blocks */
    {300, 16, 4, 1}, {5, 4, 4, 0},                                  /* k = E: a full sort */
    {33, 1, 1, 1},                                                  /* a single expert */
};

/* Logits with clear margins: per token a random permutation of ranks spaced 0.5 apart,
 * jittered by ±0.1 (every gap ≥ 0.3, far beyond float rounding) and shifted by up to ±5
 * (the max subtraction matters). Rows 1–3 hold EXACT ties instead, which both sides must
 * break toward the lower index: all equal; a tie for first (experts 1, 2); a tie for
 * second (experts 1, 2 behind 0). */
static void route_logits(float *logits, int N, int E, Rng *rng) {
    for (int n = 0; n < N; n++) {
        int rank[MAX_E];
        for (int e = 0; e < E; e++) rank[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int r = (int)rng_below(rng, (uint32_t)(e + 1)), t = rank[e];
            rank[e] = rank[r]; rank[r] = t;
        }
        float shift = rng_uniform_range(rng, -5.0f, 5.0f);
        for (int e = 0; e < E; e++)
            logits[n * E + e] = shift + 0.5f * (float)rank[e] + rng_uniform_range(rng, -0.1f, 0.1f);
    }
    if (E < 4) return;
    static const float tie_first[4] = {1.0f, 3.0f, 3.0f, 0.0f}, tie_second[4] = {3.0f, 1.0f, 1.0f, 0.0f};
    for (int e = 0; e < E; e++) {
        if (N > 1) logits[1 * E + e] = 0.7f;
        if (N > 2) logits[2 * E + e] = e < 4 ? tie_first[e] : -1.0f - (float)e;
        if (N > 3) logits[3 * E + e] = e < 4 ? tie_second[e] : -1.0f - (float)e;
    }
}

/* The spec in double: softmax, logsumexp, top-k by a stable sort on p descending (equal
 * p keep index order), weights renormalized or not. */
static void route_reference(const float *logits, int N, int E, int k, int renormalize, double *p,
                            double *lse, int *expert, double *weight) {
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * E;
        double *pn = p + (size_t)n * E, maxv = -INFINITY, sum = 0.0;
        for (int e = 0; e < E; e++) maxv = fmax(maxv, l[e]);
        for (int e = 0; e < E; e++) { pn[e] = exp((double)l[e] - maxv); sum += pn[e]; }
        for (int e = 0; e < E; e++) pn[e] /= sum;
        lse[n] = maxv + log(sum);
        int order[MAX_E];
        for (int e = 0; e < E; e++) order[e] = e;
        for (int a = 1; a < E; a++)
            for (int b = a; b > 0 && pn[order[b]] > pn[order[b - 1]]; b--) {
                int t = order[b]; order[b] = order[b - 1]; order[b - 1] = t;
            }
        double total = 0.0;
        for (int j = 0; j < k; j++) total += pn[order[j]];
        for (int j = 0; j < k; j++) {
            expert[n * k + j] = order[j];
            weight[n * k + j] = renormalize ? pn[order[j]] / total : pn[order[j]];
        }
    }
}

START_TEST(test_route_forward_matches_reference) {
    const RouteCase *c = &ROUTE_CASES[_i];
    const int N = c->N, E = c->E, k = c->k;
    Rng rng;
    rng_seed(&rng, 300 + (uint64_t)_i);
    float *logits = malloc((size_t)N * E * sizeof(float));
    route_logits(logits, N, E, &rng);
    double *p_ref = malloc((size_t)N * E * sizeof(double)), *lse_ref = malloc((size_t)N * sizeof(double));
    double *w_ref = malloc((size_t)N * k * sizeof(double));
    int *e_ref = malloc((size_t)N * k * sizeof(int));
    route_reference(logits, N, E, k, c->renormalize, p_ref, lse_ref, e_ref, w_ref);

    float *d_probs = to_device(logits, (size_t)N * E * sizeof(float));
    float *d_lse = poisoned_device((size_t)N * sizeof(float));
    int *d_expert = poisoned_device((size_t)N * k * sizeof(int));
    float *d_weight = poisoned_device((size_t)N * k * sizeof(float));
    moe_route_forward_cuda(d_probs, d_lse, d_expert, d_weight, N, E, k, c->renormalize, 0);
    float *probs = malloc((size_t)N * E * sizeof(float)), *lse = malloc((size_t)N * sizeof(float));
    float *weight = malloc((size_t)N * k * sizeof(float));
    int *expert = malloc((size_t)N * k * sizeof(int));
    from_device(probs, d_probs, (size_t)N * E * sizeof(float));
    from_device(lse, d_lse, (size_t)N * sizeof(float));
    from_device(expert, d_expert, (size_t)N * k * sizeof(int));
    from_device(weight, d_weight, (size_t)N * k * sizeof(float));

    char what[96];
    for (int i = 0; i < N * k; i++)
        ck_assert_msg(expert[i] == e_ref[i], "N%d E%d k%d: token %d rank %d chose expert %d, expected %d",
                      N, E, k, i / k, i % k, expert[i], e_ref[i]);
    snprintf(what, sizeof what, "probs (N%d E%d k%d)", N, E, k);
    assert_close(what, probs, p_ref, (size_t)N * E, 1e-5);
    snprintf(what, sizeof what, "lse (N%d E%d k%d)", N, E, k);
    assert_close(what, lse, lse_ref, (size_t)N, 1e-5);
    snprintf(what, sizeof what, "weight (N%d E%d k%d renormalize %d)", N, E, k, c->renormalize);
    assert_close(what, weight, w_ref, (size_t)N * k, 1e-5);

    device_free(DEVICE_CUDA, d_probs); device_free(DEVICE_CUDA, d_lse);
    device_free(DEVICE_CUDA, d_expert); device_free(DEVICE_CUDA, d_weight);
    free(logits); free(p_ref); free(lse_ref); free(w_ref); free(e_ref);
    free(probs); free(lse); free(weight); free(expert);
}
END_TEST

typedef struct SumsCase { int N, E; } SumsCase;
static const SumsCase SUMS_CASES[] = {{1, 4}, {129, 8}, {5000, 8}, {300, 16}};

START_TEST(test_route_sums_match_reference) {
    const int N = SUMS_CASES[_i].N, E = SUMS_CASES[_i].E;
    Rng rng;
    rng_seed(&rng, 400 + (uint64_t)_i);
    float *probs = malloc((size_t)N * E * sizeof(float)), *lse = malloc((size_t)N * sizeof(float));
    rng_fill_uniform(&rng, probs, (size_t)N * E, 0.0f, 1.0f);
    rng_fill_normal(&rng, lse, (size_t)N, 3.0f);
    double *ref = calloc((size_t)E + 1, sizeof(double)), *got = malloc(((size_t)E + 1) * sizeof(double));
    for (int n = 0; n < N; n++) {
        for (int e = 0; e < E; e++) ref[e] += probs[(size_t)n * E + e];
        ref[E] += (double)lse[n] * lse[n];
    }
    float *d_probs = to_device(probs, (size_t)N * E * sizeof(float));
    float *d_lse = to_device(lse, (size_t)N * sizeof(float));
    double *d_sums = poisoned_device(((size_t)E + 1) * sizeof(double));
    moe_route_sums_cuda(d_sums, d_probs, d_lse, N, E, 0);
    from_device(got, d_sums, ((size_t)E + 1) * sizeof(double));
    /* float inputs summed in double: only the order differs, so agreement to ~1e-15 */
    for (int e = 0; e <= E; e++)
        ck_assert_msg(fabs(got[e] - ref[e]) <= 1e-12 * fabs(ref[e]),
                      "N%d E%d: sum %d is %.17g, reference %.17g", N, E, e, got[e], ref[e]);
    device_free(DEVICE_CUDA, d_probs); device_free(DEVICE_CUDA, d_lse); device_free(DEVICE_CUDA, d_sums);
    free(probs); free(lse); free(ref); free(got);
}
END_TEST

/* ---- (2) gather, combine, their backward ---------------------------------------------- */

typedef struct DispatchCase { int N, E, k, d; } DispatchCase;
static const DispatchCase DISPATCH_CASES[] = {
    {1, 4, 1, 16}, {7, 4, 2, 33}, {129, 8, 2, 64}, {1000, 8, 2, 128}, {64, 16, 4, 300},
};

/* Everything one dispatch check needs, on both sides. */
typedef struct Dispatch {
    int N, E, k, d, S;
    int *expert, *slot_of, *slot_token, *offset;   /* host */
    int *d_slot_of, *d_slot_token;                 /* device */
} Dispatch;

static Dispatch dispatch_make(const DispatchCase *c, Rng *rng) {
    Dispatch D = {.N = c->N, .E = c->E, .k = c->k, .d = c->d, .S = c->N * c->k};
    D.expert = malloc((size_t)D.S * sizeof(int));
    D.slot_of = malloc((size_t)D.S * sizeof(int));
    D.slot_token = malloc((size_t)D.S * sizeof(int));
    D.offset = malloc(((size_t)D.E + 1) * sizeof(int));
    /* expert E−1 idle when there is room, so an empty group sits at the end */
    random_routing(rng, D.expert, D.slot_of, D.slot_token, D.offset, D.N, D.E, D.k,
                   D.k < D.E ? D.E - 1 : -1);
    D.d_slot_of = to_device(D.slot_of, (size_t)D.S * sizeof(int));
    D.d_slot_token = to_device(D.slot_token, (size_t)D.S * sizeof(int));
    return D;
}

static void dispatch_free(Dispatch *D) {
    free(D->expert); free(D->slot_of); free(D->slot_token); free(D->offset);
    device_free(DEVICE_CUDA, D->d_slot_of); device_free(DEVICE_CUDA, D->d_slot_token);
}

/* ... and a slot whose token is −1 (the CUDA layer's padding rows after an expert's
 * slots, moe.c) gets a zero row: here every fifth slot. */
START_TEST(test_gather_copies_token_rows) {
    Rng rng;
    rng_seed(&rng, 500 + (uint64_t)_i);
    Dispatch D = dispatch_make(&DISPATCH_CASES[_i], &rng);
    size_t nx = (size_t)D.N * D.d, ng = (size_t)D.S * D.d;
    float *x = malloc(nx * sizeof(float)), *xg = malloc(ng * sizeof(float));
    int *token = malloc((size_t)D.S * sizeof(int));
    for (int s = 0; s < D.S; s++) token[s] = s % 5 == 4 ? -1 : D.slot_token[s];
    int *d_token = to_device(token, (size_t)D.S * sizeof(int));
    rng_fill_normal(&rng, x, nx, 1.0f);
    float *d_x = to_device(x, nx * sizeof(float)), *d_xg = poisoned_device(ng * sizeof(float));
    moe_gather_rows_cuda(d_xg, d_x, d_token, D.S, D.d, 0);
    from_device(xg, d_xg, ng * sizeof(float));
    for (int s = 0; s < D.S; s++)
        for (int c = 0; c < D.d; c++) {
            const float want = token[s] < 0 ? 0.0f : x[(size_t)token[s] * D.d + c];
            ck_assert_msg(xg[(size_t)s * D.d + c] == want, "N%d k%d d%d: xg[%d,%d] = %g, want %g (token %d)",
                          D.N, D.k, D.d, s, c, xg[(size_t)s * D.d + c], want, token[s]);
        }
    device_free(DEVICE_CUDA, d_x); device_free(DEVICE_CUDA, d_xg); device_free(DEVICE_CUDA, d_token);
    free(x); free(xg); free(token);
    dispatch_free(&D);
}
END_TEST

/* The bf16 gather (the experts' gate and up operand), bit for bit: xg16[s] = x16[token] where
 * x16 is given, else bf16_rn(x[token]); a padding slot (token −1, every fifth here) a zero row
 * (0x0000, the bits of the float32 gather's zero converted). Variants over the DISPATCH_CASES,
 * _i / n: 0 from x, 1 from x16, 2 and 3 the same with xg16 one element off 16-byte alignment
 * (the scalar path even where d % 8 == 0; d = 33 and 300 take it anyway). x16 is the bf16 of
 * OTHER random values, so a kernel that rounds x where it should copy x16 fails; |x| ≥ 1e-3,
 * so a data row written as zeros fails, and about half the values round differently to
 * nearest and toward zero. The element after the output (before it, skewed) must keep its
 * poison. */
START_TEST(test_gather_bf16_matches_reference) {
    const int n_cases = (int)(sizeof DISPATCH_CASES / sizeof *DISPATCH_CASES);
    const int from16 = (_i / n_cases) % 2, skew = _i / n_cases / 2;
    Rng rng;
    rng_seed(&rng, 550 + (uint64_t)_i);
    Dispatch D = dispatch_make(&DISPATCH_CASES[_i % n_cases], &rng);
    const size_t nx = (size_t)D.N * D.d, ng = (size_t)D.S * D.d;
    int *token = malloc((size_t)D.S * sizeof(int));
    for (int s = 0; s < D.S; s++) token[s] = s % 5 == 4 ? -1 : D.slot_token[s];
    float *x = cuda_test_host_normal_nonzero(&rng, nx, 1.0f), *other = cuda_test_host_normal_nonzero(&rng, nx, 1.0f);
    uint16_t *x16 = malloc(nx * sizeof(uint16_t)), *got = malloc((ng + 1) * sizeof(uint16_t));
    for (size_t i = 0; i < nx; i++) x16[i] = cuda_test_bf16_bits(other[i]);
    int *d_token = to_device(token, (size_t)D.S * sizeof(int));
    float *d_x = to_device(x, nx * sizeof(float));
    uint16_t *d_x16 = to_device(x16, nx * sizeof(uint16_t));
    uint16_t *d_buf = poisoned_device((ng + 1) * sizeof(uint16_t)), *d_xg16 = d_buf + skew;
    moe_gather_rows_bf16_cuda(d_xg16, d_x, from16 ? d_x16 : NULL, d_token, D.S, D.d, 0);
    from_device(got, d_buf, (ng + 1) * sizeof(uint16_t));
    char what[80];
    snprintf(what, sizeof what, "gather bf16 (N%d k%d d%d, from %s%s)", D.N, D.k, D.d, from16 ? "x16" : "x",
             skew ? ", xg16 misaligned" : "");
    ck_assert_msg(got[skew ? 0 : ng] == 0xFFFF, "%s: wrote 0x%04x outside its output", what, got[skew ? 0 : ng]);
    const uint16_t *xg16 = got + skew;
    for (int s = 0; s < D.S; s++)
        for (int c = 0; c < D.d; c++) {
            const size_t from = (size_t)token[s] * D.d + c;
            const uint16_t want = token[s] < 0 ? 0 : from16 ? x16[from] : cuda_test_bf16_bits(x[from]);
            ck_assert_msg(xg16[(size_t)s * D.d + c] == want, "%s: xg16[%d,%d] = 0x%04x, want 0x%04x (token %d)", what,
                          s, c, xg16[(size_t)s * D.d + c], want, token[s]);
        }
    device_free(DEVICE_CUDA, d_token); device_free(DEVICE_CUDA, d_x);
    device_free(DEVICE_CUDA, d_x16); device_free(DEVICE_CUDA, d_buf);
    free(token); free(x); free(other); free(x16); free(got);
    dispatch_free(&D);
}
END_TEST

START_TEST(test_combine_matches_reference) {
    Rng rng;
    rng_seed(&rng, 600 + (uint64_t)_i);
    Dispatch D = dispatch_make(&DISPATCH_CASES[_i], &rng);
    size_t ny = (size_t)D.N * D.d, ne = (size_t)D.S * D.d;
    float *eo = malloc(ne * sizeof(float)), *w = malloc((size_t)D.S * sizeof(float));
    float *y = malloc(ny * sizeof(float));
    double *ref = calloc(ny, sizeof(double));
    rng_fill_normal(&rng, eo, ne, 1.0f);
    rng_fill_uniform(&rng, w, (size_t)D.S, 0.05f, 1.0f);
    for (int n = 0; n < D.N; n++)
        for (int j = 0; j < D.k; j++)
            for (int c = 0; c < D.d; c++)
                ref[(size_t)n * D.d + c] +=
                    (double)w[n * D.k + j] * eo[(size_t)D.slot_of[n * D.k + j] * D.d + c];
    float *d_eo = to_device(eo, ne * sizeof(float)), *d_w = to_device(w, (size_t)D.S * sizeof(float));
    float *d_y = poisoned_device(ny * sizeof(float));
    moe_combine_cuda(d_y, d_eo, d_w, D.d_slot_of, D.N, D.k, D.d, 0);
    from_device(y, d_y, ny * sizeof(float));
    char what[64];
    snprintf(what, sizeof what, "combine y (N%d k%d d%d)", D.N, D.k, D.d);
    assert_close(what, y, ref, ny, 1e-6);
    device_free(DEVICE_CUDA, d_eo); device_free(DEVICE_CUDA, d_w); device_free(DEVICE_CUDA, d_y);
    free(eo); free(w); free(y); free(ref);
    dispatch_free(&D);
}
END_TEST

/* dweight[n,j] = dy[n]·eo[s] and deo[s] = w·dy[n] into its own buffer, as float32 or (the
 * _bf16 launcher) as bf16 bits; eo must come back unchanged (the layer's saved expert
 * outputs, read again by a second backward). Variants over the DISPATCH_CASES, _i / n:
 * 0 float32, 1 float32 with deo one element off 16-byte alignment (the scalar path even
 * where d % 4 == 0), 2 bf16, 3 bf16 one element off. d = 33 takes the scalar path anyway.
 * dy, w never zero, so a deo element left poisoned (0xFF: NaN) or zeroed fails. */
START_TEST(test_combine_backward_matches_reference) {
    const int n_cases = (int)(sizeof DISPATCH_CASES / sizeof *DISPATCH_CASES);
    const int variant = _i / n_cases, bf16 = variant >= 2, skew = variant % 2;
    Rng rng;
    rng_seed(&rng, 700 + (uint64_t)_i);
    Dispatch D = dispatch_make(&DISPATCH_CASES[_i % n_cases], &rng);
    size_t ny = (size_t)D.N * D.d, ne = (size_t)D.S * D.d;
    const size_t elem = bf16 ? sizeof(uint16_t) : sizeof(float);
    float *eo = malloc(ne * sizeof(float)), *w = malloc((size_t)D.S * sizeof(float));
    float *dy = malloc(ny * sizeof(float)), *eo_after = malloc(ne * sizeof(float));
    float *dw = malloc((size_t)D.S * sizeof(float));
    unsigned char *deo = malloc((ne + 1) * elem);
    double *dw_ref = calloc((size_t)D.S, sizeof(double));
    rng_fill_normal(&rng, eo, ne, 1.0f);
    rng_fill_uniform(&rng, dy, ny, 0.1f, 1.0f);
    for (size_t i = 0; i < ny; i += 2) dy[i] = -dy[i];   /* both signs, |dy| ≥ 0.1 */
    rng_fill_uniform(&rng, w, (size_t)D.S, 0.05f, 1.0f);
    for (int q = 0; q < D.S; q++)
        for (int c = 0; c < D.d; c++)
            dw_ref[q] += (double)dy[(size_t)(q / D.k) * D.d + c] * eo[(size_t)D.slot_of[q] * D.d + c];
    float *d_eo = to_device(eo, ne * sizeof(float)), *d_w = to_device(w, (size_t)D.S * sizeof(float));
    float *d_dy = to_device(dy, ny * sizeof(float)), *d_dw = poisoned_device((size_t)D.S * sizeof(float));
    unsigned char *d_deo_buf = poisoned_device((ne + 1) * elem), *d_deo = d_deo_buf + (skew ? elem : 0);
    if (bf16)
        moe_combine_backward_bf16_cuda(d_dw, (uint16_t *)d_deo, d_eo, d_dy, d_w, D.d_slot_of, D.N, D.k, D.d, 0);
    else
        moe_combine_backward_cuda(d_dw, (float *)d_deo, d_eo, d_dy, d_w, D.d_slot_of, D.N, D.k, D.d, 0);
    from_device(dw, d_dw, (size_t)D.S * sizeof(float));
    from_device(deo, d_deo, ne * elem);
    from_device(eo_after, d_eo, ne * sizeof(float));
    char what[80];
    snprintf(what, sizeof what, "dweight (N%d k%d d%d, %s%s)", D.N, D.k, D.d, bf16 ? "bf16" : "fp32",
             skew ? ", deo misaligned" : "");
    assert_close(what, dw, dw_ref, (size_t)D.S, 1e-5);
    ck_assert_msg(memcmp(eo, eo_after, ne * sizeof(float)) == 0, "%s: eo changed", what);
    /* one float product per element on both sides (and one rounding to bf16): equal to the bit */
    for (int q = 0; q < D.S; q++)
        for (int c = 0; c < D.d; c++) {
            const float want = w[q] * dy[(size_t)(q / D.k) * D.d + c];
            const size_t at = (size_t)D.slot_of[q] * D.d + c;
            if (bf16) {
                uint16_t got;
                memcpy(&got, deo + at * elem, sizeof got);
                ck_assert_msg(got == cuda_test_bf16_bits(want), "%s: deo16[slot %d, %d] = 0x%04x, expected 0x%04x (bf16 of %.9g)",
                              what, D.slot_of[q], c, got, cuda_test_bf16_bits(want), want);
            } else {
                float got;
                memcpy(&got, deo + at * elem, sizeof got);
                ck_assert_msg(got == want, "%s: deo[slot %d, %d] = %.9g, expected %.9g", what, D.slot_of[q], c,
                              got, want);
            }
        }
    device_free(DEVICE_CUDA, d_eo); device_free(DEVICE_CUDA, d_w);
    device_free(DEVICE_CUDA, d_dy); device_free(DEVICE_CUDA, d_dw); device_free(DEVICE_CUDA, d_deo_buf);
    free(eo); free(w); free(dy); free(eo_after); free(deo); free(dw); free(dw_ref);
    dispatch_free(&D);
}
END_TEST

/* dx[n] += Σ_j dxg[slot_of[n,j]]: added to random start values, not written over them. */
START_TEST(test_scatter_add_accumulates_like_reference) {
    Rng rng;
    rng_seed(&rng, 800 + (uint64_t)_i);
    Dispatch D = dispatch_make(&DISPATCH_CASES[_i], &rng);
    size_t nx = (size_t)D.N * D.d, ng = (size_t)D.S * D.d;
    float *dxg = malloc(ng * sizeof(float)), *dx = malloc(nx * sizeof(float));
    double *ref = malloc(nx * sizeof(double));
    rng_fill_normal(&rng, dxg, ng, 1.0f);
    rng_fill_normal(&rng, dx, nx, 0.5f);
    for (size_t i = 0; i < nx; i++) ref[i] = dx[i];
    for (int n = 0; n < D.N; n++)
        for (int j = 0; j < D.k; j++)
            for (int c = 0; c < D.d; c++)
                ref[(size_t)n * D.d + c] += dxg[(size_t)D.slot_of[n * D.k + j] * D.d + c];
    float *d_dxg = to_device(dxg, ng * sizeof(float)), *d_dx = to_device(dx, nx * sizeof(float));
    moe_scatter_add_rows_cuda(d_dx, d_dxg, D.d_slot_of, D.N, D.k, D.d, 0);
    from_device(dx, d_dx, nx * sizeof(float));
    char what[64];
    snprintf(what, sizeof what, "scatter dx (N%d k%d d%d)", D.N, D.k, D.d);
    assert_close(what, dx, ref, nx, 1e-6);
    device_free(DEVICE_CUDA, d_dxg); device_free(DEVICE_CUDA, d_dx);
    free(dxg); free(dx); free(ref);
    dispatch_free(&D);
}
END_TEST

/* ---- (3) router backward ---------------------------------------------------------------- */

START_TEST(test_route_backward_matches_reference) {
    const RouteCase *c = &ROUTE_CASES[_i];
    const int N = c->N, E = c->E, k = c->k;
    const float aux_scale = 0.3f, z_scale = 0.05f;
    Rng rng;
    rng_seed(&rng, 900 + (uint64_t)_i);
    float *logits = malloc((size_t)N * E * sizeof(float));
    route_logits(logits, N, E, &rng);
    double *p_d = malloc((size_t)N * E * sizeof(double)), *lse_d = malloc((size_t)N * sizeof(double));
    double *w_d = malloc((size_t)N * k * sizeof(double));
    int *expert = malloc((size_t)N * k * sizeof(int)), *offset = calloc((size_t)E + 1, sizeof(int));
    route_reference(logits, N, E, k, c->renormalize, p_d, lse_d, expert, w_d);
    /* the kernel's inputs in float; the reference reads the very same floats */
    float *p = malloc((size_t)N * E * sizeof(float)), *lse = malloc((size_t)N * sizeof(float));
    float *w = malloc((size_t)N * k * sizeof(float)), *dw = malloc((size_t)N * k * sizeof(float));
    for (size_t i = 0; i < (size_t)N * E; i++) p[i] = (float)p_d[i];
    for (int n = 0; n < N; n++) lse[n] = (float)lse_d[n];
    for (int i = 0; i < N * k; i++) w[i] = (float)w_d[i];
    rng_fill_normal(&rng, dw, (size_t)N * k, 1.0f);
    for (int i = 0; i < N * k; i++) offset[expert[i] + 1]++;
    for (int e = 0; e < E; e++) offset[e + 1] += offset[e];

    double *ref = malloc((size_t)N * E * sizeof(double));
    for (int n = 0; n < N; n++) {
        const float *pn = p + (size_t)n * E;
        const int *ch = expert + (size_t)n * k;
        double *dl = ref + (size_t)n * E;
        for (int e = 0; e < E; e++) dl[e] = (double)aux_scale * (offset[e + 1] - offset[e]);
        if (c->renormalize) {
            double total = 0.0, dw_dot_w = 0.0;
            for (int j = 0; j < k; j++) { total += pn[ch[j]]; dw_dot_w += (double)dw[n * k + j] * w[n * k + j]; }
            for (int j = 0; j < k; j++) dl[ch[j]] += (dw[n * k + j] - dw_dot_w) / total;
        } else {
            for (int j = 0; j < k; j++) dl[ch[j]] += dw[n * k + j];
        }
        double p_dot_dp = 0.0;
        for (int e = 0; e < E; e++) p_dot_dp += pn[e] * dl[e];
        for (int e = 0; e < E; e++) dl[e] = pn[e] * (dl[e] - p_dot_dp) + (double)z_scale * lse[n] * pn[e];
    }

    float *d_p = to_device(p, (size_t)N * E * sizeof(float)), *d_lse = to_device(lse, (size_t)N * sizeof(float));
    float *d_w = to_device(w, (size_t)N * k * sizeof(float)), *d_dw = to_device(dw, (size_t)N * k * sizeof(float));
    int *d_expert = to_device(expert, (size_t)N * k * sizeof(int));
    int *d_offset = to_device(offset, ((size_t)E + 1) * sizeof(int));
    float *d_dl = poisoned_device((size_t)N * E * sizeof(float));
    moe_route_backward_cuda(d_dl, d_dw, d_p, d_lse, d_expert, d_w, d_offset, N, E, k, c->renormalize,
                            aux_scale, z_scale, 0);
    float *dl = malloc((size_t)N * E * sizeof(float));
    from_device(dl, d_dl, (size_t)N * E * sizeof(float));
    char what[96];
    snprintf(what, sizeof what, "dlogits (N%d E%d k%d renormalize %d)", N, E, k, c->renormalize);
    assert_close(what, dl, ref, (size_t)N * E, 1e-5);

    device_free(DEVICE_CUDA, d_p); device_free(DEVICE_CUDA, d_lse); device_free(DEVICE_CUDA, d_w);
    device_free(DEVICE_CUDA, d_dw); device_free(DEVICE_CUDA, d_expert);
    device_free(DEVICE_CUDA, d_offset); device_free(DEVICE_CUDA, d_dl);
    free(logits); free(p_d); free(lse_d); free(w_d); free(expert); free(offset);
    free(p); free(lse); free(w); free(dw); free(ref); free(dl);
}
END_TEST

/* ---- (4) the layer ---------------------------------------------------------------------- */

typedef struct LayerCase {
    int B, T, d, E, k, hidden, renormalize;
    float aux_coef, z_coef;
    int silent;            /* an expert made never to win (its count must be 0); −1: none */
    unsigned long seed;    /* chosen so every token's top-k margin is clear (see below) */
} LayerCase;

/* hidden 0: the default (config_moe_hidden). The T = 1 and T = 7 cases leave experts
 * without tokens by chance (1 token, k = 1, 4 experts); the `silent` cases force it at
 * T = 64 and 129, where every expert would otherwise get some. */
static const LayerCase LAYER_CASES[] = {
    {2, 64, 64, 8, 2, 0, 1, 0.01f, 0.0f, -1, 2001},       /* the tiny configs' shape */
    {1, 1, 16, 4, 1, 24, 0, 0.01f, 0.001f, -1, 1002},     /* one token */
    {3, 7, 48, 4, 2, 40, 1, 0.02f, 0.01f, -1, 1003},      /* ragged */
    {2, 129, 128, 8, 2, 96, 0, 0.01f, 0.001f, -1, 33004},  /* past a block edge, d = 128 */
    {3, 129, 32, 8, 1, 64, 1, 0.05f, 0.0f, -1, 3005},     /* k = 1 renormalized: w ≡ 1 */
    {2, 64, 96, 8, 2, 64, 1, 0.01f, 0.01f, 5, 1006},      /* expert 5 gets nothing */
    {1, 129, 64, 4, 1, 48, 0, 0.01f, 0.0f, 2, 1007},      /* expert 2 gets nothing, k = 1 */
    {3, 64, 16, 4, 2, 32, 0, 0.03f, 0.02f, -1, 9008},     /* d = 16, B = 3 */
};

/* Float32 router logits from cuBLAS and from OpenBLAS differ by rounding (for these cases
 * the CPU's float32 logits are within 4e-6 of double), so a token whose k-th and (k+1)-th
 * logits lie that close could be routed differently on the two sides, and y, the
 * gradients and expert_load would then differ by far more than any tolerance. Each case
 * therefore (a) scales the router by 4, a peaked router like a trained one rather than
 * the init's near-uniform one, and (b) asserts, in double, that every token's gap between
 * its k-th and (k+1)-th logit is at least ROUTE_MARGIN (250× that rounding); the seeds
 * above were picked so it holds (smallest gap over the cases: 6.8e-3, measured on the
 * CPU). Order inside the top k needs no margin: swapping two chosen experts' ranks
 * changes only a summation order. */
#define ROUTER_SCALE 4.0f
#define ROUTE_MARGIN 1e-3

typedef struct PrepareResult {
    double margin;
    int counts[MAX_E];
} PrepareResult;

/* Shapes the CPU harness before the device copies are made (see above). A silent expert:
 * feature 0 of every token is set to 1 (a bias input) and the expert's router row to
 * (−30, 0, …, 0), so its logit is −30 for every token, far below the others (|logit| ≲ 10
 * at this scale): it never makes the top k, and its FFN parameters must get no gradient. */
static void moe_prepare(LayerHarness *h, const LayerCase *c, PrepareResult *r) {
    const int N = h->B * h->T, d = h->d, E = c->E, k = c->k;
    int ri = harness_param(h, "router.weight");
    ck_assert_int_ge(ri, 0);
    float *wr = h->layer.params[ri];
    for (int i = 0; i < E * d; i++) wr[i] *= ROUTER_SCALE;
    if (c->silent >= 0) {
        for (int n = 0; n < N; n++) h->x[(size_t)n * d] = 1.0f;
        for (int i = 0; i < d; i++) wr[c->silent * d + i] = i == 0 ? -30.0f : 0.0f;
    }
    r->margin = INFINITY;
    memset(r->counts, 0, sizeof r->counts);
    for (int n = 0; n < N; n++) {
        double l[MAX_E];
        int order[MAX_E];
        for (int e = 0; e < E; e++) {
            l[e] = 0.0;
            for (int i = 0; i < d; i++) l[e] += (double)wr[e * d + i] * h->x[(size_t)n * d + i];
            order[e] = e;
        }
        for (int a = 1; a < E; a++)
            for (int b = a; b > 0 && l[order[b]] > l[order[b - 1]]; b--) {
                int t = order[b]; order[b] = order[b - 1]; order[b - 1] = t;
            }
        if (k < E) r->margin = fmin(r->margin, l[order[k - 1]] - l[order[k]]);
        for (int j = 0; j < k; j++) r->counts[order[j]]++;
    }
}

typedef struct PrepareArg {
    const LayerCase *c;
    PrepareResult r;
} PrepareArg;

static void moe_prepare_cb(LayerHarness *h, void *arg) {
    PrepareArg *a = arg;
    moe_prepare(h, a->c, &a->r);
    ck_assert_msg(a->r.margin >= ROUTE_MARGIN,
                  "seed %lu: a token's k-th and (k+1)-th router logits are %.3g apart (< %.0e): CPU "
                  "and GPU could route it differently; choose another seed", a->c->seed, a->r.margin,
                  ROUTE_MARGIN);
    if (a->c->silent >= 0)
        ck_assert_msg(a->r.counts[a->c->silent] == 0, "silenced expert %d still got %d tokens",
                      a->c->silent, a->r.counts[a->c->silent]);
}

static Config layer_config(const LayerCase *c) {
    Config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = c->d;
    cfg.model.moe.experts = c->E;
    cfg.model.moe.top_k = c->k;
    cfg.model.moe.hidden = c->hidden;
    cfg.model.moe.renormalize = c->renormalize;
    cfg.model.moe.aux_loss_coef = c->aux_coef;
    cfg.model.moe.z_loss_coef = c->z_coef;
    return cfg;
}

START_TEST(test_layer_matches_cpu) {
    const LayerCase *c = &LAYER_CASES[_i];
    Config cfg = layer_config(c);
    char what[96];
    snprintf(what, sizeof what, "moe B%d T%d d%d E%d k%d%s%s", c->B, c->T, c->d, c->E, c->k,
             c->renormalize ? " renorm" : "", c->z_coef != 0.0f ? " z" : "");
    PrepareArg arg = {.c = c};
    int ok = cuda_layer_check_prepared(&moe_kind, &cfg, c->B, c->T, c->seed, FWD_TOL, BWD_TOL, what,
                                       moe_prepare_cb, &arg);
    int idle = 0;
    for (int e = 0; e < c->E; e++) idle += arg.r.counts[e] == 0;
    printf("  %-28s routing margin %.3g, %d of %d experts without tokens\n", what, arg.r.margin,
           idle, c->E);
    ck_assert_msg(ok, "%s: CUDA differs from CPU (see the table above)", what);
}
END_TEST

/* A device copy of h's MoE layer in *L (initialised, its parameter list in *pl): the
 * parameters copied from h, the gradients zeroed in *d_grads. Returns the device
 * parameters (free them, *d_grads, L->params, L->grads and *pl; moe_kind.destroy(L)). */
static float *moe_device_layer(Layer *L, ParamList *pl, const LayerHarness *h, const Config *cfg, float **d_grads) {
    const size_t P = h->params.total;
    memset(L, 0, sizeof *L);
    L->kind = &moe_kind; L->cfg = cfg; L->d_model = h->d; L->device = DEVICE_CUDA;
    snprintf(L->prefix, sizeof L->prefix, "%s", h->layer.prefix);
    moe_kind.init(L);
    memset(pl, 0, sizeof *pl);
    moe_kind.declare_params(L, pl);
    ck_assert_int_eq(pl->total, P);
    float *d_params = to_device(h->param_data, P * sizeof(float));
    *d_grads = device_alloc(DEVICE_CUDA, P * sizeof(float), "grads");   /* zeroed */
    L->n_params = pl->count;
    L->params = calloc((size_t)pl->count, sizeof(float *));
    L->grads = calloc((size_t)pl->count, sizeof(float *));
    for (int i = 0; i < pl->count; i++) {
        L->params[i] = d_params + pl->items[i].offset;
        L->grads[i] = *d_grads + pl->items[i].offset;
    }
    return d_params;
}

/* As a model uses the layer: saved and scratch sized for the largest batch, a forward at
 * that size first, then a forward and backward at a smaller one (the host staging keeps
 * its larger capacity, and backward must size its matmuls from the forward just before
 * it). Compared with the CPU layer run at the small size only. */
START_TEST(test_layer_reused_at_a_smaller_batch_matches_cpu) {
    const LayerCase c = {1, 7, 32, 8, 2, 40, 1, 0.01f, 0.01f, -1, 1009};
    const int big_B = 2, big_T = 129;
    Config cfg = layer_config(&c);
    LayerHarness *h = harness_create(&moe_kind, &cfg, c.B, c.T, c.seed, 0.05f);
    PrepareArg arg = {.c = &c};
    moe_prepare_cb(h, &arg);
    const size_t n = (size_t)c.B * c.T * c.d, n_big = (size_t)big_B * big_T * c.d;
    const size_t P = h->params.total;
    Rng rng;
    rng_seed(&rng, c.seed + 17);
    rng_fill_normal(&rng, h->dy, n, 1.0f);
    harness_forward(h);
    harness_backward(h);   /* dx and grads from zero */

    Layer L;
    ParamList pl;
    float *d_grads, *d_params = moe_device_layer(&L, &pl, h, &cfg, &d_grads);
    size_t saved = moe_kind.saved_floats(&L, big_B, big_T), scratch = moe_kind.scratch_floats(&L, big_B, big_T);
    L.saved = poisoned_device(saved * sizeof(float));
    Ctx ctx = {.device = DEVICE_CUDA, .scratch_floats = scratch, .training = 1, .aux_grad_scale = 1.0f};
    ctx.scratch = poisoned_device(scratch * sizeof(float));

    float *x_big = malloc(n_big * sizeof(float));
    rng_fill_normal(&rng, x_big, n_big, 1.0f);
    float *d_x_big = to_device(x_big, n_big * sizeof(float));
    float *d_y_big = poisoned_device(n_big * sizeof(float));
    moe_kind.forward_cuda(&L, d_y_big, d_x_big, big_B, big_T, &ctx);

    float *d_x = to_device(h->x, n * sizeof(float)), *d_dy = to_device(h->dy, n * sizeof(float));
    float *d_y = poisoned_device(n * sizeof(float));
    float *d_dx = device_alloc(DEVICE_CUDA, n * sizeof(float), "dx");   /* zeroed */
    moe_kind.forward_cuda(&L, d_y, d_x, c.B, c.T, &ctx);
    double aux = L.aux_loss;
    for (int e = 0; e < c.E; e++)
        ck_assert_msg(L.stats[e] == h->layer.stats[e], "expert_load[%d]: cuda %g, cpu %g", e,
                      L.stats[e], h->layer.stats[e]);
    moe_kind.backward_cuda(&L, d_dx, d_dy, d_x, c.B, c.T, &ctx);
    float *y = malloc(n * sizeof(float)), *dx = malloc(n * sizeof(float)), *g = malloc(P * sizeof(float));
    from_device(y, d_y, n * sizeof(float));
    from_device(dx, d_dx, n * sizeof(float));
    from_device(g, d_grads, P * sizeof(float));

    double e = cuda_rel_err(y, h->y, NULL, NULL, n);
    ck_assert_msg(e <= FWD_TOL, "y: error %.3g", e);
    e = cuda_rel_err(dx, h->dx, NULL, NULL, n);
    ck_assert_msg(e <= BWD_TOL, "dx: error %.3g", e);
    for (int i = 0; i < pl.count; i++) {
        e = cuda_rel_err(g + pl.items[i].offset, h->grad_data + pl.items[i].offset, NULL, NULL, pl.items[i].numel);
        ck_assert_msg(e <= BWD_TOL, "d %s: error %.3g", pl.items[i].name, e);
    }
    ck_assert_msg(fabs(aux - h->aux_loss) <= FWD_TOL * fabs(h->aux_loss), "aux_loss: cuda %.9g, cpu %.9g",
                  aux, h->aux_loss);

    device_free(DEVICE_CUDA, d_params); device_free(DEVICE_CUDA, d_grads);
    device_free(DEVICE_CUDA, L.saved); device_free(DEVICE_CUDA, ctx.scratch);
    device_free(DEVICE_CUDA, d_x_big); device_free(DEVICE_CUDA, d_y_big);
    device_free(DEVICE_CUDA, d_x); device_free(DEVICE_CUDA, d_dy);
    device_free(DEVICE_CUDA, d_y); device_free(DEVICE_CUDA, d_dx);
    moe_kind.destroy(&L);
    free(L.params); free(L.grads); param_list_free(&pl);
    free(x_big); free(y); free(dx); free(g);
    harness_free(h);
}
END_TEST

/* One forward and backward of a device copy of h's layer at the current matmul precision
 * and producers' setting, the backward run TWICE on that forward (dx and gradients from
 * zero each time). Returns y, dx and the gradients of the second backward in y, dx, g
 * (host, n, n, P floats), after asserting that the two backwards gave the same bits and
 * that neither wrote a bit of layer->saved (the saved eo is what both read).
 * offer_x16: x's bf16 copy (bf16_rn of x, made here) is offered around each call of the layer
 * (matmul_bf16_copy_cuda), as model.c offers RMSNorm's. mirror: the weights are read from the
 * parameters' bf16 mirror, as model_forward makes it. *conversions: the float-to-bf16
 * conversions the forward and both backwards made (matmul_bf16_conversions_cuda). */
static void moe_device_run_backward_twice(LayerHarness *h, const Config *cfg, int offer_x16, int mirror, float *y,
                                          float *dx, float *g, size_t *conversions, const char *what) {
    const int B = h->B, T = h->T, d = h->d;
    const size_t n = (size_t)B * T * d, P = h->params.total;
    Layer L;
    ParamList pl;
    float *d_grads, *d_params = moe_device_layer(&L, &pl, h, cfg, &d_grads);
    const size_t saved = moe_kind.saved_floats(&L, B, T), scratch = moe_kind.scratch_floats(&L, B, T);
    L.saved = poisoned_device(saved * sizeof(float));
    Ctx ctx = {.device = DEVICE_CUDA, .scratch_floats = scratch, .training = 1, .aux_grad_scale = 1.0f};
    ctx.scratch = poisoned_device(scratch * sizeof(float));
    float *d_x = to_device(h->x, n * sizeof(float)), *d_dy = to_device(h->dy, n * sizeof(float));
    float *d_y = poisoned_device(n * sizeof(float)), *d_dx = device_alloc(DEVICE_CUDA, n * sizeof(float), "dx");
    float *sv0 = malloc(saved * sizeof(float)), *sv1 = malloc(saved * sizeof(float));
    float *dx1 = malloc(n * sizeof(float)), *g1 = malloc(P * sizeof(float));
    uint16_t *x16 = malloc(n * sizeof(uint16_t)), *d_x16 = NULL;
    for (size_t i = 0; i < n; i++) x16[i] = cuda_test_bf16_bits(h->x[i]);
    if (offer_x16) d_x16 = to_device(x16, n * sizeof(uint16_t));
    if (mirror) matmul_mirror_weights_cuda(d_params, P, 0);
    const size_t conversions_before = matmul_bf16_conversions_cuda();

    matmul_bf16_copy_cuda(d_x, n, d_x16);   /* d_x16 NULL: none offered */
    moe_kind.forward_cuda(&L, d_y, d_x, B, T, &ctx);
    matmul_bf16_copy_cuda(NULL, 0, NULL);
    from_device(y, d_y, n * sizeof(float));
    from_device(sv0, L.saved, saved * sizeof(float));
    for (int pass = 0; pass < 2; pass++) {
        CUDA_CHECK(cudaMemset(d_dx, 0, n * sizeof(float)));
        CUDA_CHECK(cudaMemset(d_grads, 0, P * sizeof(float)));
        matmul_bf16_copy_cuda(d_x, n, d_x16);
        moe_kind.backward_cuda(&L, d_dx, d_dy, d_x, B, T, &ctx);
        matmul_bf16_copy_cuda(NULL, 0, NULL);
        from_device(pass ? dx : dx1, d_dx, n * sizeof(float));
        from_device(pass ? g : g1, d_grads, P * sizeof(float));
        from_device(sv1, L.saved, saved * sizeof(float));
        ck_assert_msg(memcmp(sv0, sv1, saved * sizeof(float)) == 0, "%s: backward %d wrote into the saved activations",
                      what, pass + 1);
    }
    ck_assert_msg(memcmp(dx, dx1, n * sizeof(float)) == 0, "%s: a second backward of one forward changed dx", what);
    for (int i = 0; i < pl.count; i++)
        ck_assert_msg(memcmp(g + pl.items[i].offset, g1 + pl.items[i].offset, pl.items[i].numel * sizeof(float)) == 0,
                      "%s: a second backward of one forward changed d %s", what, pl.items[i].name);
    *conversions = matmul_bf16_conversions_cuda() - conversions_before;
    matmul_forget_weights_cuda();

    device_free(DEVICE_CUDA, d_params); device_free(DEVICE_CUDA, d_x16); device_free(DEVICE_CUDA, d_grads);
    device_free(DEVICE_CUDA, L.saved); device_free(DEVICE_CUDA, ctx.scratch);
    device_free(DEVICE_CUDA, d_x); device_free(DEVICE_CUDA, d_dy);
    device_free(DEVICE_CUDA, d_y); device_free(DEVICE_CUDA, d_dx);
    moe_kind.destroy(&L);
    free(L.params); free(L.grads); param_list_free(&pl);
    free(sv0); free(sv1); free(dx1); free(g1); free(x16);
}

/* Two runs of the layer gave the same bits: y and dx (n floats) and every parameter's
 * gradient; a failure names the tensor, what the first run was and how the second differs. */
static void check_same_layer_bits(const LayerHarness *h, size_t n, const float *y, const float *dx, const float *g,
                                  const float *y_ref, const float *dx_ref, const float *g_ref, const char *what,
                                  const char *against) {
    ck_assert_msg(memcmp(y, y_ref, n * sizeof(float)) == 0, "%s: y differs %s", what, against);
    ck_assert_msg(memcmp(dx, dx_ref, n * sizeof(float)) == 0, "%s: dx differs %s", what, against);
    for (int i = 0; i < h->params.count; i++) {
        const ParamDecl *pd = &h->params.items[i];
        ck_assert_msg(memcmp(g + pd->offset, g_ref + pd->offset, pd->numel * sizeof(float)) == 0,
                      "%s: d %s differs %s", what, pd->name, against);
    }
}

/* The layer of the two bit-for-bit tests below: B 2 × T 64, d 64, 4 experts top-2 of hidden
 * 128 (sizes bf16 takes: multiples of 8, ≥ 64); its config written to *cfg (the harness keeps
 * a pointer to it), dy drawn. */
static const LayerCase BITS_CASE = {2, 64, 64, 4, 2, 128, 1, 0.01f, 0.01f, -1, 1010};
static LayerHarness *bits_harness(Config *cfg) {
    const LayerCase *c = &BITS_CASE;
    *cfg = layer_config(c);
    LayerHarness *h = harness_create(&moe_kind, cfg, c->B, c->T, c->seed, 0.05f);
    Rng rng;
    rng_seed(&rng, c->seed + 17);
    rng_fill_normal(&rng, h->dy, (size_t)c->B * c->T * c->d, 1.0f);
    return h;
}

/* The backward reads the forward's saved expert outputs and writes nothing saved: a second
 * backward of one forward gives the same bits (_i = 0: float32 matmuls). _i = 1: bf16
 * matmuls, with the sizes bf16 takes (d, H multiples of 8, ≥ 64; expert blocks padded to
 * 64 rows), run with the bf16 producers on (xg16 from the bf16 gather, deo16 from the
 * combine's backward, h16, dgate16, dup16 from the fused SwiGLU) and off (float32 operands converted by the matmuls): y, dx
 * and every gradient must agree to the bit (as test_cuda_model's
 * bf16_operands_from_their_producers_change_no_bit, here for the layer alone). */
START_TEST(test_layer_backward_twice_and_bf16_producers_agree) {
    const LayerCase c = BITS_CASE;
    const int bf16 = _i == 1;
    Config cfg;
    LayerHarness *h = bits_harness(&cfg);
    const size_t n = (size_t)c.B * c.T * c.d, P = h->params.total;
    float *y[2], *dx[2], *g[2];
    for (int r = 0; r < 2; r++) {
        y[r] = malloc(n * sizeof(float)); dx[r] = malloc(n * sizeof(float)); g[r] = malloc(P * sizeof(float));
    }
    ck_assert_int_eq(matmul_set_precision_cuda(bf16 ? "bf16" : "fp32"), 0);
    const int runs = bf16 ? 2 : 1;
    for (int r = 0; r < runs; r++) {
        char what[64];
        snprintf(what, sizeof what, "moe %s%s", bf16 ? "bf16" : "fp32",
                 bf16 ? (r == 0 ? ", producers on" : ", producers off") : "");
        if (bf16) {
            matmul_set_bf16_producers_cuda(r == 0);
            ck_assert_msg(matmul_bf16_operands_cuda(64, c.hidden, c.d) == (r == 0),
                          "%s: the expert products do not take the path under test", what);
        }
        size_t conversions;
        moe_device_run_backward_twice(h, &cfg, 0, 0, y[r], dx[r], g[r], &conversions, what);
    }
    matmul_set_bf16_producers_cuda(-1);
    ck_assert_int_eq(matmul_set_precision_cuda("fp32"), 0);
    if (bf16) {
        check_same_layer_bits(h, n, y[0], dx[0], g[0], y[1], dx[1], g[1], "bf16", "with the producers on and off");
        printf("  moe bf16: backward twice, producers on and off: the same bits\n");
    }
    for (int r = 0; r < 2; r++) { free(y[r]); free(dx[r]); free(g[r]); }
    harness_free(h);
}
END_TEST

/* The bf16 gather's two sources at the layer: in bf16 with the producers on, the experts' input
 * rows are copied from x's bf16 copy where one is offered (RMSNorm's in the model) and rounded
 * from x where none is; runs 0 and 1. Both must give the bits of run 2, the producers off
 * (float32 rows, converted by the matmuls): y, dx and every gradient. With the weights read
 * from the parameters' bf16 mirror (as model_forward makes it), runs 0 and 1 convert nothing
 * in a forward and two backwards (the router's 4-wide products stay float32): no conversion
 * of the gathered rows per expert is left; run 2 converts (the counter's own check). */
START_TEST(test_layer_bf16_gather_from_offered_copy_changes_no_bit) {
    const LayerCase c = BITS_CASE;
    Config cfg;
    LayerHarness *h = bits_harness(&cfg);
    const size_t n = (size_t)c.B * c.T * c.d, P = h->params.total;
    static const char *names[3] = {"producers on, no copy offered", "producers on, x's copy offered",
                                   "producers off"};
    float *y[3], *dx[3], *g[3];
    size_t conversions[3];
    ck_assert_int_eq(matmul_set_precision_cuda("bf16"), 0);
    for (int r = 0; r < 3; r++) {
        y[r] = malloc(n * sizeof(float)); dx[r] = malloc(n * sizeof(float)); g[r] = malloc(P * sizeof(float));
        char what[64];
        snprintf(what, sizeof what, "moe bf16, %s", names[r]);
        matmul_set_bf16_producers_cuda(r < 2);
        ck_assert_msg(matmul_bf16_operands_cuda(64, c.d, c.hidden) == (r < 2),
                      "%s: the expert products do not take the path under test", what);
        moe_device_run_backward_twice(h, &cfg, r == 1, 1, y[r], dx[r], g[r], &conversions[r], what);
    }
    matmul_set_bf16_producers_cuda(-1);
    ck_assert_int_eq(matmul_set_precision_cuda("fp32"), 0);
    for (int r = 0; r < 2; r++) {
        check_same_layer_bits(h, n, y[r], dx[r], g[r], y[2], dx[2], g[2], names[r], "from the producers off");
        ck_assert_msg(conversions[r] == 0, "%s: %zu bf16 conversions, expected none", names[r], conversions[r]);
    }
    ck_assert_msg(conversions[2] > 0, "producers off: no bf16 conversion counted (is the counter read?)");
    printf("  moe bf16: gather from x and from its offered copy, the same bits as the producers off; "
           "conversions %zu, %zu / %zu\n", conversions[0], conversions[1], conversions[2]);
    for (int r = 0; r < 3; r++) { free(y[r]); free(dx[r]); free(g[r]); }
    harness_free(h);
}
END_TEST

static Suite *cuda_moe_suite(void) {
    Suite *s = suite_create("cuda_moe");
    TCase *tk = tcase_create("kernels");
    tcase_set_timeout(tk, 120);
    int n_route = (int)(sizeof ROUTE_CASES / sizeof *ROUTE_CASES);
    int n_dispatch = (int)(sizeof DISPATCH_CASES / sizeof *DISPATCH_CASES);
    tcase_add_loop_test(tk, test_route_forward_matches_reference, 0, n_route);
    tcase_add_loop_test(tk, test_route_sums_match_reference, 0, (int)(sizeof SUMS_CASES / sizeof *SUMS_CASES));
    tcase_add_loop_test(tk, test_gather_copies_token_rows, 0, n_dispatch);
    tcase_add_loop_test(tk, test_gather_bf16_matches_reference, 0, 4 * n_dispatch);
    tcase_add_loop_test(tk, test_combine_matches_reference, 0, n_dispatch);
    tcase_add_loop_test(tk, test_combine_backward_matches_reference, 0, 4 * n_dispatch);
    tcase_add_loop_test(tk, test_scatter_add_accumulates_like_reference, 0, n_dispatch);
    tcase_add_loop_test(tk, test_route_backward_matches_reference, 0, n_route);
    suite_add_tcase(s, tk);
    TCase *tl = tcase_create("layer");
    tcase_set_timeout(tl, 120);
    tcase_add_loop_test(tl, test_layer_matches_cpu, 0, (int)(sizeof LAYER_CASES / sizeof *LAYER_CASES));
    tcase_add_test(tl, test_layer_reused_at_a_smaller_batch_matches_cpu);
    tcase_add_loop_test(tl, test_layer_backward_twice_and_bf16_producers_agree, 0, 2);
    tcase_add_test(tl, test_layer_bf16_gather_from_offered_copy_changes_no_bit);
    suite_add_tcase(s, tl);
    return s;
}

int main(void) { return cuda_test_main("test_cuda_moe", cuda_moe_suite); }
