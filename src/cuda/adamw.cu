/* adamw.cu — AdamW and the global gradient norm on the GPU, the same math as
 * train/adamw.c:
 *   g = grad · grad_scale (the clipping factor: adamw.h)
 *   m ← β₁m + (1−β₁)g;   v ← β₂v + (1−β₂)g²
 *   m̂ = m/(1−β₁ᵗ);       v̂ = v/(1−β₂ᵗ)
 *   θ ← θ − lr·(m̂/(√v̂ + ε) + λθ)      (λ = 0 for tensors declared no_decay)
 *   ‖g‖ = sqrt(Σ g²), squares summed in double
 *
 * Weight decay differs per tensor. The launcher walks the host ParamList and merges
 * neighbouring tensors that share a decay flag into one range, one launch per range: a
 * model declares its norms and biases in a handful of runs, so this is a few launches a
 * step with no per-element mask in device memory. The bias corrections are formed on the
 * host with powf, exactly as the CPU op does. Within a range the 16-byte aligned middle
 * goes in float4 pieces and the ragged ends one float a thread (the update streams 28 bytes
 * a parameter and is memory-bound); the clipping factor is applied here, as the gradient is
 * read, instead of by a pass of its own over the gradients (the trainer's one step).
 *
 * The norm is two passes with no atomics (so the same bits every run): up to
 * GLOBAL_GRAD_NORM_CUDA_PARTIALS blocks each reduce a grid-strided share into one double;
 * one block then adds those partials in a fixed order and takes the square root. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"
#include "reduce.cuh"

/* One parameter's update: the math above, for one element. */
__device__ __forceinline__ void adamw_one(float &param, float grad, float &m, float &v, float lr, float beta1,
                                          float beta2, float eps, float weight_decay, float bias_correction1,
                                          float bias_correction2, float grad_scale) {
    const float g = grad * grad_scale;
    m = beta1 * m + (1.0f - beta1) * g;
    v = beta2 * v + (1.0f - beta2) * g * g;
    const float mhat = m / bias_correction1, vhat = v / bias_correction2;
    param -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * param);
}

/* [lo, hi): where vec (the four arrays 16-byte aligned), the elements from lo4 = lo rounded
 * up to a multiple of 4 to hi4 = hi rounded down as float4 pieces and the ends singly;
 * otherwise all of them singly. */
__global__ void adamw_range_kernel(float *params, const float *grads, float *m, float *v, size_t lo,
                                   size_t hi, float lr, float beta1, float beta2, float eps,
                                   float weight_decay, float bias_correction1, float bias_correction2,
                                   float grad_scale, bool vec) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (!vec) {
        for (size_t i = lo + first; i < hi; i += stride)
            adamw_one(params[i], grads[i], m[i], v[i], lr, beta1, beta2, eps, weight_decay, bias_correction1,
                      bias_correction2, grad_scale);
        return;
    }
    const size_t lo4 = (lo + 3) / 4 * 4, hi4 = hi / 4 * 4 > lo4 ? hi / 4 * 4 : lo4;
    for (size_t j = lo4 / 4 + first; j < hi4 / 4; j += stride) {
        float4 p = ((float4 *)params)[j], mm = ((float4 *)m)[j], vv = ((float4 *)v)[j];
        const float4 g = ((const float4 *)grads)[j];
        adamw_one(p.x, g.x, mm.x, vv.x, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
        adamw_one(p.y, g.y, mm.y, vv.y, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
        adamw_one(p.z, g.z, mm.z, vv.z, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
        adamw_one(p.w, g.w, mm.w, vv.w, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
        ((float4 *)params)[j] = p;
        ((float4 *)m)[j] = mm;
        ((float4 *)v)[j] = vv;
    }
    /* the ends: [lo, min(lo4, hi)) and [max(hi4, lo4), hi), at most 3 + 3 elements */
    if (first < 8) {
        const size_t i = first < 4 ? lo + first : hi4 + (first - 4);
        const bool mine = first < 4 ? i < lo4 && i < hi : i >= lo4 && i < hi;
        if (mine)
            adamw_one(params[i], grads[i], m[i], v[i], lr, beta1, beta2, eps, weight_decay, bias_correction1,
                      bias_correction2, grad_scale);
    }
}

extern "C" void adamw_update_cuda(float *params, const float *grads, float *m, float *v,
                                  const ParamList *list, const AdamWSettings *s, long step,
                                  cudaStream_t stream) {
    matmul_forget_weights_cuda();   /* its bf16 copy of the weights is stale from here */
    const float bias_correction1 = 1.0f - powf(s->beta1, (float)step);
    const float bias_correction2 = 1.0f - powf(s->beta2, (float)step);
    const bool vec = aligned16(0, params, grads, m, v);
    int t = 0;
    while (t < list->count) {
        /* the longest run of contiguous tensors from t with the same decay flag */
        const ParamDecl *first = &list->items[t];
        size_t lo = first->offset, hi = first->offset + first->numel;
        int u = t + 1;
        while (u < list->count && list->items[u].no_decay == first->no_decay &&
               list->items[u].offset == hi) {
            hi += list->items[u].numel;
            u++;
        }
        if (hi > lo) {
            const float weight_decay = first->no_decay ? 0.0f : s->weight_decay;
            adamw_range_kernel<<<grid_stride_blocks(vec ? (hi - lo) / 4 + 2 : hi - lo), 256, 0, stream>>>(
                params, grads, m, v, lo, hi, s->lr, s->beta1, s->beta2, s->eps, weight_decay,
                bias_correction1, bias_correction2, s->grad_scale, vec);
            CUDA_CHECK_LAUNCH();
        }
        t = u;
    }
}

/* vec (grads 16-byte aligned): float4 pieces, then the last n % 4 singly */
__global__ void grad_norm_partials_kernel(double *partials, const float *grads, size_t n, bool vec) {
    __shared__ double shared[32];
    double ss = 0.0;
    const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    const size_t n4 = vec ? n / 4 : 0;
    for (size_t j = first; j < n4; j += stride) {
        const float4 g = ((const float4 *)grads)[j];
        ss += (double)g.x * g.x + (double)g.y * g.y + (double)g.z * g.z + (double)g.w * g.w;
    }
    for (size_t i = 4 * n4 + first; i < n; i += stride) ss += (double)grads[i] * grads[i];
    ss = block_sum(ss, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = ss;
}

__global__ void grad_norm_finish_kernel(double *norm, const double *partials, int n_partials) {
    __shared__ double shared[32];
    double ss = 0.0;
    for (int i = threadIdx.x; i < n_partials; i += blockDim.x) ss += partials[i];
    ss = block_sum(ss, shared);
    if (threadIdx.x == 0) *norm = sqrt(ss);
}

extern "C" void global_grad_norm_cuda(double *norm, const float *grads, size_t n, double *partials,
                                      cudaStream_t stream) {
    size_t blocks = (n + 255) / 256;
    if (blocks > GLOBAL_GRAD_NORM_CUDA_PARTIALS) blocks = GLOBAL_GRAD_NORM_CUDA_PARTIALS;
    if (blocks == 0) blocks = 1;   /* n = 0: one block writes a zero partial */
    grad_norm_partials_kernel<<<(unsigned)blocks, 256, 0, stream>>>(partials, grads, n, aligned16(0, grads));
    CUDA_CHECK_LAUNCH();
    grad_norm_finish_kernel<<<1, 1024, 0, stream>>>(norm, partials, (int)blocks);
    CUDA_CHECK_LAUNCH();
}
