/* reduce.cuh — warp and block reductions shared by the CUDA ops (device code only).
 * Warp reductions use xor shuffles, so every lane ends with the result. block_sum needs
 * blockDim.x a multiple of 32 and at most 1024, and `shared` room for 32 values. */
#ifndef BRAID_REDUCE_CUH
#define BRAID_REDUCE_CUH

/* Σ x over each aligned group of L lanes (L a power of two ≤ 32); every lane of the group
 * gets its group's sum. All 32 lanes must call it; groups never mix. */
template <int L, typename T>
__device__ __forceinline__ T group_sum(T x) {
#pragma unroll
    for (int offset = L / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) { return group_sum<32>(x); }

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}

/* Sum over the block; every thread gets the result. Contains __syncthreads(). */
template <typename T>
__device__ T block_sum(T x, T *shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    x = warp_sum(x);
    __syncthreads();                  /* `shared` may still be read by a previous call */
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = lane < n_warps ? shared[lane] : T(0);
    return warp_sum(x);
}

#endif
