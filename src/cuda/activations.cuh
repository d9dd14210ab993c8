/* activations.cuh — the activation functions the CUDA kernels share (device code only),
 * the formulas of core/ops.h's sigmoid_f and silu_f with expf: not the fast intrinsics
 * (__expf is a few ulp off), so the kernels match the CPU ops to rounding. One definition
 * for every kernel that applies them (SwiGLU, the Mamba glue, the conv's fused silu), so
 * an op and the fused kernel that replaces it compute the same bits. */
#ifndef BRAID_ACTIVATIONS_CUH
#define BRAID_ACTIVATIONS_CUH

__device__ __forceinline__ float device_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float device_silu(float x) { return x / (1.0f + expf(-x)); }
/* d/da silu(a) = σ(a)(1 + a(1 − σ(a))) */
__device__ __forceinline__ float device_silu_grad(float x) {
    const float s = device_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}

#endif
