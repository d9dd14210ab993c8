/* ptx.cuh — the inline PTX that kernels share (scan.cu, attention_tc.cu): 2^x on the SFU,
 * and asynchronous global → shared copies (sm_80+) for staging tiles while computing on the
 * previous ones. A thread issues copies, closes them into a group with cp_async_commit(), and later waits
 * until at most n of its groups are still in flight; a __syncthreads() after the wait makes
 * every thread's copies visible to the block. */
#ifndef BRAID_PTX_CUH
#define BRAID_PTX_CUH

/* 2^x on the SFU (one MUFU.EX2), results below 2^−126 flushed to 0 and ex2(−∞) = 0. exp2f
 * would add a range check and two multiplies per call to keep denormal results, which
 * neither a decay e^{δA} < 1e−38 (the scan) nor a probability < 1e−38 (attention) needs. */
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

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
