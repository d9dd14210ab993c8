/* bench_ops.c — see bench_ops.h. The op list, with the formula each one is measured by:
 *
 *  matmul_in_proj   cuBLAS at the Mamba in_proj shape: N = B·T rows, C = d, OC = 2·expand·d.
 *                   forward 2·N·C·OC FLOPs (one multiply-add per output per input column);
 *                   backward 4·N·C·OC (dinp = dout·W and dW = doutᵀ·inp, each as large as
 *                   the forward). Against the float32 peak: cuBLAS runs with TF32 off.
 *                   matmul_in_proj_tf32 / _bf16: the same in TF32 / bf16 (operand
 *                   conversion included), against the tensor cores' dense TF32 / bf16 peak
 *                   (8× / 16× float32's). The layers use train.matmul_precision.
 *  attention        the flash kernel, causal (sliding window too when the pattern has 'W'),
 *                   GQA with the config's kv heads, hd = d/H. See attention_fwd_flops.
 *                   Float32 (CUDA cores), then attention_tf32 / _bf16: the tensor-core
 *                   kernels of train.matmul_precision tf32 / bf16, against their dense peaks.
 *  selective_scan   u, δ (B,T,di), B, C (B,T,N) → y; GB/s over the minimal bytes, and the
 *                   time those bytes take at the DRAM bandwidth. See scan_bytes.
 *  causal_conv1d    x (B,T,di), kernel d_conv; the same kind of floor. See conv_bytes.
 *  layer_<kind>     a whole layer (mamba, attention, sliding_window, dense, moe, gla) through
 *                   its LayerKind's forward_cuda/backward_cuda, built as the model builds it,
 *                   in train.matmul_precision and against its peak. See layer_flops.
 * Each op is timed forward, backward and forward+backward (layers: forward and
 * forward+backward, since a layer's backward needs the forward just before it). */
#include "bench_ops.h"

#ifdef BRAID_HAVE_CUDA
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "../cuda/cuda_check.h"
#include "../cuda/mamba_cuda.h"
#include "../cuda/ops_cuda.h"
#include "../layers/layer.h"
#include "../layers/mamba_cpu.h"
#include "../models/config.h"
#include "device.h"
#include "rng.h"

/* Kernel limits (the launchers abort beyond them; here the op is skipped with a note). */
#define SCAN_MAX_D_STATE 32      /* mamba_cuda.h */
#define CONV_MAX_KERNEL 8        /* mamba_cuda.h */
#define ATTENTION_MAX_HEAD_DIM 128   /* ops_cuda.h */

/* ------------------------------------------------------------------ formulas */

/* Forward FLOPs of the attention core. Per head and per (query, key) pair the forward does
 * two dot products of length hd (S = QKᵀ and O = PV), 2 FLOPs per multiply-add: 4·hd.
 * Full causal counts T²/2 pairs (the convention of tools/bench_torch_gpu.py; the exact
 * T(T+1)/2 differs by 1/T), so forward = 4·B·H·T²·hd/2; a window w counts the pairs it
 * keeps exactly, Σ_t min(t+1, w). The backward recomputes S and then forms dV = PᵀdO,
 * dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q: five products to the forward's two, 2.5× the forward,
 * so forward+backward = 3.5× the forward. Softmax and scaling are not counted. */
static double attention_fwd_flops(int B, int T, int H, int hd, int window) {
    double pairs = 0.0;
    if (window <= 0) {
        pairs = 0.5 * (double)T * T;
    } else {
        for (int t = 0; t < T; t++) pairs += t + 1 < window ? t + 1 : window;
    }
    return 4.0 * B * H * hd * pairs;
}
#define ATTENTION_BWD_OVER_FWD 2.5

/* Minimal bytes of the selective scan, float32 (4 bytes), BTdi = B·T·di, BTN = B·T·N:
 *  forward   reads u, δ (BTdi each), B, C (BTN each), writes y (BTdi):
 *            4·(3·BTdi + 2·BTN)
 *  backward  reads dy, u, δ (BTdi each), B, C (BTN each), writes du, dδ (BTdi each),
 *            dB, dC (BTN each): 4·(5·BTdi + 4·BTN)
 *  both      the sum, 4·(8·BTdi + 6·BTN): two passes, each must touch its own inputs.
 * Left out on purpose: A, D, dA, dD (di·N and di floats, < 0.1% here); the chunk states the
 * forward saves and the backward reads, and the backward's partial-sum scratch, because
 * they are this implementation's choices, not the op's. The floor is what a kernel that
 * read and wrote each tensor exactly once would need. braid's backward accumulates into
 * du, dδ, dB, dC (a read-modify-write), which the floor does not charge either. */
static double scan_bytes(int B, int T, int di, int N, int backward) {
    double btdi = (double)B * T * di, btn = (double)B * T * N;
    return backward ? 4.0 * (5.0 * btdi + 4.0 * btn) : 4.0 * (3.0 * btdi + 2.0 * btn);
}

/* Minimal bytes of the depthwise causal conv1d, float32, BTC = B·T·C, weight (C,K), bias (C):
 *  forward   reads x, weight, bias, writes out: 4·(2·BTC + C·K + C)
 *  backward  reads dout, x, weight, writes dx, dweight, dbias: 4·(3·BTC + 2·C·K + C)
 * (the K taps of a row reuse x through the cache, so x counts once). */
static double conv_bytes(int B, int T, int C, int K, int backward) {
    double btc = (double)B * T * C, ck = (double)C * K;
    return backward ? 4.0 * (3.0 * btc + 2.0 * ck + C) : 4.0 * (2.0 * btc + ck + C);
}

/* Weights a token multiplies: the 2-D ".weight" tensors a layer declares (A_log is 2-D but
 * elementwise; the conv weight is 3-D and depthwise, so neither is a matmul), each MoE
 * expert's counted at top_k/experts because a token visits top_k of the experts (the
 * router's at full size: every token goes through it). The same rule as
 * model_flops_per_token, restricted to true matmul weights. */
static double active_matmul_params(const ParamList *pl, const Config *cfg) {
    double total = 0.0;
    for (int i = 0; i < pl->count; i++) {
        const ParamDecl *pd = &pl->items[i];
        size_t len = strlen(pd->name);
        if (pd->ndim != 2 || len < 7 || strcmp(pd->name + len - 7, ".weight") != 0) continue;
        double active = (double)pd->numel;
        if (strstr(pd->name, ".experts."))
            active *= (double)cfg->model.moe.top_k / cfg->model.moe.experts;
        total += active;
    }
    return total;
}

/* FLOPs of a layer over B·T tokens: 2·(active matmul params) per token forward and 4·
 * backward (dinp and dW), so 6·params·tokens for forward+backward, plus the attention core
 * (attention_fwd_flops, backward 2.5×) for attention kinds. The scan, the conv and the
 * elementwise ops are not counted (they are memory-bound; their ops report bytes). */
static double layer_flops(char symbol, const Config *cfg, double params, int B, int T, int backward) {
    double tokens = (double)B * T, f = (backward ? 6.0 : 2.0) * params * tokens;
    if (symbol == 'A' || symbol == 'W') {
        const AttentionConfig *ac = &cfg->model.attention;
        int hd = cfg->model.d_model / ac->n_heads;
        double fwd = attention_fwd_flops(B, T, ac->n_heads, hd, symbol == 'W' ? ac->window : 0);
        f += backward ? (1.0 + ATTENTION_BWD_OVER_FWD) * fwd : fwd;
    }
    return f;
}

/* GPU DRAM bandwidth from the device's attributes: memory clock × bus width × 2 (double
 * data rate), the theoretical peak (H100 SXM: 2619 MHz × 5120 bit × 2 / 8 = 3.35 TB/s). A
 * copy reaches ~90% of it, so a floor ratio of 1.1 is about as good as it gets. 0 when the
 * driver does not report the attributes. */
static double dram_bytes_per_s(int *mem_khz, int *bus_bits) {
    *mem_khz = 0;
    *bus_bits = 0;
    if (cudaDeviceGetAttribute(mem_khz, cudaDevAttrMemoryClockRate, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0.0;
    }
    return (double)*mem_khz * 1e3 * (*bus_bits / 8.0) * 2.0;
}

/* ------------------------------------------------------------------ timing and output */

#define SHAPE_MAX 8
#define OP_NAME_MAX 48

typedef struct OpShape {
    int n;
    const char *key[SHAPE_MAX];
    long val[SHAPE_MAX];
} OpShape;

static void shape_add(OpShape *s, const char *key, long val) {
    BRAID_CHECK(s->n < SHAPE_MAX, "bench_ops: shape with more than %d entries", SHAPE_MAX);
    s->key[s->n] = key;
    s->val[s->n++] = val;
}

typedef enum { METRIC_FLOPS, METRIC_BYTES } MetricKind;

typedef struct Bench {
    const BenchOpsOptions *opt;
    FILE *out;
    double peak_flops;       /* float32, FLOP/s; 0 if unknown */
    double dram;             /* bytes/s; 0 if unknown */
    cudaEvent_t start, stop;
    float *times;            /* opt->repeats */
    uint64_t buffers;        /* random buffers made so far: each gets its own seed */
} Bench;

typedef void (*BenchFn)(void *arg);

static int compare_floats(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median ms of fn over opt->repeats calls, after opt->warmup untimed ones. Each call is
 * bracketed by events on the default stream, where every launcher queues its work, so the
 * time is the GPU's from the first kernel's start to the last one's end, host gaps between
 * launches included (a launch-bound op pays for them in training too). */
static double bench_time(Bench *b, BenchFn fn, void *arg, double *min_ms, double *max_ms) {
    const int n = b->opt->repeats;
    CUDA_CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < b->opt->warmup; i++) fn(arg);
    for (int i = 0; i < n; i++) {
        CUDA_CHECK(cudaEventRecord(b->start, 0));
        fn(arg);
        CUDA_CHECK(cudaEventRecord(b->stop, 0));
        CUDA_CHECK(cudaEventSynchronize(b->stop));
        CUDA_CHECK(cudaEventElapsedTime(&b->times[i], b->start, b->stop));
    }
    CUDA_CHECK(cudaGetLastError());
    qsort(b->times, (size_t)n, sizeof b->times[0], compare_floats);
    *min_ms = b->times[0];
    *max_ms = b->times[n - 1];
    return n % 2 ? b->times[n / 2] : 0.5 * ((double)b->times[n / 2 - 1] + b->times[n / 2]);
}

static void print_header(Bench *b) {
    fprintf(b->out, "%-28s %-42s %9s  %-16s %-22s %s\n", "op", "shape", "median ms", "achieved",
            "peak / floor", "ratio");
}

/* One op's table line and, with --json, its JSON line. work is FLOPs or floor bytes;
 * params > 0 (layers) goes into the JSON as the active matmul parameter count. */
static void report(Bench *b, const char *op, const OpShape *shape, MetricKind kind, double work,
                   double ms, double min_ms, double max_ms, double params) {
    char shape_s[160] = "", achieved[32], ceiling[40], ratio[32];
    size_t at = 0;
    for (int i = 0; i < shape->n && at < sizeof shape_s; i++)
        at += (size_t)snprintf(shape_s + at, sizeof shape_s - at, "%s%s=%ld", i ? " " : "",
                               shape->key[i], shape->val[i]);
    /* events resolve ~0.5 µs: a 0 would only make an inf that JSON cannot carry */
    const double rate = work / (fmax(ms, 1e-6) * 1e-3);
    double ceil_value = 0.0, ratio_value = NAN;
    if (kind == METRIC_FLOPS) {
        snprintf(achieved, sizeof achieved, "%8.2f TFLOP/s", rate / 1e12);
        if (b->peak_flops > 0.0) {
            ceil_value = b->peak_flops;
            ratio_value = rate / b->peak_flops;
            snprintf(ceiling, sizeof ceiling, "peak %6.2f TFLOP/s", b->peak_flops / 1e12);
            snprintf(ratio, sizeof ratio, "%5.1f%% of peak", 100.0 * ratio_value);
        } else {
            snprintf(ceiling, sizeof ceiling, "peak unknown");
            snprintf(ratio, sizeof ratio, "-");
        }
    } else {
        snprintf(achieved, sizeof achieved, "%8.1f GB/s", rate / 1e9);
        if (b->dram > 0.0) {
            ceil_value = work / b->dram * 1e3;   /* the floor, ms */
            ratio_value = ms / ceil_value;
            snprintf(ceiling, sizeof ceiling, "floor %8.3f ms", ceil_value);
            snprintf(ratio, sizeof ratio, "%6.2fx floor", ratio_value);
        } else {
            snprintf(ceiling, sizeof ceiling, "floor unknown");
            snprintf(ratio, sizeof ratio, "-");
        }
    }
    fprintf(b->out, "%-28s %-42s %9.3f  %-16s %-22s %s\n", op, shape_s, ms, achieved, ceiling, ratio);
    if (!b->opt->json) return;
    FILE *f = b->out;
    fprintf(f, "{\"what\": \"op\", \"impl\": \"braid\", \"op\": ");
    json_write_string(f, op);
    fprintf(f, ", \"shape\": {");
    for (int i = 0; i < shape->n; i++) fprintf(f, "%s\"%s\": %ld", i ? ", " : "", shape->key[i], shape->val[i]);
    fprintf(f, "}, \"ms\": %.4f, \"ms_min\": %.4f, \"ms_max\": %.4f, \"runs\": %d, \"warmup\": %d",
            ms, min_ms, max_ms, b->opt->repeats, b->opt->warmup);
    if (params > 0.0) fprintf(f, ", \"active_matmul_params\": %.0f", params);
    if (kind == METRIC_FLOPS) {
        fprintf(f, ", \"flops\": %.6g, \"tflops\": %.4f", work, rate / 1e12);
        if (ceil_value > 0.0)
            fprintf(f, ", \"peak_tflops\": %.4f, \"fraction_of_peak\": %.4f", ceil_value / 1e12, ratio_value);
    } else {
        fprintf(f, ", \"bytes\": %.6g, \"gbps\": %.2f", work, rate / 1e9);
        if (ceil_value > 0.0)
            fprintf(f, ", \"dram_gbps\": %.1f, \"floor_ms\": %.4f, \"time_over_floor\": %.3f",
                    b->dram / 1e9, ceil_value, ratio_value);
    }
    fprintf(f, "}\n");
}

static void report_skip(Bench *b, const char *op, const char *why) {
    fprintf(b->out, "%-28s skipped: %s\n", op, why);
    if (b->opt->json) {
        fprintf(b->out, "{\"what\": \"op\", \"impl\": \"braid\", \"op\": ");
        json_write_string(b->out, op);
        fprintf(b->out, ", \"skipped\": ");
        json_write_string(b->out, why);
        fprintf(b->out, "}\n");
    }
    fflush(b->out);
}

/* Times fn and reports it as `base``suffix`. */
static void bench_one(Bench *b, const char *base, const char *suffix, const OpShape *shape,
                      MetricKind kind, double work, BenchFn fn, void *arg, double params) {
    char name[OP_NAME_MAX];
    snprintf(name, sizeof name, "%s%s", base, suffix);
    double mn, mx, ms = bench_time(b, fn, arg, &mn, &mx);
    report(b, name, shape, kind, work, ms, mn, mx, params);
    /* out at once: an op that dies later (out of memory, a CUDA error aborts) must not
     * take the finished lines with it in the stdio buffer */
    fflush(b->out);
}

/* ------------------------------------------------------------------ device buffers */

#define FILL_CHUNK ((size_t)1 << 20)

/* n random floats on the device: normal(0, p) when uniform is 0, else uniform in [p, q).
 * Made on the host in chunks of FILL_CHUNK, chunk c of buffer k seeded with (k << 32) + c:
 * the chunks run on all cores (hundreds of MB per op) and the numbers are the same
 * whatever the thread count, and no two chunks of any buffers share a stream. */
static float *device_random(Bench *b, size_t n, int uniform, float p, float q, const char *what) {
    float *host = braid_malloc((n ? n : 1) * sizeof(float), what);
    const uint64_t seed = ++b->buffers << 32;
    const size_t chunks = ceil_div(n, FILL_CHUNK);
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        Rng rng;
        rng_seed(&rng, seed + c);
        size_t lo = c * FILL_CHUNK, len = n - lo < FILL_CHUNK ? n - lo : FILL_CHUNK;
        if (uniform) rng_fill_uniform(&rng, host + lo, len, p, q);
        else rng_fill_normal(&rng, host + lo, len, p);
    }
    float *dev = device_alloc(DEVICE_CUDA, n * sizeof(float), what);
    device_upload(DEVICE_CUDA, dev, host, n * sizeof(float));
    free(host);
    return dev;
}

static float *device_normal(Bench *b, size_t n, const char *what) {
    return device_random(b, n, 0, 1.0f, 0.0f, what);
}

/* Zero-filled: outputs, and gradients the backward accumulates into. */
static float *device_zeros(size_t n, const char *what) {
    return device_alloc(DEVICE_CUDA, n * sizeof(float), what);
}

static void device_free_all(float **bufs, size_t n) {
    for (size_t i = 0; i < n; i++) device_free(DEVICE_CUDA, bufs[i]);
}

/* Which CUDA kernels with a size limit an op runs. */
enum { NEEDS_SCAN = 1, NEEDS_CONV = 2, NEEDS_FLASH = 4 };

static int kernels_of_kind(char symbol) {
    if (symbol == 'M') return NEEDS_SCAN | NEEDS_CONV;
    if (symbol == 'A' || symbol == 'W') return NEEDS_FLASH;
    return 0;
}

/* 1 (and why) when the config's settings for kind `symbol` are invalid (config_load checks
 * only the kinds its pattern uses, and every kind is timed here) or pass a limit of one of
 * the `needs` kernels (the launchers abort past them); else 0. */
static int cannot_run(char symbol, int needs, const Config *cfg, char *why, size_t len) {
    const LayerKind *kind = layer_kind_by_symbol(symbol);
    if (kind && kind->validate && kind->validate(cfg, why, len)) return 1;
    const ModelConfig *m = &cfg->model;
    if ((needs & NEEDS_SCAN) && m->mamba.d_state > SCAN_MAX_D_STATE) {
        snprintf(why, len, "mamba d_state %d > %d, the CUDA scan's limit", m->mamba.d_state,
                 SCAN_MAX_D_STATE);
        return 1;
    }
    if ((needs & NEEDS_CONV) && m->mamba.d_conv > CONV_MAX_KERNEL) {
        snprintf(why, len, "mamba d_conv %d > %d, the CUDA conv's limit", m->mamba.d_conv,
                 CONV_MAX_KERNEL);
        return 1;
    }
    /* n_heads > 0 here: the attention kinds' validate checked that it divides d_model */
    if ((needs & NEEDS_FLASH) && m->d_model / m->attention.n_heads > ATTENTION_MAX_HEAD_DIM) {
        snprintf(why, len, "head dim %d > %d, the flash kernel's limit",
                 m->d_model / m->attention.n_heads, ATTENTION_MAX_HEAD_DIM);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ matmul */

typedef struct MatmulRun {
    float *out, *inp, *w, *dout, *dinp, *dw;
    int N, C, OC;
} MatmulRun;

static void matmul_fwd(void *a) {
    MatmulRun *r = a;
    matmul_forward_cuda(r->out, r->inp, r->w, NULL, r->N, r->C, r->OC, 0, 0);
}
static void matmul_bwd(void *a) {
    MatmulRun *r = a;
    matmul_backward_cuda(r->dinp, r->dw, NULL, r->dout, r->inp, r->w, r->N, r->C, r->OC, 0);
}
static void matmul_both(void *a) { matmul_fwd(a); matmul_bwd(a); }

static void bench_matmul(Bench *b, const Config *cfg) {
    const int B = cfg->train.batch_size, T = cfg->task.seq_len, d = cfg->model.d_model;
    MatmulRun r = {.N = B * T, .C = d, .OC = 2 * cfg->model.mamba.expand * d};
    const size_t nc = (size_t)r.N * r.C, oc = (size_t)r.OC * r.C, no = (size_t)r.N * r.OC;
    r.inp = device_normal(b, nc, "matmul inp");
    r.w = device_normal(b, oc, "matmul weight");
    r.dout = device_normal(b, no, "matmul dout");
    r.out = device_zeros(no, "matmul out");
    r.dinp = device_zeros(nc, "matmul dinp");
    r.dw = device_zeros(oc, "matmul dweight");
    OpShape s = {0};
    shape_add(&s, "N", r.N); shape_add(&s, "C", r.C); shape_add(&s, "OC", r.OC);
    const double fwd = 2.0 * r.N * r.C * (double)r.OC;   /* see the file comment */
    bench_one(b, "matmul_in_proj", "_fwd", &s, METRIC_FLOPS, fwd, matmul_fwd, &r, 0.0);
    bench_one(b, "matmul_in_proj", "_bwd", &s, METRIC_FLOPS, 2.0 * fwd, matmul_bwd, &r, 0.0);
    bench_one(b, "matmul_in_proj", "_fwd_bwd", &s, METRIC_FLOPS, 3.0 * fwd, matmul_both, &r, 0.0);
    /* train.matmul_precision tf32 and bf16, against the tensor cores' dense peak for each
     * (matmul_precision_peak_factor; bf16 includes converting both operands, as in training) */
    const double fp32_peak = b->peak_flops;
    static const char *reduced[] = {"tf32", "bf16"};
    for (int p = 0; p < 2; p++) {
        char name[32];
        snprintf(name, sizeof name, "matmul_in_proj_%s", reduced[p]);
        matmul_set_precision_cuda(reduced[p]);
        b->peak_flops = matmul_precision_peak_factor(reduced[p]) * fp32_peak;
        bench_one(b, name, "_fwd_bwd", &s, METRIC_FLOPS, 3.0 * fwd, matmul_both, &r, 0.0);
    }
    b->peak_flops = fp32_peak;
    matmul_set_precision_cuda(cfg->train.matmul_precision);   /* what the layers below use */
    float *all[] = {r.inp, r.w, r.dout, r.out, r.dinp, r.dw};
    device_free_all(all, sizeof all / sizeof all[0]);
}

/* ------------------------------------------------------------------ attention */

typedef struct AttentionRun {
    float *out, *lse, *q, *k, *v, *dout, *dq, *dk, *dv;
    int B, T, H, Hkv, hd, window;
} AttentionRun;

static void attention_fwd(void *a) {
    AttentionRun *r = a;
    attention_forward_cuda(r->out, r->lse, r->q, r->k, r->v, r->B, r->T, r->H, r->Hkv, r->hd,
                           r->window, 0);
}
/* Reads out and lse of the last forward (the fwd timing before it leaves them there). */
static void attention_bwd(void *a) {
    AttentionRun *r = a;
    attention_backward_cuda(r->dq, r->dk, r->dv, r->dout, r->q, r->k, r->v, r->out, r->lse, r->B,
                            r->T, r->H, r->Hkv, r->hd, r->window, 0);
}
static void attention_both(void *a) { attention_fwd(a); attention_bwd(a); }

/* window 0: full causal ("attention"); > 0: "attention_window" (keys t−w+1..t). */
static void bench_attention(Bench *b, const Config *cfg, int window) {
    const char *name = window > 0 ? "attention_window" : "attention";
    const AttentionConfig *ac = &cfg->model.attention;
    char why[512];
    if (cannot_run(window > 0 ? 'W' : 'A', NEEDS_FLASH, cfg, why, sizeof why)) {
        report_skip(b, name, why);
        return;
    }
    AttentionRun r = {.B = cfg->train.batch_size, .T = cfg->task.seq_len, .H = ac->n_heads,
                      .Hkv = ac->n_kv_heads > 0 ? ac->n_kv_heads : ac->n_heads,
                      .hd = cfg->model.d_model / ac->n_heads, .window = window};
    const size_t nq = (size_t)r.B * r.T * r.H * r.hd, nkv = (size_t)r.B * r.T * r.Hkv * r.hd;
    r.q = device_normal(b, nq, "attention q");
    r.k = device_normal(b, nkv, "attention k");
    r.v = device_normal(b, nkv, "attention v");
    r.dout = device_normal(b, nq, "attention dout");
    r.out = device_zeros(nq, "attention out");
    r.lse = device_zeros((size_t)r.B * r.H * r.T, "attention lse");
    r.dq = device_zeros(nq, "attention dq");
    r.dk = device_zeros(nkv, "attention dk");
    r.dv = device_zeros(nkv, "attention dv");
    OpShape s = {0};
    shape_add(&s, "B", r.B); shape_add(&s, "T", r.T); shape_add(&s, "H", r.H);
    shape_add(&s, "Hkv", r.Hkv); shape_add(&s, "hd", r.hd);
    if (window > 0) shape_add(&s, "window", window);
    const double fwd = attention_fwd_flops(r.B, r.T, r.H, r.hd, window);
    /* float32 on the CUDA cores against the float32 peak, then (name_tf32, name_bf16) the
     * tensor-core kernels that train.matmul_precision tf32 and bf16 select, against the
     * dense TF32 and bf16 peaks */
    const double fp32_peak = b->peak_flops;
    static const char *precisions[] = {"fp32", "tf32", "bf16"};
    for (int p = 0; p < 3; p++) {
        char label[48];
        snprintf(label, sizeof label, "%s%s%s", name, p ? "_" : "", p ? precisions[p] : "");
        attention_set_precision_cuda(precisions[p]);
        b->peak_flops = matmul_precision_peak_factor(precisions[p]) * fp32_peak;
        bench_one(b, label, "_fwd", &s, METRIC_FLOPS, fwd, attention_fwd, &r, 0.0);
        bench_one(b, label, "_bwd", &s, METRIC_FLOPS, ATTENTION_BWD_OVER_FWD * fwd, attention_bwd, &r, 0.0);
        bench_one(b, label, "_fwd_bwd", &s, METRIC_FLOPS, (1.0 + ATTENTION_BWD_OVER_FWD) * fwd,
                  attention_both, &r, 0.0);
    }
    b->peak_flops = fp32_peak;
    attention_set_precision_cuda(cfg->train.matmul_precision);   /* what the layers below use */
    float *all[] = {r.q, r.k, r.v, r.dout, r.out, r.lse, r.dq, r.dk, r.dv};
    device_free_all(all, sizeof all / sizeof all[0]);
}

/* ------------------------------------------------------------------ selective scan */

typedef struct ScanRun {
    float *y, *states, *u, *delta, *A, *Bm, *Cm, *D, *dy, *du, *ddelta, *dA, *dB, *dC, *dD, *scratch;
    size_t scratch_floats;
    int B, T, di, N, chunk;
} ScanRun;

static void scan_fwd(void *a) {
    ScanRun *r = a;
    selective_scan_forward_cuda(r->y, r->states, r->u, r->delta, r->A, r->Bm, r->Cm, r->D, r->B,
                                r->T, r->di, r->N, r->chunk, 0);
}
/* Reads the chunk states of the last forward (the fwd timing before it leaves them). The
 * variant the Mamba layer calls: du and dδ written, not accumulated; the scan itself, so dδ
 * not through the softplus (the layer's call adds 1 − e^{−δ} a value of the write-out). */
static void scan_bwd(void *a) {
    ScanRun *r = a;
    selective_scan_backward_write_cuda(r->du, r->ddelta, r->dA, r->dB, r->dC, r->dD, r->dy, r->u,
                                       r->delta, r->A, r->Bm, r->Cm, r->D, r->states, r->B, r->T, r->di,
                                       r->N, r->chunk, r->scratch, r->scratch_floats, 0, 0);
}
static void scan_both(void *a) { scan_fwd(a); scan_bwd(a); }

static void bench_scan(Bench *b, const Config *cfg) {
    const MambaConfig *mc = &cfg->model.mamba;
    ScanRun r = {.B = cfg->train.batch_size, .T = cfg->task.seq_len,
                 .di = mc->expand * cfg->model.d_model, .N = mc->d_state, .chunk = mc->chunk};
    char why[512];
    if (cannot_run('M', NEEDS_SCAN, cfg, why, sizeof why)) {
        report_skip(b, "selective_scan", why);
        return;
    }
    const size_t btdi = (size_t)r.B * r.T * r.di, btn = (size_t)r.B * r.T * r.N;
    const size_t dn = (size_t)r.di * r.N;
    const size_t n_states = (size_t)r.B * selective_scan_n_chunks(r.T, r.chunk) * dn;
    r.u = device_normal(b, btdi, "scan u");
    r.delta = device_random(b, btdi, 1, 0.001f, 0.5f, "scan delta");   /* δ after softplus */
    r.Bm = device_normal(b, btn, "scan B");
    r.Cm = device_normal(b, btn, "scan C");
    r.D = device_normal(b, (size_t)r.di, "scan D");
    r.dy = device_normal(b, btdi, "scan dy");
    /* A[c, n] = −(n+1): Mamba's S4D-real init, a spread of decay rates per channel */
    float *hA = braid_malloc(dn * sizeof(float), "scan A (host)");
    for (size_t i = 0; i < dn; i++) hA[i] = -(float)(i % (size_t)r.N + 1);
    r.A = device_zeros(dn, "scan A");
    device_upload(DEVICE_CUDA, r.A, hA, dn * sizeof(float));
    free(hA);
    r.y = device_zeros(btdi, "scan y");
    r.states = device_zeros(n_states, "scan chunk states");
    r.du = device_zeros(btdi, "scan du");
    r.ddelta = device_zeros(btdi, "scan ddelta");
    r.dA = device_zeros(dn, "scan dA");
    r.dB = device_zeros(btn, "scan dB");
    r.dC = device_zeros(btn, "scan dC");
    r.dD = device_zeros((size_t)r.di, "scan dD");
    r.scratch_floats = selective_scan_backward_cuda_scratch_floats(r.B, r.T, r.di, r.N);
    r.scratch = device_zeros(r.scratch_floats, "scan backward scratch");
    OpShape s = {0};
    shape_add(&s, "B", r.B); shape_add(&s, "T", r.T); shape_add(&s, "di", r.di);
    shape_add(&s, "N", r.N); shape_add(&s, "chunk", r.chunk);
    const double fwd = scan_bytes(r.B, r.T, r.di, r.N, 0), bwd = scan_bytes(r.B, r.T, r.di, r.N, 1);
    bench_one(b, "selective_scan", "_fwd", &s, METRIC_BYTES, fwd, scan_fwd, &r, 0.0);
    bench_one(b, "selective_scan", "_bwd", &s, METRIC_BYTES, bwd, scan_bwd, &r, 0.0);
    bench_one(b, "selective_scan", "_fwd_bwd", &s, METRIC_BYTES, fwd + bwd, scan_both, &r, 0.0);
    float *all[] = {r.u, r.delta, r.Bm, r.Cm, r.D, r.dy, r.A, r.y, r.states, r.du, r.ddelta,
                    r.dA, r.dB, r.dC, r.dD, r.scratch};
    device_free_all(all, sizeof all / sizeof all[0]);
}

/* ------------------------------------------------------------------ causal conv1d */

typedef struct ConvRun {
    float *out, *x, *w, *bias, *dout, *dx, *dw, *dbias;
    int B, T, C, K;
} ConvRun;

static void conv_fwd(void *a) {
    ConvRun *r = a;
    causal_conv1d_forward_cuda(r->out, r->x, r->w, r->bias, r->B, r->T, r->C, r->K, 0);
}
static void conv_bwd(void *a) {
    ConvRun *r = a;
    causal_conv1d_backward_cuda(r->dx, r->dw, r->dbias, r->dout, NULL, r->x, r->w, r->B, r->T, r->C,
                                r->C, r->K, 0);
}
static void conv_both(void *a) { conv_fwd(a); conv_bwd(a); }

static void bench_conv(Bench *b, const Config *cfg) {
    const MambaConfig *mc = &cfg->model.mamba;
    ConvRun r = {.B = cfg->train.batch_size, .T = cfg->task.seq_len,
                 .C = mc->expand * cfg->model.d_model, .K = mc->d_conv};
    char why[512];
    if (cannot_run('M', NEEDS_CONV, cfg, why, sizeof why)) {
        report_skip(b, "causal_conv1d", why);
        return;
    }
    const size_t btc = (size_t)r.B * r.T * r.C, ck = (size_t)r.C * r.K;
    r.x = device_normal(b, btc, "conv x");
    r.w = device_normal(b, ck, "conv weight");
    r.bias = device_normal(b, (size_t)r.C, "conv bias");
    r.dout = device_normal(b, btc, "conv dout");
    r.out = device_zeros(btc, "conv out");
    r.dx = device_zeros(btc, "conv dx");
    r.dw = device_zeros(ck, "conv dweight");
    r.dbias = device_zeros((size_t)r.C, "conv dbias");
    OpShape s = {0};
    shape_add(&s, "B", r.B); shape_add(&s, "T", r.T); shape_add(&s, "C", r.C); shape_add(&s, "K", r.K);
    const double fwd = conv_bytes(r.B, r.T, r.C, r.K, 0), bwd = conv_bytes(r.B, r.T, r.C, r.K, 1);
    bench_one(b, "causal_conv1d", "_fwd", &s, METRIC_BYTES, fwd, conv_fwd, &r, 0.0);
    bench_one(b, "causal_conv1d", "_bwd", &s, METRIC_BYTES, bwd, conv_bwd, &r, 0.0);
    bench_one(b, "causal_conv1d", "_fwd_bwd", &s, METRIC_BYTES, fwd + bwd, conv_both, &r, 0.0);
    float *all[] = {r.x, r.w, r.bias, r.dout, r.out, r.dx, r.dw, r.dbias};
    device_free_all(all, sizeof all / sizeof all[0]);
}

/* ------------------------------------------------------------------ whole layers */

typedef struct LayerRun {
    Layer *L;
    Ctx *ctx;
    float *x, *y, *dx, *dy;
    int B, T;
} LayerRun;

static void layer_fwd(void *a) {
    LayerRun *r = a;
    r->L->aux_loss = 0.0;
    r->L->kind->forward_cuda(r->L, r->y, r->x, r->B, r->T, r->ctx);
}
/* Forward then backward: a layer's backward reads what its forward saved (MoE: the host
 * copy of that forward's expert offsets), so the two are timed as a pair. */
static void layer_both(void *a) {
    LayerRun *r = a;
    layer_fwd(a);
    r->L->kind->backward_cuda(r->L, r->dx, r->dy, r->x, r->B, r->T, r->ctx);
}

/* The layer's kind-specific sizes, for the shape column. */
static void layer_shape(OpShape *s, char symbol, const Config *cfg) {
    const ModelConfig *m = &cfg->model;
    shape_add(s, "B", cfg->train.batch_size);
    shape_add(s, "T", cfg->task.seq_len);
    shape_add(s, "d", m->d_model);
    switch (symbol) {
    case 'M':
        shape_add(s, "di", (long)m->mamba.expand * m->d_model);
        shape_add(s, "N", m->mamba.d_state);
        shape_add(s, "R", config_dt_rank(cfg));
        break;
    case 'A': case 'W':
        shape_add(s, "H", m->attention.n_heads);
        shape_add(s, "Hkv", m->attention.n_kv_heads > 0 ? m->attention.n_kv_heads : m->attention.n_heads);
        if (symbol == 'W') shape_add(s, "window", m->attention.window);
        break;
    case 'D':
        shape_add(s, "hidden", config_ffn_hidden(cfg));
        break;
    case 'E':
        shape_add(s, "E", m->moe.experts);
        shape_add(s, "k", m->moe.top_k);
        shape_add(s, "hidden", config_moe_hidden(cfg));
        break;
    case 'G':
        shape_add(s, "H", m->gla.n_heads);
        break;
    default:
        break;
    }
}

/* Builds one layer of `symbol` on the device the way the model does (layer.h: init,
 * declare_params, the parameters initialised by their declared rule, saved and scratch
 * sized by the kind for the device) and times it on random normal x and dy. */
static void bench_layer(Bench *b, const Config *cfg, char symbol) {
    const LayerKind *kind = layer_kind_by_symbol(symbol);
    char name[OP_NAME_MAX], why[512];
    snprintf(name, sizeof name, "layer_%s", kind ? kind->name : "?");
    if (!kind || !kind->implemented) {
        snprintf(why, sizeof why, "no implemented layer kind for '%c'", symbol);
        report_skip(b, name, why);
        return;
    }
    if (!kind->forward_cuda || !kind->backward_cuda) {
        snprintf(why, sizeof why, "kind '%s' has no CUDA path yet (forward_cuda is NULL)", kind->name);
        report_skip(b, name, why);
        return;
    }
    if (cannot_run(symbol, kernels_of_kind(symbol), cfg, why, sizeof why)) {
        report_skip(b, name, why);
        return;
    }
    const int B = cfg->train.batch_size, T = cfg->task.seq_len, d = cfg->model.d_model;
    Layer L;
    memset(&L, 0, sizeof L);
    L.kind = kind; L.cfg = cfg; L.index = 0; L.d_model = d; L.device = DEVICE_CUDA;
    snprintf(L.prefix, sizeof L.prefix, "layers.0.%s", kind->hf_module);
    if (kind->init) kind->init(&L);   /* after L.device: MoE sets up its pinned host state */
    ParamList pl = {0};
    kind->declare_params(&L, &pl);
    L.first_param = 0;
    L.n_params = pl.count;

    /* parameters by their declared init (host), then on the device */
    const size_t P = pl.total;
    float *host = braid_malloc((P ? P : 1) * sizeof(float), "layer params (host)");
    Rng rng;
    rng_seed(&rng, 0x6265ull + (uint64_t)symbol);
    for (int i = 0; i < pl.count; i++) param_init_tensor(host + pl.items[i].offset, &pl.items[i], &L, &rng);
    float *params = device_zeros(P, "layer params");
    device_upload(DEVICE_CUDA, params, host, P * sizeof(float));
    free(host);
    float *grads = device_zeros(P, "layer grads");
    L.params = braid_calloc((size_t)pl.count + 1, sizeof(float *), "layer param pointers");
    L.grads = braid_calloc((size_t)pl.count + 1, sizeof(float *), "layer grad pointers");
    for (int i = 0; i < pl.count; i++) {
        L.params[i] = params + pl.items[i].offset;
        L.grads[i] = grads + pl.items[i].offset;
    }
    const size_t saved = kind->saved_floats ? kind->saved_floats(&L, B, T) : 0;
    const size_t scratch = kind->scratch_floats ? kind->scratch_floats(&L, B, T) : 0;
    L.saved = device_zeros(saved + 1, "layer saved");
    Ctx ctx = {.device = DEVICE_CUDA, .scratch_floats = scratch, .training = 1, .aux_grad_scale = 1.0f};
    ctx.scratch = device_zeros(scratch + 1, "layer scratch");
    const size_t n = (size_t)B * T * d;
    LayerRun r = {.L = &L, .ctx = &ctx, .B = B, .T = T};
    r.x = device_normal(b, n, "layer x");
    r.dy = device_normal(b, n, "layer dy");
    r.y = device_zeros(n, "layer y");
    r.dx = device_zeros(n, "layer dx");

    OpShape s = {0};
    layer_shape(&s, symbol, cfg);
    const double mp = active_matmul_params(&pl, cfg);
    bench_one(b, name, "_fwd", &s, METRIC_FLOPS, layer_flops(symbol, cfg, mp, B, T, 0), layer_fwd, &r, mp);
    bench_one(b, name, "_fwd_bwd", &s, METRIC_FLOPS, layer_flops(symbol, cfg, mp, B, T, 1), layer_both,
              &r, mp);

    CUDA_CHECK(cudaDeviceSynchronize());
    float *all[] = {params, grads, L.saved, ctx.scratch, r.x, r.dy, r.y, r.dx};
    device_free_all(all, sizeof all / sizeof all[0]);
    if (kind->destroy) kind->destroy(&L);
    free(L.params);
    free(L.grads);
    param_list_free(&pl);
}

/* ------------------------------------------------------------------ entry points */

int bench_ops_check_gpu(BraidError *err) {
    if (!device_cuda_available())
        return error_set(err, "no CUDA device is visible (no GPU, or no NVIDIA driver); the per-op "
                              "benchmarks time CUDA kernels and need one");
    return 0;
}

int bench_ops_run(const Config *cfg, const BenchOpsOptions *opt, BraidError *err) {
    if (bench_ops_check_gpu(err)) return -1;
    BRAID_CHECK(opt->repeats >= 1 && opt->warmup >= 0, "bench_ops: repeats %d, warmup %d", opt->repeats,
                opt->warmup);
    Bench b = {.opt = opt, .out = opt->out ? opt->out : stdout};
    ops_cuda_init();   /* the cuBLAS handle the matmuls need */
    if (matmul_set_precision_cuda(cfg->train.matmul_precision) ||
        attention_set_precision_cuda(cfg->train.matmul_precision))
        return error_set(err, "train.matmul_precision: '%s' (expected fp32, tf32 or bf16)",
                         cfg->train.matmul_precision);
    b.peak_flops = device_cuda_peak_fp32_flops();
    int mem_khz, bus_bits;
    b.dram = dram_bytes_per_s(&mem_khz, &bus_bits);
    CUDA_CHECK(cudaEventCreate(&b.start));
    CUDA_CHECK(cudaEventCreate(&b.stop));
    b.times = braid_malloc((size_t)opt->repeats * sizeof(float), "bench times");

    const ModelConfig *m = &cfg->model;
    const char *source = opt->source ? opt->source : cfg->source;
    fprintf(b.out, "bench --ops on %s: float32 peak %.2f TFLOP/s (SMs x clock x 128 FMA x 2), "
            "DRAM %.0f GB/s (%.0f MHz x %d bit x 2)\n", device_cuda_name(), b.peak_flops / 1e12,
            b.dram / 1e9, mem_khz / 1e3, bus_bits);
    fprintf(b.out, "config %s: B=%d T=%d d=%d pattern %s ffn %s, layer matmuls %s; median of %d runs after %d "
            "warm-up, cudaEvents on the default stream\n", source, cfg->train.batch_size, cfg->task.seq_len,
            m->d_model, m->pattern, m->ffn, cfg->train.matmul_precision, opt->repeats, opt->warmup);
    if (opt->json) {
        fprintf(b.out, "{\"what\": \"env\", \"impl\": \"braid\", \"device\": ");
        json_write_string(b.out, device_cuda_name());
        fprintf(b.out, ", \"config\": ");
        json_write_string(b.out, source);
        fprintf(b.out, ", \"peak_tflops\": %.4f, \"dram_gbps\": %.1f, \"runs\": %d, \"warmup\": %d}\n",
                b.peak_flops / 1e12, b.dram / 1e9, opt->repeats, opt->warmup);
    }
    print_header(&b);
    fflush(b.out);

    const int has_window = strchr(m->pattern, 'W') != NULL;
    bench_matmul(&b, cfg);
    bench_attention(&b, cfg, 0);
    if (has_window) bench_attention(&b, cfg, m->attention.window);
    bench_scan(&b, cfg);
    bench_conv(&b, cfg);
    /* every layer kind with a CUDA path, whether or not the pattern uses it (its settings
     * come from the config all the same); 'W' only when the pattern has it */
    const char *kinds = has_window ? "MAWDEG" : "MADEG";
    /* the layers' matmuls (and attention) run in train.matmul_precision: against that
     * precision's dense tensor-core peak (float32's for fp32) */
    b.peak_flops *= matmul_precision_peak_factor(cfg->train.matmul_precision);
    for (const char *k = kinds; *k; k++) bench_layer(&b, cfg, *k);

    CUDA_CHECK(cudaDeviceSynchronize());
    free(b.times);
    CUDA_CHECK(cudaEventDestroy(b.start));
    CUDA_CHECK(cudaEventDestroy(b.stop));
    ops_cuda_shutdown();
    fflush(b.out);
    return 0;
}

#else /* no CUDA backend in this build */

int bench_ops_check_gpu(BraidError *err) {
    return error_set(err, "this build has no CUDA backend (nvcc was not found when CMake configured "
                          "it); the per-op benchmarks time CUDA kernels: rebuild with the CUDA "
                          "toolkit on a machine with a GPU");
}

int bench_ops_run(const struct Config *cfg, const BenchOpsOptions *opt, BraidError *err) {
    (void)cfg; (void)opt;
    return bench_ops_check_gpu(err);
}

#endif
