/* rope.cu — rotary position embedding in place on x[B,T,H,hd], on the GPU.
 *
 * For position t and pair index i in [0, hd/2), the pair (x_i, x_{i+hd/2}) (HF's
 * "rotate_half" layout, as the CPU op):
 *   θ_i = t · base^(−2i/hd)
 *   x_i'        = x_i cos θ_i − x_{i+hd/2} sin θ_i
 *   x_{i+hd/2}' = x_i sin θ_i + x_{i+hd/2} cos θ_i
 * Backward rotates the gradient by −θ. One thread per (b, t, h, i) pair. The angle and
 * its sine and cosine are formed in double, as on the CPU: t · freq reaches thousands of
 * radians at long T, where a float angle would be off by ~1e-4 before the sine is taken
 * (Hopper's double units make this cheap next to the memory traffic). */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"

__global__ void rope_rotate_kernel(float *x, int T, int H, int hd, float base, float direction,
                                   size_t n_pairs) {
    const int half = hd / 2;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < n_pairs;
         p += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(p % half);
        const size_t row = p / half;                    /* (b, t, h) flattened */
        const int t = (int)((row / H) % T);
        const double angle = (double)t * pow((double)base, -2.0 * i / hd);
        double sin_angle, cos_angle;
        sincos(angle, &sin_angle, &cos_angle);
        const float c = (float)cos_angle, s = direction * (float)sin_angle;
        float *x1 = x + row * hd + i, *x2 = x1 + half;
        const float a = *x1, b = *x2;
        *x1 = a * c - b * s;
        *x2 = a * s + b * c;
    }
}

static void rope_rotate_cuda(float *x, int B, int T, int H, int hd, float base, float direction,
                             cudaStream_t stream) {
    const size_t n_pairs = (size_t)B * T * H * (hd / 2);
    if (n_pairs == 0) return;
    rope_rotate_kernel<<<grid_stride_blocks(n_pairs), 256, 0, stream>>>(x, T, H, hd, base, direction, n_pairs);
    CUDA_CHECK_LAUNCH();
}

extern "C" void rope_forward_cuda(float *x, int B, int T, int H, int hd, float base, cudaStream_t stream) {
    rope_rotate_cuda(x, B, T, H, hd, base, +1.0f, stream);
}

extern "C" void rope_backward_cuda(float *dx, int B, int T, int H, int hd, float base, cudaStream_t stream) {
    rope_rotate_cuda(dx, B, T, H, hd, base, -1.0f, stream);
}
