/* rope.cu — rotary position embedding in place on x[B,T,H,hd], on the GPU.
 *
 * For position t and pair index i in [0, hd/2), the pair (x_i, x_{i+hd/2}) (HF's
 * "rotate_half" layout, as the CPU op):
 *   θ_i = t · base^(−2i/hd)
 *   x_i'        = x_i cos θ_i − x_{i+hd/2} sin θ_i
 *   x_{i+hd/2}' = x_i sin θ_i + x_{i+hd/2} cos θ_i
 * Backward rotates the gradient by −θ. The angle and its sine and cosine are formed in
 * double, as on the CPU: t · freq reaches thousands of radians at long T, where a float
 * angle would be off by ~1e-4 before the sine is taken. They depend on (t, i) only, so they
 * are made once into a [T][hd/2] table of float (cos, sin) pairs, kept while T, hd and
 * base stay the same (every call of a training run): the double pow and sincos per
 * element made the rotation compute-bound, ~0.67 TB/s at mqar-small's shape (Nsight
 * Compute, eighth session); with the table it is one pass over x plus a table that sits in
 * L2. One thread per (b, t, h, i) pair. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"

/* table[t·half + i] = (cos θ, sin θ), θ = t · base^(−2i/hd), in double, rounded to float */
__global__ void rope_table_kernel(float2 *table, int T, int hd, float base) {
    const int half = hd / 2;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < (size_t)T * half;
         p += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(p % half), t = (int)(p / half);
        const double angle = (double)t * pow((double)base, -2.0 * i / hd);
        double sin_angle, cos_angle;
        sincos(angle, &sin_angle, &cos_angle);
        table[p] = make_float2((float)cos_angle, (float)sin_angle);
    }
}

__global__ void rope_rotate_kernel(float *x, const float2 *table, int T, int H, int hd, float direction,
                                   size_t n_pairs) {
    const int half = hd / 2;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < n_pairs;
         p += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(p % half);
        const size_t row = p / half;                    /* (b, t, h) flattened */
        const int t = (int)((row / H) % T);
        const float2 cs = table[(size_t)t * half + i];
        const float c = cs.x, s = direction * cs.y;
        float *x1 = x + row * hd + i, *x2 = x1 + half;
        const float a = *x1, b = *x2;
        *x1 = a * c - b * s;
        *x2 = a * s + b * c;
    }
}

/* The table of the last (T, hd, base) asked for: a grow-only device buffer, remade when
 * the key changes. Calls run on one stream, so a remake is ordered after the rotations
 * that read the old one. */
static void *rope_table;
static size_t rope_table_bytes;
static int table_T = -1, table_hd = -1;
static float table_base;

static const float2 *rope_table_for(int T, int hd, float base, cudaStream_t stream) {
    if (T == table_T && hd == table_hd && base == table_base) return (const float2 *)rope_table;
    const size_t n = (size_t)T * (hd / 2);
    float2 *table = (float2 *)grow_device_buffer(&rope_table, &rope_table_bytes, n * sizeof(float2));
    rope_table_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(table, T, hd, base);
    CUDA_CHECK_LAUNCH();
    table_T = T;
    table_hd = hd;
    table_base = base;
    return table;
}

static void rope_rotate_cuda(float *x, int B, int T, int H, int hd, float base, float direction,
                             cudaStream_t stream) {
    const size_t n_pairs = (size_t)B * T * H * (hd / 2);
    if (n_pairs == 0) return;
    const float2 *table = rope_table_for(T, hd, base, stream);
    rope_rotate_kernel<<<grid_stride_blocks(n_pairs), 256, 0, stream>>>(x, table, T, H, hd, direction, n_pairs);
    CUDA_CHECK_LAUNCH();
}

extern "C" void rope_forward_cuda(float *x, int B, int T, int H, int hd, float base, cudaStream_t stream) {
    rope_rotate_cuda(x, B, T, H, hd, base, +1.0f, stream);
}

extern "C" void rope_backward_cuda(float *dx, int B, int T, int H, int hd, float base, cudaStream_t stream) {
    rope_rotate_cuda(dx, B, T, H, hd, base, -1.0f, stream);
}
