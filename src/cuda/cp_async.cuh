/* cp_async.cuh — asynchronous global → shared copies (sm_80+), shared by the kernels that
 * stage tiles while they compute on the previous ones (scan.cu, attention_tc.cu).
 * A thread issues copies, closes them into a group with cp_async_commit(), and later waits
 * until at most n of its groups are still in flight; a __syncthreads() after the wait makes
 * every thread's copies visible to the block. */
#ifndef BRAID_CP_ASYNC_CUH
#define BRAID_CP_ASYNC_CUH

/* 4 bytes, through L1 (both addresses 4-byte aligned). */
__device__ __forceinline__ void cp_async4(void *dst, const void *src) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src) : "memory");
}

/* 16 bytes, through L2 only (both addresses 16-byte aligned). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

/* wait until at most n of this thread's committed groups are still in flight */
template <int n>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(n) : "memory"); }

#endif
