/* moe.cu — routing, dispatch and combine of the mixture-of-experts FFN on the GPU (see
 * moe_cuda.h; the CPU reference is layers/moe.c).
 *
 * Work split:
 *  - routing (softmax, logsumexp, top-k) and its backward: one thread per token. A router
 *    has few experts (4–16), so a token's row is a handful of floats; a thread walking it
 *    sequentially does the float operations in exactly the CPU's order, which keeps the
 *    top-k choice identical to the CPU's wherever the inputs agree;
 *  - the aux-loss sums: one block per expert (and one for Σ lse²), double accumulation,
 *    block_sum's fixed tree;
 *  - gather, combine, scatter-add: one thread per output element (four, as a float4, where
 *    d is a multiple of 4 and the rows aligned; the bf16 gather eight, 16 bytes), grid-stride;
 *    a token sums its k slots in rank order in a register, so there are no atomics;
 *  - the combine's backward: one warp per slot pair (a dot product of two rows of d), its
 *    ∂L/∂eo written as float32 or, for a bf16 down projection, as bf16.
 * expf/logf, not the fast intrinsics, and IEEE division (nvcc's default): the router's
 * probabilities should match the CPU to a few ulp. */
#include "cuda_check.h"
#include "moe_cuda.h"
#include "grid.cuh"
#include "reduce.cuh"

#define MOE_TOKEN_THREADS 128   /* per-token kernels: one thread per token */
#define MOE_ROW_THREADS 256     /* the sums and warp-per-pair kernels (the row kernels: LAUNCH_ELEMENTWISE's 256) */

/* Enough blocks to fill any current GPU several times over; grid-stride loops do the rest. */
static unsigned moe_token_blocks(int N) {
    return (unsigned)((N + MOE_TOKEN_THREADS - 1) / MOE_TOKEN_THREADS);
}

/* ---------------------------------------------------------------- routing */

__global__ void moe_route_forward_kernel(float *probs, float *lse, int *expert, float *weight,
                                         int N, int E, int k, int renormalize) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float *p = probs + (size_t)n * E;
    float maxv = p[0];
    for (int e = 1; e < E; e++) maxv = fmaxf(maxv, p[e]);
    float sum = 0.0f;
    for (int e = 0; e < E; e++) { p[e] = expf(p[e] - maxv); sum += p[e]; }
    for (int e = 0; e < E; e++) p[e] /= sum;
    lse[n] = maxv + logf(sum);

    /* repeated arg-max over the experts not yet taken; strict '>' keeps the lower index
     * on a tie. The chosen list is this thread's own output row, read back as it grows. */
    int *chosen = expert + (size_t)n * k;
    float *w = weight + (size_t)n * k;
    float total = 0.0f;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++) taken |= chosen[i] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        chosen[j] = best;
        w[j] = p[best];
        total += p[best];
    }
    if (renormalize)
        for (int j = 0; j < k; j++) w[j] /= total;
}

/* grid E + 1: block e < E sums column e of probs, block E sums lse². */
__global__ void moe_route_sums_kernel(double *sums, const float *probs, const float *lse, int N,
                                      int E) {
    __shared__ double shared[32];
    const int e = blockIdx.x;
    double acc = 0.0;
    if (e < E) {
        for (int n = threadIdx.x; n < N; n += blockDim.x) acc += (double)probs[(size_t)n * E + e];
    } else {
        for (int n = threadIdx.x; n < N; n += blockDim.x) acc += (double)lse[n] * lse[n];
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) sums[e] = acc;
}

/* moe.c's moe_route_backward, line for line (dl holds ∂L/∂p first, then ∂L/∂logits). */
__global__ void moe_route_backward_kernel(float *dlogits, const float *dweight, const float *probs,
                                          const float *lse, const int *expert, const float *weight,
                                          const int *offset, int N, int E, int k, int renormalize,
                                          float aux_scale, float z_scale) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *p = probs + (size_t)n * E;
    const int *chosen = expert + (size_t)n * k;
    const float *w = weight + (size_t)n * k, *dw = dweight + (size_t)n * k;
    float *dl = dlogits + (size_t)n * E;
    for (int e = 0; e < E; e++) dl[e] = aux_scale * (float)(offset[e + 1] - offset[e]);
    if (renormalize) {
        float total = 0.0f, dw_dot_w = 0.0f;
        for (int j = 0; j < k; j++) { total += p[chosen[j]]; dw_dot_w += dw[j] * w[j]; }
        for (int j = 0; j < k; j++) dl[chosen[j]] += (dw[j] - dw_dot_w) / total;
    } else {
        for (int j = 0; j < k; j++) dl[chosen[j]] += dw[j];
    }
    float p_dot_dp = 0.0f;
    for (int e = 0; e < E; e++) p_dot_dp += p[e] * dl[e];
    const float z = z_scale * lse[n];
    for (int e = 0; e < E; e++) dl[e] = p[e] * (dl[e] - p_dot_dp) + z * p[e];
}

/* ---------------------------------------------------------------- dispatch and combine */

/* The row kernels take W = 4 columns at a time (float4) where d is a multiple of 4 and the
 * arrays 16-byte aligned (grid.cuh), else W = 1; column index c counts pieces of W. */
template <int W>
__global__ void moe_gather_rows_kernel(float *xg, const float *x, const int *slot_token, int S, int d) {
    const int dw = d / W;
    GRID_STRIDE(i, (size_t)S * dw) {
        const size_t s = i / dw, c = i % dw;
        const int n = slot_token[s];
        store_lanes<W>(xg + W * i, n >= 0 ? load_lanes<W>(x + W * ((size_t)n * dw + c)) : zero_lanes<W>());
    }
}

/* The gather as the bf16 operand of the experts' gate and up products, W values a piece:
 *   xg16[s,:] = x16[n,:]          where the op that made x wrote x16 = bf16(x) (RMSNorm's copy)
 *             = bf16_rn(x[n,:])   else, rounded here to nearest even
 *   n = slot_token[s];  a padding slot (n = −1) gets a zero row (bf16 +0 is 0x0000)
 * Either way the bits are those matmul.cu's conversion of moe_gather_rows_kernel's float32 xg
 * gives (its zero rows included), so no product changes; the float32 xg and one conversion
 * per expert, forward and backward, are saved. W = 8 (one 16-byte load from x16, or two
 * float4s from x, and one 16-byte store) where d is a multiple of 8 and the arrays 16-byte
 * aligned, else W = 1. x16 is the same for every thread: the branch on it never diverges. */
__device__ __forceinline__ unsigned bf16x2_rn_bits(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned *>(&v);
}

template <int W>
__global__ void moe_gather_rows_bf16_kernel(__nv_bfloat16 *__restrict__ xg16, const float *__restrict__ x,
                                            const __nv_bfloat16 *__restrict__ x16,
                                            const int *__restrict__ slot_token, int S, int d) {
    const int dw = d / W;
    GRID_STRIDE(i, (size_t)S * dw) {
        const size_t s = i / dw, c = i % dw;
        const int token = slot_token[s];
        const size_t from = W * ((size_t)token * dw + c);
        if constexpr (W == 8) {
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (token >= 0 && x16) {
                v = *reinterpret_cast<const uint4 *>(x16 + from);
            } else if (token >= 0) {
                const float4 a = *reinterpret_cast<const float4 *>(x + from);
                const float4 b = *reinterpret_cast<const float4 *>(x + from + 4);
                v = make_uint4(bf16x2_rn_bits(a.x, a.y), bf16x2_rn_bits(a.z, a.w), bf16x2_rn_bits(b.x, b.y),
                               bf16x2_rn_bits(b.z, b.w));
            }
            reinterpret_cast<uint4 *>(xg16)[i] = v;
        } else {
            xg16[i] = token < 0 ? __float2bfloat16_rn(0.0f) : x16 ? x16[from] : __float2bfloat16_rn(x[from]);
        }
    }
}

template <int W>
__global__ void moe_combine_kernel(float *y, const float *eo, const float *weight, const int *slot_of, int N,
                                   int k, int d) {
    const int dw = d / W;
    GRID_STRIDE(i, (size_t)N * dw) {
        const size_t n = i / dw, c = i % dw;
        Lanes<W> acc = zero_lanes<W>();
        for (int j = 0; j < k; j++) {
            const size_t pair = n * k + j;
            const float w = weight[pair];
            const Lanes<W> r = load_lanes<W>(eo + W * ((size_t)slot_of[pair] * dw + c));
#pragma unroll
            for (int e = 0; e < W; e++) acc[e] += w * r[e];
        }
        store_lanes<W>(y + W * i, acc);
    }
}

/* One warp per pair q = n·k + j; the whole warp takes the same q, so an early return
 * leaves no lane of a live warp behind (warp_sum needs all 32). __restrict__ and the
 * unrolled loop let a lane's loads of later pieces go out before its earlier stores (a
 * warp has only d/(32W) pieces a lane: waiting on each load in turn left the kernel at
 * 2.5× its memory floor). Out is float, or __nv_bfloat16 for the bf16 down projection's
 * dout: store_lanes rounds the same float w·g to nearest even, the bits the matmul's own
 * conversion of the float32 deo would give. */
template <int W, typename Out>
__global__ void moe_combine_backward_kernel(float *__restrict__ dweight, Out *__restrict__ deo,
                                            const float *__restrict__ eo, const float *__restrict__ dy,
                                            const float *__restrict__ weight, const int *__restrict__ slot_of,
                                            int S, int k, int d) {
    const int lane = threadIdx.x % 32, dw = d / W;
    const size_t q = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (q >= (size_t)S) return;
    const size_t n = q / k;
    const float w = weight[q];
    const size_t dy_row = n * dw, row = (size_t)slot_of[q] * dw;
    float dot = 0.0f;
#pragma unroll 4
    for (int c = lane; c < dw; c += 32) {
        const Lanes<W> g = load_lanes<W>(dy + W * (dy_row + c)), r = load_lanes<W>(eo + W * (row + c));
        Lanes<W> out;
#pragma unroll
        for (int e = 0; e < W; e++) {
            dot += g[e] * r[e];
            out[e] = w * g[e];
        }
        store_lanes<W>(deo + W * (row + c), out);
    }
    dot = warp_sum(dot);
    if (lane == 0) dweight[q] = dot;
}

template <int W>
__global__ void moe_scatter_add_rows_kernel(float *dx, const float *dxg, const int *slot_of, int N, int k,
                                            int d) {
    const int dw = d / W;
    GRID_STRIDE(i, (size_t)N * dw) {
        const size_t n = i / dw, c = i % dw;
        Lanes<W> acc = load_lanes<W>(dx + W * i);
        for (int j = 0; j < k; j++) {
            const Lanes<W> r = load_lanes<W>(dxg + W * ((size_t)slot_of[n * k + j] * dw + c));
#pragma unroll
            for (int e = 0; e < W; e++) acc[e] += r[e];
        }
        store_lanes<W>(dx + W * i, acc);
    }
}

/* ---------------------------------------------------------------- launchers */

extern "C" void moe_route_forward_cuda(float *probs, float *lse, int *expert, float *weight, int N,
                                       int E, int k, int renormalize, cudaStream_t stream) {
    if (N <= 0) return;
    moe_route_forward_kernel<<<moe_token_blocks(N), MOE_TOKEN_THREADS, 0, stream>>>(
        probs, lse, expert, weight, N, E, k, renormalize);
    CUDA_CHECK_LAUNCH();
}

extern "C" void moe_route_sums_cuda(double *sums, const float *probs, const float *lse, int N,
                                    int E, cudaStream_t stream) {
    moe_route_sums_kernel<<<(unsigned)(E + 1), MOE_ROW_THREADS, 0, stream>>>(sums, probs, lse, N, E);
    CUDA_CHECK_LAUNCH();
}

extern "C" void moe_gather_rows_cuda(float *xg, const float *x, const int *slot_token, int S, int d,
                                     cudaStream_t stream) {
    const size_t n = (size_t)S * d;
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(moe_gather_rows_kernel, n, stream, d % 4 == 0 && aligned16(n, xg, x), xg, x, slot_token, S, d);
}

extern "C" void moe_gather_rows_bf16_cuda(uint16_t *xg16, const float *x, const uint16_t *x16, const int *slot_token,
                                          int S, int d, cudaStream_t stream) {
    const size_t n = (size_t)S * d;
    if (n == 0) return;
    __nv_bfloat16 *out = (__nv_bfloat16 *)xg16;
    const __nv_bfloat16 *in16 = (const __nv_bfloat16 *)x16;
    if (d % 8 == 0 && aligned16(n, xg16) && (x16 ? aligned16(n, x16) : aligned16(n, x)))
        moe_gather_rows_bf16_kernel<8><<<grid_stride_blocks(n / 8), 256, 0, stream>>>(out, x, in16, slot_token, S, d);
    else
        moe_gather_rows_bf16_kernel<1><<<grid_stride_blocks(n), 256, 0, stream>>>(out, x, in16, slot_token, S, d);
    CUDA_CHECK_LAUNCH();
}

extern "C" void moe_combine_cuda(float *y, const float *eo, const float *weight, const int *slot_of,
                                 int N, int k, int d, cudaStream_t stream) {
    const size_t n = (size_t)N * d;
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(moe_combine_kernel, n, stream, d % 4 == 0 && aligned16(n, y, eo), y, eo, weight, slot_of, N, k,
                       d);
}

/* Both launchers: W = 4 where d is a multiple of 4 and eo, dy, deo are 16-byte aligned
 * (a bf16 deo needs only 8 for its 4-value stores; 16 keeps one test for both). */
template <typename Out>
static void moe_combine_backward_launch(float *dweight, Out *deo, const float *eo, const float *dy,
                                        const float *weight, const int *slot_of, int N, int k, int d,
                                        cudaStream_t stream) {
    const int S = N * k, warps_per_block = MOE_ROW_THREADS / 32;
    if (S <= 0) return;
    const unsigned blocks = (unsigned)((S + warps_per_block - 1) / warps_per_block);
    if (d % 4 == 0 && aligned16((size_t)S * d, eo, dy, deo))
        moe_combine_backward_kernel<4, Out><<<blocks, MOE_ROW_THREADS, 0, stream>>>(dweight, deo, eo, dy, weight,
                                                                                     slot_of, S, k, d);
    else
        moe_combine_backward_kernel<1, Out><<<blocks, MOE_ROW_THREADS, 0, stream>>>(dweight, deo, eo, dy, weight,
                                                                                     slot_of, S, k, d);
    CUDA_CHECK_LAUNCH();
}

extern "C" void moe_combine_backward_cuda(float *dweight, float *deo, const float *eo, const float *dy,
                                          const float *weight, const int *slot_of, int N, int k, int d,
                                          cudaStream_t stream) {
    moe_combine_backward_launch(dweight, deo, eo, dy, weight, slot_of, N, k, d, stream);
}

extern "C" void moe_combine_backward_bf16_cuda(float *dweight, uint16_t *deo16, const float *eo, const float *dy,
                                               const float *weight, const int *slot_of, int N, int k, int d,
                                               cudaStream_t stream) {
    moe_combine_backward_launch(dweight, (__nv_bfloat16 *)deo16, eo, dy, weight, slot_of, N, k, d, stream);
}

extern "C" void moe_scatter_add_rows_cuda(float *dx, const float *dxg, const int *slot_of, int N,
                                          int k, int d, cudaStream_t stream) {
    const size_t n = (size_t)N * d;
    if (n == 0) return;
    LAUNCH_ELEMENTWISE(moe_scatter_add_rows_kernel, n, stream, d % 4 == 0 && aligned16(n, dx, dxg), dx, dxg, slot_of,
                       N, k, d);
}

extern "C" void moe_route_backward_cuda(float *dlogits, const float *dweight, const float *probs,
                                        const float *lse, const int *expert, const float *weight,
                                        const int *offset, int N, int E, int k, int renormalize,
                                        float aux_scale, float z_scale, cudaStream_t stream) {
    if (N <= 0) return;
    moe_route_backward_kernel<<<moe_token_blocks(N), MOE_TOKEN_THREADS, 0, stream>>>(
        dlogits, dweight, probs, lse, expert, weight, offset, N, E, k, renormalize, aux_scale,
        z_scale);
    CUDA_CHECK_LAUNCH();
}
