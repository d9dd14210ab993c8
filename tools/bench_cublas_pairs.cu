// bench_cublas_pairs.cu — two cuBLAS products that share an input (the SwiGLU gate and up
// projections, Mamba's in_proj halves) as two calls, one strided-batched call, or one product
// of twice the width; bf16 operands, float32 output, at jamba-small's shapes. Not part of the
// build: the measurement behind docs/performance.md, "One backward product for the gate and
// up projections". On the GPU machine:
//   nvcc -O2 -arch=sm_90 -std=c++17 tools/bench_cublas_pairs.cu -lcublas -o /tmp/pairs && /tmp/pairs
// Prints the median of 30 timed repetitions (after 5) per variant, in ms.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <functional>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("cuda %s line %d\n", cudaGetErrorString(e), __LINE__); exit(1);} } while (0)
#define CB(x) do { cublasStatus_t st_ = (x); if (st_ != CUBLAS_STATUS_SUCCESS) { printf("cublas %d line %d\n", (int)st_, __LINE__); exit(1);} } while (0)
cublasHandle_t h; cudaStream_t s;
const float one = 1.f, zero = 0.f;
void g(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, int lda, const void *B, int ldb, float beta, float *C, int ldc) {
  CB(cublasGemmEx(h, ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, beta ? &one : &zero, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
void gb(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, int lda, long long sA, const void *B, int ldb, long long sB, float beta, float *C, int ldc, long long sC) {
  CB(cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda, sA, B, CUDA_R_16BF, ldb, sB, beta ? &one : &zero, C, CUDA_R_32F, ldc, sC, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
float timeit(std::function<void()> f) {
  cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  for (int i = 0; i < 5; i++) f();
  std::vector<float> t;
  for (int r = 0; r < 30; r++) { CK(cudaEventRecord(a, s)); f(); CK(cudaEventRecord(b, s)); CK(cudaEventSynchronize(b)); float ms; CK(cudaEventElapsedTime(&ms, a, b)); t.push_back(ms); }
  std::sort(t.begin(), t.end()); return t[t.size() / 2];
}
int main() {
  const int N = 16384, d = 768;
  __nv_bfloat16 *x, *w, *gr; float *out, *dw;
  size_t big = (size_t)N * 4096;
  CK(cudaMalloc(&x, (size_t)N * d * 2)); CK(cudaMalloc(&w, 4096 * d * 2)); CK(cudaMalloc(&gr, big * 2));
  CK(cudaMalloc(&out, big * 4)); CK(cudaMalloc(&dw, 4096 * d * 4));
  CK(cudaMemset(x, 0x3c, (size_t)N * d * 2)); CK(cudaMemset(w, 0x3c, 4096 * d * 2)); CK(cudaMemset(gr, 0x3c, big * 2));
  CK(cudaStreamCreate(&s)); CB(cublasCreate(&h)); CB(cublasSetStream(h, s));
  printf("%-34s %9s %9s %9s\n", "pair (weights [2O, d])", "2 calls", "batched2", "one wide");
  for (int O : {1536, 2048}) {
    // forward: out_i^T[O,N] = W_i (T) x ;  W_i = w + i*O*d
    float a = timeit([&] { g(CUBLAS_OP_T, CUBLAS_OP_N, O, N, d, w, d, x, d, 0, out, O); g(CUBLAS_OP_T, CUBLAS_OP_N, O, N, d, w + (size_t)O * d, d, x, d, 0, out + (size_t)N * O, O); });
    float b = timeit([&] { gb(CUBLAS_OP_T, CUBLAS_OP_N, O, N, d, w, d, (long long)O * d, x, d, 0, 0, out, O, (long long)N * O); });
    float c = timeit([&] { g(CUBLAS_OP_T, CUBLAS_OP_N, 2 * O, N, d, w, d, x, d, 0, out, 2 * O); });
    printf("fwd O=%-28d %9.4f %9.4f %9.4f\n", O, a, b, c);
    // dinp: dx^T[d,N] (+)= W_i^T-as-stored (N) dY_i ; dY_i = gr + i*N*O (separate) ; wide: K=2O, dY interleaved ld 2O
    a = timeit([&] { g(CUBLAS_OP_N, CUBLAS_OP_N, d, N, O, w, d, gr, O, 0, out, d); g(CUBLAS_OP_N, CUBLAS_OP_N, d, N, O, w + (size_t)O * d, d, gr + (size_t)N * O, O, 1, out, d); });
    c = timeit([&] { g(CUBLAS_OP_N, CUBLAS_OP_N, d, N, 2 * O, w, d, gr, 2 * O, 0, out, d); });
    printf("dinp O=%-27d %9.4f %9s %9.4f\n", O, a, "-", c);
    // dweight: dW_i^T[d,O] += x^T (N) dY_i^T (T)
    a = timeit([&] { g(CUBLAS_OP_N, CUBLAS_OP_T, d, O, N, x, d, gr, O, 1, dw, d); g(CUBLAS_OP_N, CUBLAS_OP_T, d, O, N, x, d, gr + (size_t)N * O, O, 1, dw + (size_t)O * d, d); });
    b = timeit([&] { gb(CUBLAS_OP_N, CUBLAS_OP_T, d, O, N, x, d, 0, gr, O, (long long)N * O, 1, dw, d, (long long)O * d); });
    c = timeit([&] { g(CUBLAS_OP_N, CUBLAS_OP_T, d, 2 * O, N, x, d, gr, 2 * O, 1, dw, d); });
    printf("dweight O=%-24d %9.4f %9.4f %9.4f\n", O, a, b, c);
  }
  // MoE expert pair (rows 4096, O=1024)
  {
    const int R = 4096, O = 1024;
    float a = timeit([&] { g(CUBLAS_OP_T, CUBLAS_OP_N, O, R, d, w, d, x, d, 0, out, O); g(CUBLAS_OP_T, CUBLAS_OP_N, O, R, d, w + (size_t)O * d, d, x, d, 0, out + (size_t)R * O, O); });
    float b = timeit([&] { gb(CUBLAS_OP_T, CUBLAS_OP_N, O, R, d, w, d, (long long)O * d, x, d, 0, 0, out, O, (long long)R * O); });
    float c = timeit([&] { g(CUBLAS_OP_T, CUBLAS_OP_N, 2 * O, R, d, w, d, x, d, 0, out, 2 * O); });
    printf("moe fwd rows 4096 O=1024            %9.4f %9.4f %9.4f\n", a, b, c);
    a = timeit([&] { g(CUBLAS_OP_N, CUBLAS_OP_N, d, R, O, w, d, gr, O, 0, out, d); g(CUBLAS_OP_N, CUBLAS_OP_N, d, R, O, w + (size_t)O * d, d, gr + (size_t)R * O, O, 1, out, d); });
    c = timeit([&] { g(CUBLAS_OP_N, CUBLAS_OP_N, d, R, 2 * O, w, d, gr, 2 * O, 0, out, d); });
    printf("moe dinp rows 4096 O=1024           %9.4f %9s %9.4f\n", a, "-", c);
    a = timeit([&] { g(CUBLAS_OP_N, CUBLAS_OP_T, d, O, R, x, d, gr, O, 1, dw, d); g(CUBLAS_OP_N, CUBLAS_OP_T, d, O, R, x, d, gr + (size_t)R * O, O, 1, dw + (size_t)O * d, d); });
    b = timeit([&] { gb(CUBLAS_OP_N, CUBLAS_OP_T, d, O, R, x, d, 0, gr, O, (long long)R * O, 1, dw, d, (long long)O * d); });
    c = timeit([&] { g(CUBLAS_OP_N, CUBLAS_OP_T, d, 2 * O, R, x, d, gr, 2 * O, 1, dw, d); });
    printf("moe dweight rows 4096 O=1024        %9.4f %9.4f %9.4f\n", a, b, c);
  }
  return 0;
}
