/* grid.cuh — what the grid-stride kernels share: their launch size (host code: enough
 * blocks of `threads` to cover n elements, capped at `max_blocks`, which fills any current
 * GPU several times over; each kernel's grid-stride loop takes the rest), and, below, the
 * float4-or-scalar pieces the memory-bound kernels are written over. */
#ifndef BRAID_GRID_CUH
#define BRAID_GRID_CUH
#include <stddef.h>

static inline unsigned grid_stride_blocks(size_t n, unsigned threads = 256, size_t max_blocks = 8192) {
    size_t blocks = (n + threads - 1) / threads;
    return (unsigned)(blocks < max_blocks ? blocks : max_blocks);
}

/* P adjacent floats of an array: a float4 (P = 4: one 16-byte load or store, the address
 * 16-byte aligned) or one float (P = 1). The memory-bound kernels are written once over P:
 * the elementwise ones (swiglu.cu, mamba_glue.cu, elementwise.cu, moe.cu's rows, the bias
 * add) as GRID_STRIDE(i, n / W) over pieces of W = 4 where aligned16 holds, else W = 1
 * (LAUNCH_ELEMENTWISE); the causal conv1d (conv1d.cu) walks time with P channels a thread.
 * On an H100 the 4-byte elementwise kernels ran at 2.1–2.2 TB/s, the float4 ones at
 * 2.7–2.9 (Nsight Compute, DRAM bytes per kernel; docs/performance.md). */
#ifdef __CUDACC__
#include <stdint.h>
#include <cuda_bf16.h>

template <int P>
struct Lanes {
    float v[P];
    __device__ __forceinline__ float &operator[](int e) { return v[e]; }
    __device__ __forceinline__ float operator[](int e) const { return v[e]; }
};

template <int P>
__device__ __forceinline__ Lanes<P> load_lanes(const float *p) {
    Lanes<P> r;
    if constexpr (P == 4) {
        const float4 q = *(const float4 *)p;
        r.v[0] = q.x; r.v[1] = q.y; r.v[2] = q.z; r.v[3] = q.w;
    } else {
#pragma unroll
        for (int i = 0; i < P; i++) r.v[i] = p[i];
    }
    return r;
}

template <int P>
__device__ __forceinline__ void store_lanes(float *p, const Lanes<P> &r) {
    if constexpr (P == 4) *(float4 *)p = make_float4(r.v[0], r.v[1], r.v[2], r.v[3]);
    else {
#pragma unroll
        for (int i = 0; i < P; i++) p[i] = r.v[i];
    }
}

/* The same P values stored as bfloat16, rounded to nearest even: the bits matmul.cu's own
 * float-to-bf16 conversion gives, so an op that writes a matmul's bf16 operand itself
 * (ops_cuda.h, "bf16 operands written by their producers") changes no product. P = 4: one
 * 8-byte store (p 8-byte aligned: a 16-byte aligned array at a multiple of 4 elements). */
template <int P>
__device__ __forceinline__ void store_lanes(__nv_bfloat16 *p, const Lanes<P> &r) {
    if constexpr (P == 4) {
        const __nv_bfloat162 lo = __floats2bfloat162_rn(r.v[0], r.v[1]), hi = __floats2bfloat162_rn(r.v[2], r.v[3]);
        *(uint2 *)p = make_uint2(*(const unsigned *)&lo, *(const unsigned *)&hi);
    } else {
#pragma unroll
        for (int i = 0; i < P; i++) p[i] = __float2bfloat16_rn(r.v[i]);
    }
}

template <int P>
__device__ __forceinline__ Lanes<P> zero_lanes() {
    Lanes<P> r;
#pragma unroll
    for (int i = 0; i < P; i++) r.v[i] = 0.0f;
    return r;
}

#define GRID_STRIDE(i, n)                                                                  \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                \
         i += (size_t)gridDim.x * blockDim.x)

/* whether n is a multiple of 4 and every pointer given 16-byte aligned */
template <class... P>
static inline bool aligned16(size_t n, P... ptrs) {
    return n % 4 == 0 && ((reinterpret_cast<uintptr_t>(ptrs) % 16 == 0) && ...);
}

/* Element j of a flat [rows, row] array in one whose rows lie ld apart (an output written
 * beside another in the rows of one array: the layers' [dg | du] and [dx1 | dz]). ld == row
 * (flat) is one uniform branch, no division. */
__device__ __forceinline__ size_t row_strided(size_t j, size_t row, size_t ld) {
    return ld == row ? j : j / row * ld + j % row;
}

/* Whether pieces of W = 4, which start at multiples of 4 in the flat order, stay inside one
 * row of such an output and keep its 16-byte (bf16: 8-byte) alignment. */
static inline bool lanes_fit_rows(size_t row, size_t ld) { return ld == row || (row % 4 == 0 && ld % 4 == 0); }

/* kernel<4> over n / 4 pieces when vec (aligned16 of the kernel's arrays), else kernel<1>
 * over n: the launch of every elementwise kernel written over W (256 threads a block). */
#define LAUNCH_ELEMENTWISE(kernel, n, stream, vec, ...)                                    \
    do {                                                                                   \
        if (vec)                                                                           \
            kernel<4><<<grid_stride_blocks((n) / 4), 256, 0, (stream)>>>(__VA_ARGS__);     \
        else                                                                               \
            kernel<1><<<grid_stride_blocks(n), 256, 0, (stream)>>>(__VA_ARGS__);           \
        CUDA_CHECK_LAUNCH();                                                               \
    } while (0)
#endif

#endif
