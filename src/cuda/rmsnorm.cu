/* rmsnorm.cu — RMSNorm over the last dimension, on the GPU.
 *
 * forward:  r = 1/sqrt(mean(x²) + eps);  y = x · r · w
 * backward: with g = dy ⊙ w,
 *           dx += r · (g − x · r² · mean(g ⊙ x))
 *           dw += Σ_rows dy ⊙ x · r
 * and the two forms the model's residual stream uses (rmsnorm_residual_forward_cuda,
 * rmsnorm_backward_onto_cuda): the forward first adds a residual into x (x ← x + res,
 * written back: the block's sum, which the backward reads as the norm's input), the
 * backward writes dx = base + (the term above) instead of adding into dx. Each saves a
 * separate pass over the [N, C] stream: the add (read two, write one) and the copy of the
 * residual gradient (read one, write one).
 *
 * Both are memory-bound: per row, the forward reads x and writes y (and its bf16 copy),
 * the backward reads dy, x and dx and writes dx. The fast path ("row" kernels) moves only
 * those bytes, once each:
 *  - L lanes per row (a warp, or for C ≤ 128 a power-of-two group of 1..16 lanes, so the
 *    Mamba norms' C = 16 or 48 do not leave most of a warp idle), each lane holding V
 *    float4 of the row in registers: lane `sub` owns float4 columns sub, sub + L, …,
 *    sub + (V−1)·L. The row is loaded once (16-byte loads, one 512-byte stretch per warp
 *    and step), reduced with xor shuffles within the group, and the output is computed
 *    from the registers: the old kernels read x twice per row, and the backward read dy
 *    and x a third time in a separate column-sum pass for dw.
 *  - The backward's dw: each block takes a contiguous slice of rows and one pass over
 *    them; a lane owns the same columns on every row it handles, so it adds its rows'
 *    dy ⊙ x · r into V float4 accumulators. At the end the block adds its row groups in a
 *    fixed order (xor shuffles within a warp, then a halving tree over the warps through
 *    shared memory) and writes one partial row, partial[slice][0..C). A second kernel
 *    adds the slices' partials in a fixed order into dw. No atomics: the same bits on
 *    every run (for a given slice count, which depends on N, the kernel's occupancy and
 *    the GPU's SM count). The slices: one wave of blocks, as many as fit on the GPU at
 *    once, so every SM streams rows to the end and no tail wave runs half empty.
 *  - Capacity: V ≤ RMSNORM_MAX_VEC float4 a lane, C ≤ 128 · RMSNORM_MAX_VEC (2048) floats.
 *    The backward then holds 12·V floats a lane (dy, x, the dw accumulators): 192 at
 *    V = 16, under the 255 registers a thread can have at one 256-thread block an SM.
 * The fast path needs C % 4 == 0 and the arrays 16-byte aligned (the bf16 copy 8-byte);
 * other shapes take the general kernels: one warp a row, scalar strided loads, x read
 * twice, and dw through column_sum.cuh (partial sums over row slices added in a fixed
 * order, also without atomics). */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "reduce.cuh"
#include "column_sum.cuh"
#include "grid.cuh"

#include <cuda_bf16.h>

#define ROWS_PER_BLOCK 8           /* general kernels: one warp a row */
#define RMSNORM_THREADS 256        /* row kernels: 8 warps a block */
#define RMSNORM_WARPS (RMSNORM_THREADS / 32)
#define RMSNORM_MAX_VEC 16         /* float4 a lane holds: rows up to 2048 floats */
#define RMSNORM_FINISH_GROUPS 16   /* dw finish: slice groups a block (blockDim.y) */

/* ---------------------------------------------------------------- row kernels (fast path) */

/* forward, L lanes a row, V float4 a lane:
 *   x = inp (+ residual, then stored to sum, where residual is not NULL)
 *   ss = Σ_c x[c]²  (each lane its own columns, then the group's lanes)
 *   r = 1/sqrt(ss/C + eps);  y[c] = x[c]·r·w[c];  y16[c] = bf16_rn(y[c])
 * x stays in registers between the two. Rows past N still join the shuffles (all 32
 * lanes must), then leave. */
template <int V, int L>
__global__ void __launch_bounds__(RMSNORM_THREADS)
rmsnorm_forward_rows_kernel(float *out, __nv_bfloat16 *out16, float *rstd, const float *inp, const float *residual,
                            float *sum, const float *weight, int N, int C, float eps) {
    const int n = blockIdx.x * (RMSNORM_THREADS / L) + threadIdx.x / L, sub = threadIdx.x % L;
    const int C4 = C / 4;
    const bool in_rows = n < N;
    Lanes<4> x[V];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < V; k++) {
        const int i = sub + k * L;
        x[k] = zero_lanes<4>();
        if (in_rows && i < C4) {
            x[k] = load_lanes<4>(inp + (size_t)n * C + 4 * i);
            if (residual) {   /* sum may be inp itself: each lane rewrites only what it read */
                const Lanes<4> add = load_lanes<4>(residual + (size_t)n * C + 4 * i);
#pragma unroll
                for (int e = 0; e < 4; e++) x[k][e] += add[e];
                store_lanes<4>(sum + (size_t)n * C + 4 * i, x[k]);
            }
        }
#pragma unroll
        for (int e = 0; e < 4; e++) ss += x[k][e] * x[k][e];
    }
    ss = group_sum<L>(ss);
    if (!in_rows) return;
    const float r = 1.0f / sqrtf(ss / C + eps);
    if (rstd && sub == 0) rstd[n] = r;
#pragma unroll
    for (int k = 0; k < V; k++) {
        const int i = sub + k * L;
        if (i < C4) {
            const Lanes<4> w = load_lanes<4>(weight + 4 * i);
            Lanes<4> y;
#pragma unroll
            for (int e = 0; e < 4; e++) y[e] = x[k][e] * r * w[e];
            store_lanes<4>(out + (size_t)n * C + 4 * i, y);
            if (out16) store_lanes<4>(out16 + (size_t)n * C + 4 * i, y);   /* bf16_rn of the y just stored */
        }
    }
}

/* backward over rows [n0, n1) = this block's slice, L lanes a row, V float4 a lane:
 *   dot = Σ_c dy[c]·w[c]·x[c];  k = dot/C · r²;  dx[c] = base[c] + r·(dy[c]·w[c] − x[c]·k)
 * (base = dinp: the op contract's accumulate; NULL: from zero), and dinp16 = bf16(dx) where
 * not NULL: the next layer's backward reads dx as its output gradient, a bf16 operand
 *   acc[c] += dy[c]·x[c]·r        (this lane's columns, over its rows)
 * then partial[blockIdx.x][c] = Σ over the block's row groups of acc[c], in a fixed order.
 * A warp's rows advance together (n_warp), so every lane reaches every shuffle. dinp NULL:
 * no dx; partial NULL: no dw. */
template <int V, int L>
__global__ void __launch_bounds__(RMSNORM_THREADS)
rmsnorm_backward_rows_kernel(float *dinp, const float *dbase, __nv_bfloat16 *dinp16, float *partial,
                             const float *dout, const float *inp, const float *weight, const float *rstd, int N,
                             int C, int rows_per_slice) {
    constexpr int ROWS_PER_WARP = 32 / L;
    __shared__ Lanes<4> half_sum[RMSNORM_WARPS / 2][V][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, sub = lane % L;
    const int C4 = C / 4;
    const int n0 = blockIdx.x * rows_per_slice, n1 = min(N, n0 + rows_per_slice);
    Lanes<4> acc[V];
#pragma unroll
    for (int k = 0; k < V; k++) acc[k] = zero_lanes<4>();

    for (int n_warp = n0 + warp * ROWS_PER_WARP; n_warp < n1; n_warp += RMSNORM_WARPS * ROWS_PER_WARP) {
        const int n = n_warp + lane / L;
        const bool in_rows = n < n1;
        const float r = in_rows ? rstd[n] : 0.0f;
        Lanes<4> dy[V], x[V];
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < V; k++) {
            const int i = sub + k * L;
            dy[k] = zero_lanes<4>();
            x[k] = zero_lanes<4>();
            if (in_rows && i < C4) {
                dy[k] = load_lanes<4>(dout + (size_t)n * C + 4 * i);
                x[k] = load_lanes<4>(inp + (size_t)n * C + 4 * i);
                const Lanes<4> w = load_lanes<4>(weight + 4 * i);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    dot += dy[k][e] * w[e] * x[k][e];
                    acc[k][e] += dy[k][e] * x[k][e] * r;
                }
            }
        }
        dot = group_sum<L>(dot);
        if (dinp && in_rows) {
            const float kx = dot / C * r * r;
#pragma unroll
            for (int k = 0; k < V; k++) {
                const int i = sub + k * L;
                if (i < C4) {
                    const size_t at = (size_t)n * C + 4 * i;
                    const Lanes<4> w = load_lanes<4>(weight + 4 * i);
                    Lanes<4> d = dbase ? load_lanes<4>(dbase + at) : zero_lanes<4>();
#pragma unroll
                    for (int e = 0; e < 4; e++) d[e] += r * (dy[k][e] * w[e] - x[k][e] * kx);
                    store_lanes<4>(dinp + at, d);
                    if (dinp16) store_lanes<4>(dinp16 + at, d);   /* bf16_rn of the dx just stored */
                }
            }
        }
    }
    if (!partial) return;   /* the whole block: partial is the same for every thread */

    /* the warp's row groups hold the same columns: add them (lanes l, l ^ L, l ^ 2L, …) */
#pragma unroll
    for (int offset = L; offset < 32; offset <<= 1)
#pragma unroll
        for (int k = 0; k < V; k++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[k][e] += __shfl_xor_sync(0xffffffffu, acc[k][e], offset);
    /* then the warps: the upper half hands its sums to the lower half, which adds them,
     * until warp 0 holds the block's */
#pragma unroll
    for (int half = RMSNORM_WARPS / 2; half > 0; half /= 2) {
        if (warp >= half && warp < 2 * half)
#pragma unroll
            for (int k = 0; k < V; k++) half_sum[warp - half][k][lane] = acc[k];
        __syncthreads();
        if (warp < half)
#pragma unroll
            for (int k = 0; k < V; k++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[k][e] += half_sum[warp][k][lane][e];
        __syncthreads();
    }
    if (warp == 0 && lane < L) {
#pragma unroll
        for (int k = 0; k < V; k++) {
            const int i = lane + k * L;
            if (i < C4) store_lanes<4>(partial + (size_t)blockIdx.x * C + 4 * i, acc[k]);
        }
    }
}

/* dweight[c] += Σ_{s<S} partial[s][c]: thread (x, y) of block bx adds the slices
 * s ≡ y (mod RMSNORM_FINISH_GROUPS) of column 32·bx + x in order (a warp reads 32 adjacent
 * floats of a partial row); the groups are then added in order through shared memory. */
__global__ void rmsnorm_dweight_finish_kernel(float *dweight, const float *partial, int S, int C) {
    __shared__ float group_total[RMSNORM_FINISH_GROUPS][32 + 1];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (c < C) {
#pragma unroll 4
        for (int s = threadIdx.y; s < S; s += RMSNORM_FINISH_GROUPS) sum += partial[(size_t)s * C + c];
    }
    group_total[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float total = 0.0f;
#pragma unroll
        for (int g = 0; g < RMSNORM_FINISH_GROUPS; g++) total += group_total[g][threadIdx.x];
        dweight[c] += total;
    }
}

/* The row kernels' shape for a row of C4 float4: C4 ≤ 32 takes V = 1 and the smallest
 * power-of-two group L ≥ C4; longer rows a warp (L = 32) and V = ⌈C4/32⌉. Calls
 * f(RowShape<V, L>{}) and returns true, or returns false when C4 is past the capacity. */
template <int V_, int L_>
struct RowShape {
    static constexpr int V = V_, L = L_;
};

template <class F>
static bool with_row_shape(int C4, F f) {
    if (C4 < 1) return false;
    if (C4 <= 32) {
        if (C4 <= 1) f(RowShape<1, 1>{});
        else if (C4 <= 2) f(RowShape<1, 2>{});
        else if (C4 <= 4) f(RowShape<1, 4>{});
        else if (C4 <= 8) f(RowShape<1, 8>{});
        else if (C4 <= 16) f(RowShape<1, 16>{});
        else f(RowShape<1, 32>{});
        return true;
    }
    switch ((C4 + 31) / 32) {
    case 2: f(RowShape<2, 32>{}); return true;
    case 3: f(RowShape<3, 32>{}); return true;
    case 4: f(RowShape<4, 32>{}); return true;
    case 5: f(RowShape<5, 32>{}); return true;
    case 6: f(RowShape<6, 32>{}); return true;
    case 7: f(RowShape<7, 32>{}); return true;
    case 8: f(RowShape<8, 32>{}); return true;
    case 9: f(RowShape<9, 32>{}); return true;
    case 10: f(RowShape<10, 32>{}); return true;
    case 11: f(RowShape<11, 32>{}); return true;
    case 12: f(RowShape<12, 32>{}); return true;
    case 13: f(RowShape<13, 32>{}); return true;
    case 14: f(RowShape<14, 32>{}); return true;
    case 15: f(RowShape<15, 32>{}); return true;
    case 16: f(RowShape<16, 32>{}); return true;
    default: return false;   /* past RMSNORM_MAX_VEC float4 a lane */
    }
}
static_assert(RMSNORM_MAX_VEC == 16, "with_row_shape's cases stop at 16 float4 a lane");

/* The backward's slices: one wave of row-kernel blocks (as many as the GPU holds at once),
 * but no fewer than two steps of rows a block (below that the partials cost more than the
 * blocks gain). Returns the slice count; *rows_per_slice the rows each covers (the last
 * slice fewer, none empty). */
template <int V, int L>
static int backward_slices(int N, int *rows_per_slice) {
    static int blocks_per_sm = 0;   /* per kernel instantiation; the occupancy query once */
    if (blocks_per_sm == 0) {
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, rmsnorm_backward_rows_kernel<V, L>,
                                                                 RMSNORM_THREADS, 0));
        if (blocks_per_sm < 1) blocks_per_sm = 1;
    }
    const int rows_per_step = RMSNORM_THREADS / L;
    const long slots = (long)blocks_per_sm * cuda_sm_count(), most = (N + 2L * rows_per_step - 1) / (2L * rows_per_step);
    long slices = slots < most ? slots : most;
    if (slices < 1) slices = 1;
    *rows_per_slice = (int)((N + slices - 1) / slices);
    return (N + *rows_per_slice - 1) / *rows_per_slice;
}

/* ---------------------------------------------------------------- general kernels */

/* The fallback, any C and alignment: one warp a row, the row read twice (the sum of
 * squares, then the output); with a residual, three times (the sum written first). out16,
 * when not NULL, gets the same values in bf16 (the matmuls' operand: ops_cuda.h) */
__global__ void rmsnorm_forward_kernel(float *out, __nv_bfloat16 *out16, float *rstd, const float *inp,
                                       const float *residual, float *sum, const float *weight, int N, int C,
                                       float eps) {
    const int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *x = inp + (size_t)n * C;
    float *y = out + (size_t)n * C;
    float ss = 0.0f;
    if (residual) {   /* x ← inp + residual into sum (which may be inp), then x is sum's row;
                       * each lane reads back only the columns it wrote, so no sync */
        const float *res = residual + (size_t)n * C;
        float *s = sum + (size_t)n * C;
        for (int c = lane; c < C; c += 32) s[c] = x[c] + res[c];
        x = s;
    }
    for (int c = lane; c < C; c += 32) ss += x[c] * x[c];
    ss = warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / C + eps);
    if (rstd && lane == 0) rstd[n] = r;
    __nv_bfloat16 *y16 = out16 ? out16 + (size_t)n * C : NULL;
    for (int c = lane; c < C; c += 32) {
        const float v = x[c] * r * weight[c];
        y[c] = v;
        if (y16) y16[c] = __float2bfloat16_rn(v);
    }
}

/* The fallback's dx = base + term (dw is a column_sums pass below) */
__global__ void rmsnorm_backward_input_kernel(float *dinp, const float *dbase, __nv_bfloat16 *dinp16,
                                              const float *dout, const float *inp, const float *weight,
                                              const float *rstd, int N, int C) {
    const int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    const float r = rstd[n];
    float dot = 0.0f;
    for (int c = lane; c < C; c += 32) dot += dy[c] * weight[c] * x[c];
    dot = warp_sum(dot);
    const float k = dot / C * r * r;
    const float *base = dbase ? dbase + (size_t)n * C : NULL;
    __nv_bfloat16 *dx16 = dinp16 ? dinp16 + (size_t)n * C : NULL;
    for (int c = lane; c < C; c += 32) {
        dx[c] = (base ? base[c] : 0.0f) + r * (dy[c] * weight[c] - x[c] * k);
        if (dx16) dx16[c] = __float2bfloat16_rn(dx[c]);
    }
}

/* dweight[c] += Σ_n dout[n,c] · inp[n,c] · rstd[n], through column_sum.cuh */
struct RmsnormWeightTerm {
    const float *dout, *inp, *rstd;
    int C;
    __device__ void operator()(int n, int c, float (&acc)[1]) const {
        const size_t i = (size_t)n * C + c;
        acc[0] += dout[i] * inp[i] * rstd[n];
    }
};

/* ---------------------------------------------------------------- launchers */

static bool aligned8(const void *p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; }

/* residual NULL: the plain norm of inp (sum unused); else of inp + residual, stored to sum */
static void launch_forward(float *out, __nv_bfloat16 *out16, float *rstd, const float *inp, const float *residual,
                           float *sum, const float *weight, int N, int C, float eps, cudaStream_t stream) {
    if (N <= 0) return;
    if (aligned16((size_t)C, out, inp, weight, residual, sum) && (!out16 || aligned8(out16)) &&
        with_row_shape(C / 4, [&](auto shape) {
            constexpr int V = decltype(shape)::V, L = decltype(shape)::L, rows = RMSNORM_THREADS / L;
            rmsnorm_forward_rows_kernel<V, L><<<(N + rows - 1) / rows, RMSNORM_THREADS, 0, stream>>>(
                out, out16, rstd, inp, residual, sum, weight, N, C, eps);
            CUDA_CHECK_LAUNCH();
        }))
        return;
    const int blocks = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    rmsnorm_forward_kernel<<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(out, out16, rstd, inp, residual, sum, weight,
                                                                       N, C, eps);
    CUDA_CHECK_LAUNCH();
}

extern "C" void rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight,
                                     int N, int C, float eps, cudaStream_t stream) {
    launch_forward(out, NULL, rstd, inp, NULL, NULL, weight, N, C, eps, stream);
}

extern "C" void rmsnorm_forward_bf16_copy_cuda(float *out, uint16_t *out16, float *rstd, const float *inp,
                                               const float *weight, int N, int C, float eps, cudaStream_t stream) {
    launch_forward(out, (__nv_bfloat16 *)out16, rstd, inp, NULL, NULL, weight, N, C, eps, stream);
}

extern "C" void rmsnorm_residual_forward_cuda(float *out, uint16_t *out16, float *rstd, float *x,
                                              const float *residual, const float *weight, int N, int C, float eps,
                                              cudaStream_t stream) {
    launch_forward(out, (__nv_bfloat16 *)out16, rstd, x, residual, residual ? x : NULL, weight, N, C, eps, stream);
}

/* Fast path: the row kernel (dx, and dw's partials in column_sum.cuh's scratch buffer,
 * which no other column sum uses between the two launches: one stream, in order), then
 * the ordered finish. */
extern "C" void rmsnorm_backward_onto_cuda(float *dinp, const float *dbase, uint16_t *dinp16_bits, float *dweight,
                                           const float *dout, const float *inp, const float *weight,
                                           const float *rstd, int N, int C, cudaStream_t stream) {
    if (N <= 0 || (!dinp && !dweight)) return;
    __nv_bfloat16 *dinp16 = dinp ? (__nv_bfloat16 *)dinp16_bits : NULL;
    if (aligned16((size_t)C, dout, inp, weight, dbase) && (!dinp || aligned16(0, dinp)) &&
        (!dinp16 || aligned8(dinp16)) &&
        with_row_shape(C / 4, [&](auto shape) {
            constexpr int V = decltype(shape)::V, L = decltype(shape)::L;
            int rows_per_slice = 0;
            const int slices = backward_slices<V, L>(N, &rows_per_slice);
            float *partial = dweight ? column_sum_partials((size_t)slices * C) : NULL;
            rmsnorm_backward_rows_kernel<V, L><<<slices, RMSNORM_THREADS, 0, stream>>>(
                dinp, dbase, dinp16, partial, dout, inp, weight, rstd, N, C, rows_per_slice);
            CUDA_CHECK_LAUNCH();
            if (dweight) {
                rmsnorm_dweight_finish_kernel<<<(C + 31) / 32, dim3(32, RMSNORM_FINISH_GROUPS), 0, stream>>>(
                    dweight, partial, slices, C);
                CUDA_CHECK_LAUNCH();
            }
        }))
        return;
    if (dinp) {
        const int blocks = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
        rmsnorm_backward_input_kernel<<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(
            dinp, dbase, dinp16, dout, inp, weight, rstd, N, C);
        CUDA_CHECK_LAUNCH();
    }
    if (dweight) {
        column_sums<1>(RmsnormWeightTerm{dout, inp, rstd, C}, ColumnAccumulate{dweight}, N, C, stream);
    }
}

extern "C" void rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                                      const float *weight, const float *rstd, int N, int C,
                                      cudaStream_t stream) {
    rmsnorm_backward_onto_cuda(dinp, dinp, NULL, dweight, dout, inp, weight, rstd, N, C, stream);
}
