/* adamw.cu — AdamW and the global gradient norm on the GPU, the same math as
 * train/adamw.c:
 *   m ← β₁m + (1−β₁)g;   v ← β₂v + (1−β₂)g²
 *   m̂ = m/(1−β₁ᵗ);       v̂ = v/(1−β₂ᵗ)
 *   θ ← θ − lr·(m̂/(√v̂ + ε) + λθ)      (λ = 0 for tensors declared no_decay)
 *   ‖g‖ = sqrt(Σ g²), squares summed in double
 *
 * Weight decay differs per tensor. The launcher walks the host ParamList and merges
 * neighbouring tensors that share a decay flag into one range, one launch per range: a
 * model declares its norms and biases in a handful of runs, so this is a few launches a
 * step with no per-element mask in device memory. The bias corrections are formed on the
 * host with powf, exactly as the CPU op does.
 *
 * The norm is two passes with no atomics (so the same bits every run): up to
 * GLOBAL_GRAD_NORM_CUDA_PARTIALS blocks each reduce a grid-strided share into one double;
 * one block then adds those partials in a fixed order and takes the square root. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "grid.cuh"
#include "reduce.cuh"

__global__ void adamw_range_kernel(float *params, const float *grads, float *m, float *v, size_t lo,
                                   size_t hi, float lr, float beta1, float beta2, float eps,
                                   float weight_decay, float bias_correction1, float bias_correction2) {
    for (size_t i = lo + (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < hi;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = grads[i];
        const float m_i = beta1 * m[i] + (1.0f - beta1) * g;
        const float v_i = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = m_i;
        v[i] = v_i;
        const float mhat = m_i / bias_correction1, vhat = v_i / bias_correction2;
        params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * params[i]);
    }
}

extern "C" void adamw_update_cuda(float *params, const float *grads, float *m, float *v,
                                  const ParamList *list, const AdamWSettings *s, long step,
                                  cudaStream_t stream) {
    matmul_forget_weights_cuda();   /* its bf16 copy of the weights is stale from here */
    const float bias_correction1 = 1.0f - powf(s->beta1, (float)step);
    const float bias_correction2 = 1.0f - powf(s->beta2, (float)step);
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
            adamw_range_kernel<<<grid_stride_blocks(hi - lo), 256, 0, stream>>>(
                params, grads, m, v, lo, hi, s->lr, s->beta1, s->beta2, s->eps, weight_decay,
                bias_correction1, bias_correction2);
            CUDA_CHECK_LAUNCH();
        }
        t = u;
    }
}

__global__ void grad_norm_partials_kernel(double *partials, const float *grads, size_t n) {
    __shared__ double shared[32];
    double ss = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        ss += (double)grads[i] * grads[i];
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
    grad_norm_partials_kernel<<<(unsigned)blocks, 256, 0, stream>>>(partials, grads, n);
    CUDA_CHECK_LAUNCH();
    grad_norm_finish_kernel<<<1, 1024, 0, stream>>>(norm, partials, (int)blocks);
    CUDA_CHECK_LAUNCH();
}
