/* matmul.cu — linear layers through cuBLAS: float32 by default, TF32 or bf16 tensor-core
 * math on request (matmul_set_precision_cuda).
 *
 * out[N,OC] = inp[N,C] · W[OC,C]ᵀ + b          (W stored PyTorch-style, out × in)
 * dinp     += dout · W                          [N,OC]·[OC,C]
 * dW       += doutᵀ · inp                       [OC,N]·[N,C]
 * db       += Σ_n dout[n,:]
 * cuBLAS is column-major: a row-major X[r,c] is the column-major Xᵀ with leading dimension
 * c, so each product is issued transposed (outᵀ = W · inpᵀ, and so on; see each call).
 * Every product is cublasGemmEx with a float32 output and float32 accumulation; what changes
 * with the precision is what the tensor cores are fed:
 *   fp32 (the default, CUBLAS_COMPUTE_32F): full float32 on the CUDA cores; agrees with the
 *        CPU op to rounding.
 *   tf32 (CUBLAS_COMPUTE_32F_FAST_TF32): cuBLAS rounds the float32 inputs to 10 mantissa
 *        bits for the tensor cores (PyTorch's allow_tf32).
 *   bf16: both operands are converted to bfloat16 (round to nearest even, 7 mantissa bits)
 *        into scratch buffers here and multiplied by the bf16 tensor cores (twice TF32's
 *        rate) into the float32 output — on the shapes where that pays (bf16_pays); the
 *        others take the tf32 path. The weights come from one bf16 mirror of the whole
 *        parameter buffer that model_forward makes (one kernel instead of a conversion per
 *        product, forward and backward: 224 launches a jamba-small step), forgotten once
 *        the parameters may change; an input (or output gradient) the caller holds
 *        (matmul_hold_input_cuda) is converted once for all the products that read it; an
 *        operand that the op which produces it wrote as bf16 itself (SwiGLU's output and
 *        gradients, the Mamba gate's output and dz, the conv's dx1, the cross-entropy's
 *        dlogits, the MoE experts' gathered input rows: matmul_forward_bf16_input_cuda,
 *        matmul_backward_bf16_operands_cuda), or whose bf16 copy it wrote beside the
 *        float32 values and offered (the RMSNorms' outputs: matmul_bf16_copy_cuda, which the
 *        MoE gather copies from; Mamba's u is passed as an operand), is not converted at all;
 *        the rest at each call.
 *        The float32 values stay the layers' saved activations and the master weights;
 *        gradients, AdamW and every non-matmul op stay float32 (the mirror adds 2 bytes a
 *        parameter); the conversions left are measured in docs/performance.md.
 * CUBLAS_COMPUTE_32F_FAST_16BF on float32 operands is NOT a bf16 mode: on an H100 with CUDA 13
 * it gave bit-for-bit the TF32 results and times (measured, then dropped); bf16 needs bf16
 * operands, hence the conversion. The bias is a separate tiny kernel; dbias is a column
 * sum (column_sum.cuh: row slices' partials added in a fixed order, so it is deterministic). */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "precision.cuh"
#include "column_sum.cuh"
#include "grid.cuh"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_bf16.h>

static cublasHandle_t cublas_handle = NULL;
static Precision precision = PRECISION_FP32;

extern "C" int matmul_set_precision_cuda(const char *name) { return precision_parse(name, &precision); }

/* BRAID_MATMUL_PROFILE=1 (a developer's diagnostic, off by default): every GEMM and bf16
 * conversion is bracketed by cudaEvents on its stream (nothing waits), and at exit a table
 * of GPU time per (what, m, n, k) goes to stderr, largest first: which matmuls a step's
 * time goes to, and what the bf16 conversions cost beside the products they feed.
 * BRAID_MATMUL_PROFILE=2 also lists every call in order with the host time since the
 * previous one ended (where a host sync or host work sits between products). */
typedef struct ProfiledCall {
    const char *what;
    long m, n, k;
    cudaEvent_t start, stop;   /* destroyed by profile_report once gpu_ms is read */
    float gpu_ms;     /* from start to stop, read once the device is synchronized */
    double host_ms;   /* inside the cuBLAS call on the host (its algorithm choice, the launch) */
    double host_at;   /* host seconds when the call began */
} ProfiledCall;
static int profile_on = -1;   /* -1: BRAID_MATMUL_PROFILE not read yet */
static ProfiledCall *profiled;
static size_t n_profiled, profiled_capacity;

static void profile_report(void) {
    if (!n_profiled) return;
    CUDA_CHECK(cudaDeviceSynchronize());
    /* each call's GPU time read once, for the list and the totals; its events are done then */
    for (size_t i = 0; i < n_profiled; i++) {
        ProfiledCall *c = &profiled[i];
        CUDA_CHECK(cudaEventElapsedTime(&c->gpu_ms, c->start, c->stop));
        CUDA_CHECK(cudaEventDestroy(c->start));
        CUDA_CHECK(cudaEventDestroy(c->stop));
    }
    if (profile_on == 2) {   /* BRAID_MATMUL_PROFILE=2: every call in order too */
        fprintf(stderr, "%-18s %8s %8s %8s %10s %10s %12s\n", "what", "m", "n", "k", "GPU ms", "host ms",
                "host gap ms");
        for (size_t i = 0; i < n_profiled; i++) {
            const ProfiledCall *c = &profiled[i];
            const double gap = i ? 1e3 * (c->host_at - profiled[i - 1].host_at) - profiled[i - 1].host_ms : 0.0;
            fprintf(stderr, "%-18s %8ld %8ld %8ld %10.3f %10.3f %12.3f\n", c->what, c->m, c->n, c->k, c->gpu_ms,
                    c->host_ms, gap);
        }
    }
    /* the first call of each product apart: it carries one-time costs (cuBLAS loading its
     * kernels: 65 ms for the step's first GEMM on an H100), which are not the step's */
    typedef struct { const char *what; long m, n, k, calls; double ms, host_ms, first_ms, first_host_ms; } Total;
    Total *totals = (Total *)calloc(n_profiled, sizeof(Total));
    size_t n_totals = 0;
    double all_ms[2] = {0.0, 0.0};   /* GEMMs, conversions */
    for (size_t i = 0; i < n_profiled; i++) {
        const ProfiledCall *c = &profiled[i];
        const float ms = c->gpu_ms;
        size_t t = 0;
        while (t < n_totals && !(totals[t].what == c->what && totals[t].m == c->m && totals[t].n == c->n &&
                                 totals[t].k == c->k)) t++;
        all_ms[c->k == 0] += ms;
        if (t == n_totals) {
            totals[n_totals++] = (Total){c->what, c->m, c->n, c->k, 0, 0.0, 0.0, ms, c->host_ms};
            continue;
        }
        totals[t].calls++;
        totals[t].ms += ms;
        totals[t].host_ms += c->host_ms;
    }
    qsort(totals, n_totals, sizeof(Total), [](const void *a, const void *b) {
        const double d = ((const Total *)b)->ms - ((const Total *)a)->ms;
        return (d > 0) - (d < 0);
    });
    fprintf(stderr, "matmul profile (BRAID_MATMUL_PROFILE): %zu calls, GEMMs %.2f ms, bf16 conversions %.2f ms in all\n",
            n_profiled, all_ms[0], all_ms[1]);
    /* GPU ms runs from the event before the call to the one after: where the GPU was idle
     * when the first was reached, it includes the host's time until the launch (host ms) */
    fprintf(stderr, "(the columns after `calls` leave out each product's first call; `first`: its GPU and host ms)\n");
    fprintf(stderr, "%-18s %8s %8s %8s %7s %10s %10s %10s %16s %12s\n", "what", "m", "n", "k", "calls", "GPU ms",
            "ms/call", "host ms", "first GPU/host", "rate");
    for (size_t t = 0; t < n_totals; t++) {
        const Total *x = &totals[t];
        const double per_call = x->calls ? x->ms / x->calls : x->first_ms;
        const double rate = x->k ? 2.0 * x->m * x->n * x->k / (per_call * 1e-3) / 1e12   /* TFLOP/s */
                                 : 6.0 * x->m / (per_call * 1e-3) / 1e9;                 /* GB/s */
        fprintf(stderr, "%-18s %8ld %8ld %8ld %7ld %10.3f %10.4f %10.3f %7.2f/%-8.2f %7.1f %s\n", x->what, x->m,
                x->n, x->k, x->calls, x->ms, per_call, x->host_ms, x->first_ms, x->first_host_ms, rate,
                x->k ? "TFLOP/s" : "GB/s");
    }
    free(totals);
}

static double host_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The call being timed, or NULL when profiling is off (or the table is full). */
static ProfiledCall *profile_begin(const char *what, long m, long n, long k, cudaStream_t stream) {
    if (profile_on < 0) {
        const char *env = getenv("BRAID_MATMUL_PROFILE");
        profile_on = env && *env && strcmp(env, "0") != 0 ? (strcmp(env, "2") == 0 ? 2 : 1) : 0;
        /* registered after the CUDA runtime's exit handler, so it runs before it */
        if (profile_on) atexit(profile_report);
    }
    if (!profile_on) return NULL;
    if (n_profiled == profiled_capacity) {
        if (profiled_capacity >= (1u << 20)) return NULL;
        profiled_capacity = profiled_capacity ? 2 * profiled_capacity : 4096;
        profiled = (ProfiledCall *)realloc(profiled, profiled_capacity * sizeof(ProfiledCall));
        if (!profiled) { fprintf(stderr, "matmul profile: out of memory\n"); abort(); }
    }
    ProfiledCall *c = &profiled[n_profiled++];
    *c = (ProfiledCall){what, m, n, k, NULL, NULL, 0.0f, 0.0, 0.0};
    CUDA_CHECK(cudaEventCreate(&c->start));
    CUDA_CHECK(cudaEventCreate(&c->stop));
    CUDA_CHECK(cudaEventRecord(c->start, stream));
    return c;
}

static void profile_end(ProfiledCall *c, cudaStream_t stream) {
    if (c) CUDA_CHECK(cudaEventRecord(c->stop, stream));
}

/* dst[i] = bf16(src[i]), round to nearest even. The conversions are pure memory traffic
 * (4 bytes read, 2 written per element) and, summed over a training step, as large as the
 * activations, so each thread moves 8 elements: two 16-byte loads, one 16-byte store.
 * src must be 16-byte aligned (to_bf16 falls back to the scalar kernel otherwise); dst is
 * a fresh cudaMalloc buffer. The last n % 8 elements go through the scalar kernel. */
__global__ void float_to_bf16_x8_kernel(__nv_bfloat16 *dst, const float *src, size_t n8) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        const float4 a = reinterpret_cast<const float4 *>(src)[2 * i];
        const float4 b = reinterpret_cast<const float4 *>(src)[2 * i + 1];
        __nv_bfloat162 packed[4] = {__floats2bfloat162_rn(a.x, a.y), __floats2bfloat162_rn(a.z, a.w),
                                    __floats2bfloat162_rn(b.x, b.y), __floats2bfloat162_rn(b.z, b.w)};
        reinterpret_cast<uint4 *>(dst)[i] = *reinterpret_cast<const uint4 *>(packed);
    }
}

__global__ void float_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

static unsigned conversion_blocks(size_t threads) {
    const size_t blocks = (threads + 255) / 256;
    return (unsigned)(blocks < 8192 ? blocks : 8192);   /* grid-stride beyond ~2M threads */
}

static size_t conversions_made;   /* matmul_bf16_conversions_cuda */

/* dst[0..n) = bf16(src[0..n)): the 8-wide kernel where src is 16-byte aligned, the scalar
 * one for the rest. `what` names it in the profile. */
static void convert_to_bf16(const char *what, __nv_bfloat16 *dst, const float *src, size_t n, cudaStream_t stream) {
    conversions_made++;
    ProfiledCall *timed = profile_begin(what, (long)n, 0, 0, stream);
    size_t done = 0;
    if ((uintptr_t)src % 16 == 0 && n >= 8) {
        const size_t n8 = n / 8;
        float_to_bf16_x8_kernel<<<conversion_blocks(n8), 256, 0, stream>>>(dst, src, n8);
        CUDA_CHECK_LAUNCH();
        done = n8 * 8;
    }
    if (done < n) {
        float_to_bf16_kernel<<<conversion_blocks(n - done), 256, 0, stream>>>(dst + done, src + done, n - done);
        CUDA_CHECK_LAUNCH();
    }
    profile_end(timed, stream);
}

/* *buffer: at least n bf16 values (grow_device_buffer; *bytes its size) */
static void reserve_bf16(__nv_bfloat16 **buffer, size_t *bytes, size_t n) {
    grow_device_buffer((void **)buffer, bytes, n * sizeof(__nv_bfloat16));
}

/* The bf16 operands: one grow-only buffer per role (input, weight, output gradient, the
 * held input), so a backward converts each of its three matrices once for both products.
 * Everything runs on one stream, so a buffer is free again once the next call is queued
 * behind this one. */
enum { BF16_INP, BF16_WEIGHT, BF16_DOUT, BF16_HELD, BF16_ROLES };
static __nv_bfloat16 *bf16_buffer[BF16_ROLES];
static size_t bf16_bytes[BF16_ROLES];

/* The held input (matmul_hold_input_cuda) and whether its copy in BF16_HELD is made yet. */
static const float *held_src;
static size_t held_n;
static int held_converted;

/* The parameters' bf16 mirror (matmul_mirror_weights_cuda): mirror[i] = bf16(params[i]) for
 * i < mirror_n while mirror_src is set; a weight at params + o is read at mirror + o. */
static const float *mirror_src;
static size_t mirror_n, mirror_bytes;
static __nv_bfloat16 *mirror;

/* bf16 copies written by the ops that made the arrays: an input's (matmul_bf16_copy_cuda,
 * the norms' outputs) and a gradient's (matmul_bf16_grad_copy_cuda, the residual stream's
 * gradient as the norms' backward writes it). Either is read wherever its array is a
 * product's input or output gradient, held or not. */
enum { OFFER_INPUT, OFFER_GRAD, OFFERS };
static struct {
    const float *src;
    size_t n;
    const __nv_bfloat16 *copy;
} offered[OFFERS];

static void offer_copy(int which, const float *src, size_t n, const uint16_t *copy) {
    offered[which].src = copy ? src : NULL;
    offered[which].n = copy ? n : 0;
    offered[which].copy = (const __nv_bfloat16 *)copy;
}

extern "C" void matmul_bf16_copy_cuda(const float *src, size_t n, const uint16_t *copy) {
    offer_copy(OFFER_INPUT, src, n, copy);
}

extern "C" void matmul_bf16_grad_copy_cuda(const float *src, size_t n, const uint16_t *copy) {
    offer_copy(OFFER_GRAD, src, n, copy);
}

/* the copy offered for exactly src[0..n), else NULL */
static const __nv_bfloat16 *offered_copy(const float *src, size_t n) {
    for (int i = 0; i < OFFERS; i++)
        if (offered[i].src && src == offered[i].src && n == offered[i].n) return offered[i].copy;
    return NULL;
}

extern "C" const uint16_t *matmul_bf16_copy_of_cuda(const float *src, size_t n) {
    return (const uint16_t *)offered_copy(src, n);
}

static const __nv_bfloat16 *to_bf16(int role, const float *src, size_t n, cudaStream_t stream) {
    static const char *names[BF16_ROLES] = {"to_bf16 input", "to_bf16 weight", "to_bf16 dout", "to_bf16 held"};
    if (role == BF16_WEIGHT && mirror_src && (uintptr_t)src >= (uintptr_t)mirror_src &&
        (uintptr_t)(src + n) <= (uintptr_t)(mirror_src + mirror_n)) {
        const __nv_bfloat16 *at = mirror + (src - mirror_src);
        /* cuBLAS's fast bf16 kernels want 16-byte aligned operands: a weight whose offset
         * is not a multiple of 8 is converted on its own, as without the mirror */
        if ((uintptr_t)at % 16 == 0) return at;
    }
    if (role == BF16_INP || role == BF16_DOUT) {
        const __nv_bfloat16 *copy = offered_copy(src, n);
        if (copy) return copy;
    }
    /* the held array (matmul_hold_input_cuda), read as an input or as an output gradient */
    if ((role == BF16_INP || role == BF16_DOUT) && held_src && src == held_src && n == held_n) {
        role = BF16_HELD;
        if (held_converted) return bf16_buffer[role];
        held_converted = 1;
    }
    if (n == 0) return bf16_buffer[role];   /* an expert with no tokens: cuBLAS reads nothing */
    reserve_bf16(&bf16_buffer[role], &bf16_bytes[role], n);
    convert_to_bf16(names[role], bf16_buffer[role], src, n, stream);
    return bf16_buffer[role];
}

extern "C" void matmul_mirror_weights_cuda(const float *params, size_t n, cudaStream_t stream) {
    mirror_src = NULL;
    if (precision != PRECISION_BF16 || n == 0) return;
    reserve_bf16(&mirror, &mirror_bytes, n);
    convert_to_bf16("to_bf16 mirror", mirror, params, n, stream);
    mirror_src = params;
    mirror_n = n;
}

extern "C" void matmul_forget_weights_cuda(void) { mirror_src = NULL; }

extern "C" void matmul_hold_input_cuda(const float *inp, size_t n) {
    if (held_src) {
        fprintf(stderr, "matmul_hold_input_cuda: an input is already held (release it first)\n");
        abort();
    }
    held_src = inp;
    held_n = n;
    held_converted = 0;
}

extern "C" void matmul_release_input_cuda(void) {
    held_src = NULL;
    held_n = 0;
    held_converted = 0;
}

/* Whether precision bf16 multiplies this matmul (out[N,OC] = inp[N,C]·Wᵀ and its two
 * backward products) in bf16, or leaves it to TF32 on its float32 operands: bf16 only where
 * every dimension is a multiple of 8 and at least 64. In the jamba-small step on an H100
 * (bench with BRAID_MATMUL_PROFILE) the narrow bf16 products were slower than TF32's even
 * before their conversions (x_proj's 48 outputs 0.17 against 0.05 ms, its 16 outputs 0.10
 * against 0.08 ms). The MoE experts' products, whose row counts changed every call, took
 * 1–3 ms a call in bf16 against TF32's 0.1 ms: mostly first calls of new shapes (bench.c);
 * their rows are now padded to multiples of 64 (layers/moe.c) and all take bf16. */
static int bf16_pays(int N, int C, int OC) {
    return precision == PRECISION_BF16 && N % 8 == 0 && C % 8 == 0 && OC % 8 == 0 && N >= 64 && C >= 64 &&
           OC >= 64;
}

/* C[m,n] = alpha·op(A)·op(B) + beta·C, column-major; A and B float32 (fp32, tf32), or bf16
 * when `bf16` (converted by operand()), C float32. `what` names the product for the profile. */
static void gemm(const char *what, int bf16, cublasHandle_t handle, cudaStream_t stream, cublasOperation_t op_a,
                 cublasOperation_t op_b, int m, int n, int k, const float *alpha, const void *A, int lda,
                 const void *B, int ldb, const float *beta, float *C, int ldc) {
    const cudaDataType_t operand = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute = bf16 || precision == PRECISION_FP32 ? CUBLAS_COMPUTE_32F
                                                                           : CUBLAS_COMPUTE_32F_FAST_TF32;
    ProfiledCall *timed = profile_begin(what, m, n, k, stream);
    const double host_start = timed ? host_seconds() : 0.0;
    if (timed) timed->host_at = host_start;
    CUBLAS_CHECK(cublasGemmEx(handle, op_a, op_b, m, n, k, alpha, A, operand, lda, B, operand, ldb,
                              beta, C, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
    if (timed) timed->host_ms = 1e3 * (host_seconds() - host_start);
    profile_end(timed, stream);
}

/* The operand gemm() is to read: src itself, or its bf16 copy when the matmul is in bf16. */
static const void *operand(int bf16, int role, const float *src, size_t n, cudaStream_t stream) {
    return bf16 ? (const void *)to_bf16(role, src, n, stream) : (const void *)src;
}

extern "C" void ops_cuda_init(void) {
    if (cublas_handle) return;
    CUBLAS_CHECK(cublasCreate(&cublas_handle));
    CUBLAS_CHECK(cublasSetMathMode(cublas_handle, CUBLAS_DEFAULT_MATH));
}

extern "C" void ops_cuda_shutdown(void) {
    for (int r = 0; r < BF16_ROLES; r++) {
        if (bf16_buffer[r]) CUDA_CHECK(cudaFree(bf16_buffer[r]));
        bf16_buffer[r] = NULL;
        bf16_bytes[r] = 0;
    }
    if (mirror) CUDA_CHECK(cudaFree(mirror));
    mirror = NULL;
    mirror_bytes = 0;
    matmul_forget_weights_cuda();
    matmul_release_input_cuda();
    matmul_bf16_copy_cuda(NULL, 0, NULL);
    if (!cublas_handle) return;
    CUBLAS_CHECK(cublasDestroy(cublas_handle));
    cublas_handle = NULL;
}

static cublasHandle_t matmul_handle(cudaStream_t stream) {
    if (!cublas_handle) {
        fprintf(stderr, "%s:%d: matmul_*_cuda called before ops_cuda_init()\n", __FILE__, __LINE__);
        abort();
    }
    CUBLAS_CHECK(cublasSetStream(cublas_handle, stream));
    return cublas_handle;
}

/* out[n,o] += bias[o], W columns a thread and step (grid.cuh) */
template <int W>
__global__ void add_bias_kernel(float *out, const float *bias, int N, int OC) {
    const int ow = OC / W;
    GRID_STRIDE(i, (size_t)N * ow) {
        Lanes<W> a = load_lanes<W>(out + W * i);
        const float *b = bias + W * (i % ow);   /* a parameter: any alignment, and cached */
#pragma unroll
        for (int e = 0; e < W; e++) a[e] += b[e];
        store_lanes<W>(out + W * i, a);
    }
}

/* dbias[o] += Σ_n dout[n,o], through column_sum.cuh */
struct BiasGradTerm {
    const float *dout;
    int OC;
    __device__ void operator()(int n, int o, float (&acc)[1]) const { acc[0] += dout[(size_t)n * OC + o]; }
};

/* The forward product; inp_bf16, where given (bf16 only), is read instead of converting inp. */
static void forward_product(float *out, const float *inp, const void *inp_bf16, const float *weight, int N, int C,
                            int OC, int accumulate, int bf16, cudaStream_t stream) {
    cublasHandle_t handle = matmul_handle(stream);
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    /* outᵀ[OC,N] = (Wᵀ as stored: C×OC, ld C)ᵀ · (inpᵀ: C×N, ld C) */
    const void *W = operand(bf16, BF16_WEIGHT, weight, (size_t)OC * C, stream);
    const void *X = inp_bf16 ? inp_bf16 : operand(bf16, BF16_INP, inp, (size_t)N * C, stream);
    gemm("forward", bf16, handle, stream, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, W, C, X, C, &beta, out, OC);
}

extern "C" void matmul_forward_cuda(float *out, const float *inp, const float *weight,
                                    const float *bias, int N, int C, int OC, int accumulate,
                                    cudaStream_t stream) {
    forward_product(out, inp, NULL, weight, N, C, OC, accumulate, bf16_pays(N, C, OC), stream);
    if (bias) {
        const size_t n = (size_t)N * OC;
        LAUNCH_ELEMENTWISE(add_bias_kernel, n, stream, OC % 4 == 0 && aligned16(n, out), out, bias, N, OC);
    }
}

/* The two backward products; dout_bf16 / inp_bf16, where given (bf16 only), are read
 * instead of converting dout / inp. */
static void backward_products(float *dinp, float *dweight, const float *dout, const void *dout_bf16,
                              const float *inp, const void *inp_bf16, const float *weight, int N, int C, int OC,
                              int bf16, int dinp_written, cudaStream_t stream) {
    cublasHandle_t handle = matmul_handle(stream);
    const float one = 1.0f, zero = 0.0f;
    const void *dY = !(dinp || dweight) ? NULL
                     : dout_bf16         ? dout_bf16
                                         : operand(bf16, BF16_DOUT, dout, (size_t)N * OC, stream);
    if (dinp) /* dinpᵀ[C,N] += (or =, dinp_written: β = 0, dinp not read) (Wᵀ: C×OC, ld C) · (doutᵀ: OC×N, ld OC) */
        gemm("backward dinp", bf16, handle, stream, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one,
             operand(bf16, BF16_WEIGHT, weight, (size_t)OC * C, stream), C, dY, OC, dinp_written ? &zero : &one,
             dinp, C);
    if (dweight) /* dWᵀ[C,OC] += (inpᵀ: C×N, ld C) · (doutᵀ: OC×N, ld OC)ᵀ */
        gemm("backward dweight", bf16, handle, stream, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one,
             inp_bf16 ? inp_bf16 : operand(bf16, BF16_INP, inp, (size_t)N * C, stream), C, dY, OC, &one,
             dweight, C);
}

extern "C" void matmul_backward_cuda(float *dinp, float *dweight, float *dbias, const float *dout,
                                     const float *inp, const float *weight, int N, int C, int OC,
                                     cudaStream_t stream) {
    backward_products(dinp, dweight, dout, NULL, inp, NULL, weight, N, C, OC, bf16_pays(N, C, OC), 0, stream);
    if (dbias) {
        column_sums<1>(BiasGradTerm{dout, OC}, ColumnAccumulate{dbias}, N, OC, stream);
    }
}

/* ---- bf16 operands written by their producers (ops_cuda.h) ---- */

/* Whether producers write bf16 operands: read from BRAID_BF16_PRODUCERS once, not at each
 * call, because a layer's backward asks again what its forward did and must get the same
 * answer (a forward that saved a bf16 copy and a backward that then reads float32 would
 * read what was never written); −1: not read yet. */
static int bf16_producers = -1;

extern "C" void matmul_set_bf16_producers_cuda(int on) { bf16_producers = on < 0 ? -1 : on != 0; }

extern "C" int matmul_bf16_operands_cuda(int N, int C, int OC) {
    if (bf16_producers < 0) {
        const char *env = getenv("BRAID_BF16_PRODUCERS");
        bf16_producers = !(env && strcmp(env, "0") == 0);
    }
    return bf16_pays(N, C, OC) && bf16_producers;
}

static void require_bf16_operands(const char *who, int N, int C, int OC) {
    if (matmul_bf16_operands_cuda(N, C, OC)) return;
    fprintf(stderr, "%s: N=%d C=%d OC=%d does not multiply in bf16 (matmul_bf16_operands_cuda is false), "
            "so it takes float32 operands\n", who, N, C, OC);
    abort();
}

extern "C" void matmul_forward_bf16_input_cuda(float *out, const uint16_t *inp, const float *weight, int N, int C,
                                               int OC, int accumulate, cudaStream_t stream) {
    require_bf16_operands("matmul_forward_bf16_input_cuda", N, C, OC);
    forward_product(out, NULL, inp, weight, N, C, OC, accumulate, 1, stream);
}

extern "C" void matmul_backward_bf16_operands_cuda(float *dinp, float *dweight, const float *dout,
                                                   const uint16_t *dout_bf16, const float *inp,
                                                   const uint16_t *inp_bf16, const float *weight, int N, int C,
                                                   int OC, cudaStream_t stream) {
    require_bf16_operands("matmul_backward_bf16_operands_cuda", N, C, OC);
    backward_products(dinp, dweight, dout, dout_bf16, inp, inp_bf16, weight, N, C, OC, 1, 0, stream);
}

/* ---- dinp written, not accumulated (ops_cuda.h) ---- */

extern "C" void matmul_backward_write_dinp_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                                                const float *weight, int N, int C, int OC, cudaStream_t stream) {
    backward_products(dinp, dweight, dout, NULL, inp, NULL, weight, N, C, OC, bf16_pays(N, C, OC), 1, stream);
}

extern "C" void matmul_backward_bf16_operands_write_dinp_cuda(float *dinp, float *dweight, const float *dout,
                                                              const uint16_t *dout_bf16, const float *inp,
                                                              const uint16_t *inp_bf16, const float *weight, int N,
                                                              int C, int OC, cudaStream_t stream) {
    require_bf16_operands("matmul_backward_bf16_operands_write_dinp_cuda", N, C, OC);
    backward_products(dinp, dweight, dout, dout_bf16, inp, inp_bf16, weight, N, C, OC, 1, 1, stream);
}

extern "C" size_t matmul_bf16_conversions_cuda(void) { return conversions_made; }
