/* conv1d.cu — Mamba's causal depthwise conv1d on the GPU (the CPU reference is
 * causal_conv1d_forward/backward in layers/mamba_cpu.c):
 *   out[b,t,c] = bias[c] + Σ_{j=0..K−1} w[c,j] · x[b, t−K+1+j, c]     (zero before t = 0)
 *   dx[b,s,c]  += Σ_j w[c,j] · dout[b, s+K−1−j, c]                     (t < T only)
 *   dw[c,j]    += Σ_{b,t} dout[b,t,c] · x[b,t−K+1+j,c],   dbias[c] += Σ_{b,t} dout[b,t,c]
 * x, out, dout, dx are (Bsz,T,C); w (C,K). In Mamba the conv's output a goes through
 * u = silu(a), and the backward can take du with a (silu_in) and use dout = du ⊙ silu'(a) as
 * each row is loaded, instead of a pass of its own that reads du and a and writes dout.
 * Likewise the forward can write u = silu(a) (and its bf16 copy, x_proj's operand) beside a
 * from the registers that hold a, instead of a pass that reads a back. dx's rows lie dx_ld
 * elements apart: Mamba's dx1 is half of each row of in_proj's output gradient, beside dz.
 *
 * Both kernels: a thread owns P adjacent channels (P = 4, one float4, where C is a multiple
 * of 4 and the tensors 16-byte aligned; else 1) and CONV_STEPS consecutive time steps of one
 * sequence, and walks them with a window of K rows in registers, so every row of x (or dout)
 * is loaded once, plus K−1 halo rows per walk. A block is 32 threads along the channels (a
 * warp reads 32·P adjacent floats of a row) × CONV_WALKS walks along time (consecutive
 * walks: the halo rows one walk loads are its neighbour's, mostly from L1). The K taps are
 * template parameters, so the window is registers, not local memory.
 *
 * The backward is one pass: at step s the window holds dout[s … s+K−1] (zero past T) and
 * the thread has x[s], which meets dout[s+K−1−j] through tap j, so dx[s] and the s-th terms
 * of every dw[·,j] come from the same registers. Each thread sums its walk's dw and dbias
 * terms; the block's CONV_WALKS walks are added through shared memory in order, and one
 * partial per block row goes to column_sum.cuh's buffer, whose finish pass adds them in a
 * fixed order: no atomics, the same bits on every run.
 *
 * Why not one thread per (b,t,c), as before: each output then re-read its K input rows and
 * its K taps, and paid a 64-bit division for its (t, c); the backward read dout twice
 * (dx, then dw) and x K times. On the H100 at jamba-small's shape (B 8, T 2048, C 1536)
 * that was 169 µs forward and 209 + 166 µs backward (docs/performance.md). */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <type_traits>

#include <cuda_bf16.h>

#include "cuda_check.h"
#include "mamba_cuda.h"
#include "column_sum.cuh"
#include "grid.cuh"
#include "activations.cuh"

#define CONV_MAX_K 8
#define CONV_STEPS 16   /* time steps a thread walks */
#define CONV_WALKS 8    /* walks along time per block (blockDim.y) */


/* One step of a walk: the window's rows move down one and `next` enters at the top. */
template <int K, int P>
__device__ __forceinline__ void slide_window(Lanes<P> (&win)[K], const Lanes<P> &next) {
#pragma unroll
    for (int j = 0; j + 1 < K; j++) win[j] = win[j + 1];
    win[K - 1] = next;
}

/* Which channels and time steps thread (x, y) of a block owns. */
struct ConvWalk {
    int c, b, t0;   /* first channel; sequence; first time step */
    __device__ ConvWalk(int T, int P) {
        const int walks_per_seq = (T + CONV_STEPS - 1) / CONV_STEPS;
        const int walk = blockIdx.x * CONV_WALKS + threadIdx.y;
        c = (blockIdx.y * 32 + threadIdx.x) * P;
        b = walk / walks_per_seq;
        t0 = (walk % walks_per_seq) * CONV_STEPS;
    }
};

/* u (or NULL): also u = silu(out) (activations.cuh); u16 (or
 * NULL, only with u): u again in bf16, rounded to nearest even as matmul.cu would */
template <int K, int P>
__global__ void __launch_bounds__(32 * CONV_WALKS)
causal_conv1d_forward_kernel(float *out, float *u, __nv_bfloat16 *u16, const float *x, const float *weight,
                             const float *bias, int Bsz, int T, int C) {
    const ConvWalk w(T, P);
    if (w.c >= C || w.b >= Bsz) return;
    float tap[P][K], bias_c[P];
#pragma unroll
    for (int p = 0; p < P; p++) {
#pragma unroll
        for (int j = 0; j < K; j++) tap[p][j] = weight[(size_t)(w.c + p) * K + j];
        bias_c[p] = bias ? bias[w.c + p] : 0.0f;
    }
    const float *xs = x + (size_t)w.b * T * C + w.c;
    float *os = out + (size_t)w.b * T * C + w.c;
    /* win[j] = x[t−K+1+j] at step t; before the first step, win[1..K−1] = x[t0−K+1 … t0−1] */
    Lanes<P> win[K];
#pragma unroll
    for (int j = 1; j < K; j++) {
        const int t = w.t0 - K + j;
        win[j] = t >= 0 ? load_lanes<P>(xs + (size_t)t * C) : zero_lanes<P>();
    }
#pragma unroll
    for (int s = 0; s < CONV_STEPS; s++) {
        const int t = w.t0 + s;
        if (t >= T) break;
        slide_window<K, P>(win, load_lanes<P>(xs + (size_t)t * C));
        Lanes<P> y;
#pragma unroll
        for (int p = 0; p < P; p++) {
            float acc = bias_c[p];
#pragma unroll
            for (int j = 0; j < K; j++) acc += tap[p][j] * win[j].v[p];
            y.v[p] = acc;
        }
        store_lanes<P>(os + (size_t)t * C, y);
        if (u) {
            const size_t at = (size_t)w.b * T * C + w.c + (size_t)t * C;
#pragma unroll
            for (int p = 0; p < P; p++) y.v[p] = device_silu(y.v[p]);
            store_lanes<P>(u + at, y);
            if (u16) store_lanes<P>(u16 + at, y);
        }
    }
}

/* partial[row][v][c], v < K: tap v, v = K: bias; row = the block's walk index (blockIdx.x).
 * DX float: dx accumulated; __nv_bfloat16: dx WRITTEN as bf16 (in_proj's output gradient
 * in bf16, ops_cuda.h), its sum started from 0 as the float path's from a zeroed dx, so the
 * value rounded is the same. dx's rows are dx_ld apart (dx_ld = C: the layout of the others).
 * silu_in (or NULL): the rows of dout are du ⊙ silu'(silu_in). */
template <int K, int P, typename DX>
__global__ void __launch_bounds__(32 * CONV_WALKS)
causal_conv1d_backward_kernel(DX *dx, int dx_ld, float *partial, const float *dout, const float *silu_in,
                              const float *x, const float *weight, int Bsz, int T, int C, bool weight_grads) {
    __shared__ float walk_sum[CONV_WALKS][K + 1][32 * P];
    const ConvWalk w(T, P);
    const bool active = w.c < C && w.b < Bsz;
    float dw[P][K + 1];   /* [p][K]: the bias */
#pragma unroll
    for (int p = 0; p < P; p++)
#pragma unroll
        for (int j = 0; j <= K; j++) dw[p][j] = 0.0f;
    if (active) {
        float tap[P][K];
#pragma unroll
        for (int p = 0; p < P; p++)
#pragma unroll
            for (int j = 0; j < K; j++) tap[p][j] = weight[(size_t)(w.c + p) * K + j];
        const size_t base = (size_t)w.b * T * C + w.c;
        auto dout_row = [&](int t) {   /* dout[t], through the silu where asked */
            Lanes<P> g = load_lanes<P>(dout + base + (size_t)t * C);
            if (silu_in) {
                const Lanes<P> a = load_lanes<P>(silu_in + base + (size_t)t * C);
#pragma unroll
                for (int p = 0; p < P; p++) g.v[p] *= device_silu_grad(a.v[p]);
            }
            return g;
        };
        /* win[i] = dout[s+i] at step s (zero from T on); before the first step,
         * win[1..K−1] = dout[t0 … t0+K−2] */
        Lanes<P> win[K];
#pragma unroll
        for (int i = 1; i < K; i++) {
            const int t = w.t0 + i - 1;
            win[i] = t < T ? dout_row(t) : zero_lanes<P>();
        }
#pragma unroll
        for (int s = 0; s < CONV_STEPS; s++) {
            const int t = w.t0 + s;
            if (t >= T) break;
            slide_window<K, P>(win, t + K - 1 < T ? dout_row(t + K - 1) : zero_lanes<P>());
            /* tap j joins x[t] and dout[t+K−1−j] = win[K−1−j] */
            if (dx) {
                DX *dx_t = dx + ((size_t)w.b * T + t) * dx_ld + w.c;
                Lanes<P> d;
                if constexpr (std::is_same_v<DX, float>) d = load_lanes<P>(dx_t);
                else d = zero_lanes<P>();
#pragma unroll
                for (int p = 0; p < P; p++)
#pragma unroll
                    for (int j = 0; j < K; j++) d.v[p] += tap[p][j] * win[K - 1 - j].v[p];
                store_lanes<P>(dx_t, d);
            }
            if (weight_grads) {
                const Lanes<P> xt = load_lanes<P>(x + base + (size_t)t * C);
#pragma unroll
                for (int p = 0; p < P; p++) {
#pragma unroll
                    for (int j = 0; j < K; j++) dw[p][j] += xt.v[p] * win[K - 1 - j].v[p];
                    dw[p][K] += win[0].v[p];
                }
            }
        }
    }
    if (!weight_grads) return;   /* (uniform over the grid: no thread waits at the barrier) */
#pragma unroll
    for (int p = 0; p < P; p++)
#pragma unroll
        for (int j = 0; j <= K; j++) walk_sum[threadIdx.y][j][threadIdx.x * P + p] = dw[p][j];
    __syncthreads();
    /* the block's walks in order: thread (x, y) adds values v = y, y + CONV_WALKS, … */
    const int c_base = blockIdx.y * 32 * P;
    for (int i = threadIdx.y * 32 + threadIdx.x; i < (K + 1) * 32 * P; i += 32 * CONV_WALKS) {
        const int v = i / (32 * P), cl = i % (32 * P);
        float sum = 0.0f;
#pragma unroll
        for (int g = 0; g < CONV_WALKS; g++) sum += walk_sum[g][v][cl];
        if (c_base + cl < C) partial[((size_t)blockIdx.x * (K + 1) + v) * C + c_base + cl] = sum;
    }
}

struct ConvWeightGradFinish {
    float *dweight, *dbias;
    int K;
    __device__ void operator()(int c, int v, float sum) const {
        if (v < K) {
            if (dweight) dweight[(size_t)c * K + v] += sum;
        } else if (dbias) {
            dbias[c] += sum;
        }
    }
};

static void check_kernel_size(int K, const char *who) {
    if (K < 1 || K > CONV_MAX_K) {
        fprintf(stderr, "%s: kernel size %d unsupported (1..%d)\n", who, K, CONV_MAX_K);
        abort();
    }
}

/* float4 lanes when every row the kernels touch starts 16-byte aligned (ld: dx's row stride,
 * C elsewhere; a bf16 dx's rows then start 8-byte aligned, as its 4-lane stores need) */
static bool conv_vec_ok(int C, int ld, const void *const *ptrs, int n) {
    if (C % 4 != 0 || ld % 4 != 0) return false;
    for (int i = 0; i < n; i++)
        if (ptrs[i] && ((uintptr_t)ptrs[i] & 15u) != 0) return false;
    return true;
}

/* grid (walk blocks, channel blocks): the walks on x, whose limit is 2³¹−1 blocks */
static dim3 conv_grid(int Bsz, int T, int C, int P) {
    const long walks = (long)Bsz * ((T + CONV_STEPS - 1) / CONV_STEPS);
    return dim3((unsigned)((walks + CONV_WALKS - 1) / CONV_WALKS), (unsigned)((C + 32 * P - 1) / (32 * P)));
}

template <int K, int P>
static void launch_forward(float *out, float *u, __nv_bfloat16 *u16, const float *x, const float *weight,
                           const float *bias, int Bsz, int T, int C, cudaStream_t stream) {
    causal_conv1d_forward_kernel<K, P><<<conv_grid(Bsz, T, C, P), dim3(32, CONV_WALKS), 0, stream>>>(
        out, u, u16, x, weight, bias, Bsz, T, C);
    CUDA_CHECK_LAUNCH();
}

template <int K, int P, typename DX>
static void launch_backward_to(DX *dx, int dx_ld, float *dweight, float *dbias, const float *dout,
                               const float *silu_in, const float *x, const float *weight, int Bsz, int T, int C,
                               cudaStream_t stream) {
    const dim3 grid = conv_grid(Bsz, T, C, P);
    const bool weight_grads = dweight || dbias;
    float *partial = weight_grads ? column_sum_partials((size_t)grid.x * (K + 1) * C) : NULL;
    causal_conv1d_backward_kernel<K, P, DX><<<grid, dim3(32, CONV_WALKS), 0, stream>>>(
        dx, dx_ld, partial, dout, silu_in, x, weight, Bsz, T, C, weight_grads);
    CUDA_CHECK_LAUNCH();
    if (weight_grads) {
        column_finish_kernel<K + 1><<<grid_stride_blocks((size_t)(K + 1) * C), 256, 0, stream>>>(
            partial, ConvWeightGradFinish{dweight, dbias, K}, C, (int)grid.x);
        CUDA_CHECK_LAUNCH();
    }
}

template <int K, int P>
static void launch_backward(float *dx, int dx_ld, float *dweight, float *dbias, const float *dout,
                            const float *silu_in, const float *x, const float *weight, int Bsz, int T, int C,
                            cudaStream_t stream) {
    launch_backward_to<K, P, float>(dx, dx_ld, dweight, dbias, dout, silu_in, x, weight, Bsz, T, C, stream);
}

template <int K, int P>
static void launch_backward_bf16(__nv_bfloat16 *dx, int dx_ld, float *dweight, float *dbias, const float *dout,
                                 const float *silu_in, const float *x, const float *weight, int Bsz, int T,
                                 int C, cudaStream_t stream) {
    launch_backward_to<K, P, __nv_bfloat16>(dx, dx_ld, dweight, dbias, dout, silu_in, x, weight, Bsz, T, C,
                                            stream);
}

/* the kernel size and the lane width as template arguments */
#define CONV_DISPATCH(K, VEC, LAUNCH, ...)                                              \
    switch (K) {                                                                        \
    case 1: VEC ? LAUNCH<1, 4>(__VA_ARGS__) : LAUNCH<1, 1>(__VA_ARGS__); break;         \
    case 2: VEC ? LAUNCH<2, 4>(__VA_ARGS__) : LAUNCH<2, 1>(__VA_ARGS__); break;         \
    case 3: VEC ? LAUNCH<3, 4>(__VA_ARGS__) : LAUNCH<3, 1>(__VA_ARGS__); break;         \
    case 4: VEC ? LAUNCH<4, 4>(__VA_ARGS__) : LAUNCH<4, 1>(__VA_ARGS__); break;         \
    case 5: VEC ? LAUNCH<5, 4>(__VA_ARGS__) : LAUNCH<5, 1>(__VA_ARGS__); break;         \
    case 6: VEC ? LAUNCH<6, 4>(__VA_ARGS__) : LAUNCH<6, 1>(__VA_ARGS__); break;         \
    case 7: VEC ? LAUNCH<7, 4>(__VA_ARGS__) : LAUNCH<7, 1>(__VA_ARGS__); break;         \
    default: VEC ? LAUNCH<8, 4>(__VA_ARGS__) : LAUNCH<8, 1>(__VA_ARGS__); break;        \
    }

extern "C" void causal_conv1d_forward_cuda(float *out, const float *x, const float *weight,
                                           const float *bias, int Bsz, int T, int C, int K,
                                           cudaStream_t stream) {
    if ((size_t)Bsz * T * C == 0) return;
    check_kernel_size(K, "causal_conv1d_forward_cuda");
    const void *rows[] = {out, x};
    const bool vec = conv_vec_ok(C, C, rows, 2);
    __nv_bfloat16 *none = NULL;
    CONV_DISPATCH(K, vec, launch_forward, out, NULL, none, x, weight, bias, Bsz, T, C, stream)
}

extern "C" void causal_conv1d_silu_forward_cuda(float *out, float *u, uint16_t *u16, const float *x,
                                                const float *weight, const float *bias, int Bsz, int T, int C,
                                                int K, cudaStream_t stream) {
    if ((size_t)Bsz * T * C == 0) return;
    check_kernel_size(K, "causal_conv1d_silu_forward_cuda");
    const void *rows[] = {out, u, u16, x};
    const bool vec = conv_vec_ok(C, C, rows, 4);
    __nv_bfloat16 *b16 = (__nv_bfloat16 *)u16;
    CONV_DISPATCH(K, vec, launch_forward, out, u, b16, x, weight, bias, Bsz, T, C, stream)
}

extern "C" void causal_conv1d_backward_cuda(float *dx, float *dweight, float *dbias, const float *dout,
                                            const float *silu_in, const float *x, const float *weight, int Bsz,
                                            int T, int C, int dx_ld, int K, cudaStream_t stream) {
    if ((size_t)Bsz * T * C == 0 || (!dx && !dweight && !dbias)) return;
    check_kernel_size(K, "causal_conv1d_backward_cuda");
    const void *rows[] = {dx, dout, silu_in, x};
    const bool vec = conv_vec_ok(C, dx_ld, rows, 4);
    CONV_DISPATCH(K, vec, launch_backward, dx, dx_ld, dweight, dbias, dout, silu_in, x, weight, Bsz, T, C, stream)
}

extern "C" void causal_conv1d_backward_bf16_cuda(uint16_t *dx, float *dweight, float *dbias, const float *dout,
                                                 const float *silu_in, const float *x, const float *weight, int Bsz,
                                                 int T, int C, int dx_ld, int K, cudaStream_t stream) {
    if ((size_t)Bsz * T * C == 0) return;
    check_kernel_size(K, "causal_conv1d_backward_bf16_cuda");
    const void *rows[] = {dx, dout, silu_in, x};
    const bool vec = conv_vec_ok(C, dx_ld, rows, 4);
    __nv_bfloat16 *d = (__nv_bfloat16 *)dx;
    CONV_DISPATCH(K, vec, launch_backward_bf16, d, dx_ld, dweight, dbias, dout, silu_in, x, weight, Bsz, T, C,
                  stream)
}
