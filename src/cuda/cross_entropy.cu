/* cross_entropy.cu — softmax cross-entropy over a vocabulary fused with its gradient, on
 * the GPU. Per row n with target y ≠ −100 (ignored rows contribute nothing):
 *   lse_n   = m + log Σ_v exp(logits[n,v] − m),   m = max_v logits[n,v]
 *   loss_n  = lse_n − logits[n,y]
 *   dlogits[n,v] = grad_scale · (exp(logits[n,v] − lse_n) − [v == y])
 * Returns Σ_n loss_n, as the CPU op does (the caller divides by the number of valid
 * targets, possibly over several micro-batches).
 *
 * Two kernels, no atomics, so the sum is the same on every run:
 *  1. one block per row: each thread walks its strided share of the row keeping an online
 *     (max, Σexp, argmax) triple, the triples merge across the block, then the block
 *     writes the gradient row and the row's loss (double) and status into scratch;
 *  2. one block adds the per-row losses and counts in a fixed order into a totals record,
 *     which comes back to the host (the one synchronisation, unavoidable for a returned
 *     number). A target outside [0, V) aborts naming the row, as the CPU op's check does.
 * Ties for the argmax go to the lowest index, matching the CPU's first-max rule. */
#include "cuda_check.h"
#include "ops_cuda.h"
#include "reduce.cuh"
#include <cuda_bf16.h>

#define IGNORE_INDEX (-100)
#define CE_THREADS 256

enum { ROW_VALID = 1, ROW_CORRECT = 2, ROW_BAD_TARGET = 4 };

typedef struct CrossEntropyTotals {
    double loss_sum;
    int n_valid, n_correct, n_bad, first_bad_row;
} CrossEntropyTotals;

/* scratch: [totals, padded to 64 bytes][row_loss: N doubles][row_status: N ints] */
#define TOTALS_BYTES 64
extern "C" size_t cross_entropy_cuda_scratch_bytes(int N) {
    return TOTALS_BYTES + (size_t)N * (sizeof(double) + sizeof(int));
}

/* A running softmax summary of a set of logits: its max m, Σ exp(x − m), and where the
 * (first) max sits. m = −inf marks the empty set. */
struct SoftmaxSummary {
    float m, sum;
    int argmax;
};

__device__ SoftmaxSummary merge_summaries(SoftmaxSummary a, SoftmaxSummary b) {
    if (b.m == -INFINITY) return a;
    if (a.m == -INFINITY) return b;
    SoftmaxSummary r;
    r.m = fmaxf(a.m, b.m);
    r.sum = a.sum * expf(a.m - r.m) + b.sum * expf(b.m - r.m);
    r.argmax = a.m > b.m ? a.argmax : b.m > a.m ? b.argmax : min(a.argmax, b.argmax);
    return r;
}

/* DL float, or __nv_bfloat16 where dlogits is the LM head's bf16 output gradient
 * (ops_cuda.h: the value computed in float32, then rounded as the matmul's conversion does) */
__device__ __forceinline__ void put_dlogit(float *p, float v) { *p = v; }
__device__ __forceinline__ void put_dlogit(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

template <typename DL>
__global__ void cross_entropy_row_kernel(DL *dlogits, double *row_loss, int *row_status,
                                         const float *logits, const int *targets, int V,
                                         float grad_scale) {
    __shared__ SoftmaxSummary warp_summary[CE_THREADS / 32];
    __shared__ SoftmaxSummary row_summary;
    const size_t n = blockIdx.x;
    const float *row = logits + n * V;
    DL *drow = dlogits ? dlogits + n * V : NULL;
    const int y = targets[n];
    if (y == IGNORE_INDEX || y < 0 || y >= V) {
        if (drow) for (int v = threadIdx.x; v < V; v += blockDim.x) put_dlogit(drow + v, 0.0f);
        if (threadIdx.x == 0) {
            row_loss[n] = 0.0;
            row_status[n] = y == IGNORE_INDEX ? 0 : ROW_BAD_TARGET;
        }
        return;
    }
    SoftmaxSummary s = {-INFINITY, 0.0f, 0};
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float x = row[v];
        if (x > s.m) {
            s.sum = (s.m == -INFINITY ? 0.0f : s.sum * expf(s.m - x)) + 1.0f;
            s.m = x;
            s.argmax = v;
        } else {
            s.sum += expf(x - s.m);
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        SoftmaxSummary other;
        other.m = __shfl_xor_sync(0xffffffffu, s.m, offset);
        other.sum = __shfl_xor_sync(0xffffffffu, s.sum, offset);
        other.argmax = __shfl_xor_sync(0xffffffffu, s.argmax, offset);
        s = merge_summaries(s, other);
    }
    if (threadIdx.x % 32 == 0) warp_summary[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)blockDim.x / 32; w++) s = merge_summaries(s, warp_summary[w]);
        row_summary = s;
    }
    __syncthreads();
    s = row_summary;
    const float lse = s.m + logf(s.sum);
    if (drow) {
        for (int v = threadIdx.x; v < V; v += blockDim.x)
            put_dlogit(drow + v, grad_scale * expf(row[v] - lse) - (v == y ? grad_scale : 0.0f));
    }
    if (threadIdx.x == 0) {
        row_loss[n] = (double)lse - (double)row[y];
        row_status[n] = ROW_VALID | (s.argmax == y ? ROW_CORRECT : 0);
    }
}

__global__ void cross_entropy_totals_kernel(CrossEntropyTotals *totals, const double *row_loss,
                                            const int *row_status, int N) {
    __shared__ double shared_double[32];
    __shared__ int shared_int[32];
    __shared__ int first_bad;
    if (threadIdx.x == 0) first_bad = N;
    __syncthreads();
    double loss = 0.0;
    int valid = 0, correct = 0, bad = 0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        const int status = row_status[n];
        loss += row_loss[n];
        valid += (status & ROW_VALID) != 0;
        correct += (status & ROW_CORRECT) != 0;
        if (status & ROW_BAD_TARGET) {
            bad += 1;
            atomicMin(&first_bad, n);   /* only picks which row the error names */
        }
    }
    loss = block_sum(loss, shared_double);
    valid = block_sum(valid, shared_int);
    correct = block_sum(correct, shared_int);
    bad = block_sum(bad, shared_int);
    if (threadIdx.x == 0) {
        totals->loss_sum = loss;
        totals->n_valid = valid;
        totals->n_correct = correct;
        totals->n_bad = bad;
        totals->first_bad_row = first_bad;
    }
}

template <typename DL>
static double cross_entropy_rows(DL *dlogits, const float *logits, const int *targets, int N, int V,
                                 float grad_scale, int *n_valid, int *n_correct, void *scratch,
                                 cudaStream_t stream) {
    CrossEntropyTotals host = {0.0, 0, 0, 0, 0};
    if (N > 0) {
        char *base = (char *)scratch;
        CrossEntropyTotals *totals = (CrossEntropyTotals *)base;
        double *row_loss = (double *)(base + TOTALS_BYTES);
        int *row_status = (int *)(row_loss + N);
        cross_entropy_row_kernel<DL><<<N, CE_THREADS, 0, stream>>>(dlogits, row_loss, row_status,
                                                                logits, targets, V, grad_scale);
        CUDA_CHECK_LAUNCH();
        cross_entropy_totals_kernel<<<1, 1024, 0, stream>>>(totals, row_loss, row_status, N);
        CUDA_CHECK_LAUNCH();
        CUDA_CHECK(cudaMemcpyAsync(&host, totals, sizeof host, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    if (host.n_bad > 0) {
        int bad_target = 0;
        CUDA_CHECK(cudaMemcpy(&bad_target, targets + host.first_bad_row, sizeof bad_target,
                              cudaMemcpyDeviceToHost));
        fprintf(stderr, "%s:%d: cross_entropy_cuda: target %d at row %d outside [0, %d)\n",
                __FILE__, __LINE__, bad_target, host.first_bad_row, V);
        abort();
    }
    if (n_valid) *n_valid = host.n_valid;
    if (n_correct) *n_correct = host.n_correct;
    return host.loss_sum;
}

extern "C" double cross_entropy_forward_backward_cuda(float *dlogits, const float *logits, const int *targets,
                                                      int N, int V, float grad_scale, int *n_valid,
                                                      int *n_correct, void *scratch, cudaStream_t stream) {
    return cross_entropy_rows(dlogits, logits, targets, N, V, grad_scale, n_valid, n_correct, scratch, stream);
}

extern "C" double cross_entropy_forward_backward_bf16_cuda(uint16_t *dlogits, const float *logits,
                                                           const int *targets, int N, int V, float grad_scale,
                                                           int *n_valid, int *n_correct, void *scratch,
                                                           cudaStream_t stream) {
    return cross_entropy_rows((__nv_bfloat16 *)dlogits, logits, targets, N, V, grad_scale, n_valid, n_correct,
                              scratch, stream);
}
