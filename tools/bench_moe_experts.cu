// bench_moe_experts.cu — the eight MoE experts' products (rows of one jamba-small step's
// routing, d 768, H 1024; bf16 operands, float32 output) one after another on one stream, on
// 2, 4 or 8 streams, through cublasGemmGroupedBatchedEx (printed as 1e9 where cuBLAS does not
// support the types), and as one product of all the rows (the bound). Not part of the build:
// a measurement behind docs/performance.md, "One backward product for the gate and up
// projections". On the GPU machine:
//   nvcc -O2 -arch=sm_90 -std=c++17 tools/bench_moe_experts.cu -lcublas -o /tmp/moe && /tmp/moe
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("cuda %s line %d\n", cudaGetErrorString(e), __LINE__); exit(1);} } while (0)
#define CB(x) do { cublasStatus_t s = (x); if (s != CUBLAS_STATUS_SUCCESS) { printf("cublas %d line %d\n", (int)s, __LINE__); exit(1);} } while (0)
const int E = 8, d = 768, H = 1024;
int counts[E] = {3648, 4544, 4800, 3968, 4416, 3584, 3200, 4608};
struct Prob { cublasOperation_t ta, tb; int m, n, k, lda, ldb, ldc; float beta; const void *A, *B; float *C; };
std::vector<Prob> probs(int kind, __nv_bfloat16 *x, __nv_bfloat16 *w, __nv_bfloat16 *g, float *out, float *dw) {
  std::vector<Prob> p; size_t o = 0;
  for (int e = 0; e < E; e++) {
    int c = counts[e];
    const __nv_bfloat16 *W = w + (size_t)e * d * H;
    if (kind == 0) p.push_back({CUBLAS_OP_T, CUBLAS_OP_N, H, c, d, d, d, H, 0.f, W, x + o * d, out + o * H});
    if (kind == 1) p.push_back({CUBLAS_OP_N, CUBLAS_OP_N, d, c, H, d, H, d, 0.f, W, g + o * H, out + o * d});
    if (kind == 2) p.push_back({CUBLAS_OP_N, CUBLAS_OP_T, d, H, c, d, H, d, 1.f, x + o * d, g + o * H, dw + (size_t)e * d * H});
    o += c;
  }
  return p;
}
int main() {
  size_t rows = 0; for (int e = 0; e < E; e++) rows += counts[e];
  __nv_bfloat16 *x, *w, *g; float *out, *dw;
  CK(cudaMalloc(&x, rows * d * 2)); CK(cudaMalloc(&g, rows * H * 2)); CK(cudaMalloc(&w, (size_t)E * d * H * 2));
  CK(cudaMalloc(&out, rows * H * 4)); CK(cudaMalloc(&dw, (size_t)E * d * H * 4));
  CK(cudaMemset(x, 0x3c, rows * d * 2)); CK(cudaMemset(g, 0x3c, rows * H * 2)); CK(cudaMemset(w, 0x3c, (size_t)E*d*H*2));
  const int NS = 8; cudaStream_t st[NS]; cublasHandle_t hd[NS]; void *ws[NS];
  for (int i = 0; i < NS; i++) { CK(cudaStreamCreateWithFlags(&st[i], cudaStreamNonBlocking)); CB(cublasCreate(&hd[i]));
    CB(cublasSetStream(hd[i], st[i])); CK(cudaMalloc(&ws[i], 32 << 20)); CB(cublasSetWorkspace(hd[i], ws[i], 32 << 20)); }
  cudaStream_t main_s; CK(cudaStreamCreateWithFlags(&main_s, cudaStreamNonBlocking));
  cublasHandle_t mh; CB(cublasCreate(&mh)); CB(cublasSetStream(mh, main_s));
  void *mws; CK(cudaMalloc(&mws, 32 << 20)); CB(cublasSetWorkspace(mh, mws, 32 << 20));
  cudaEvent_t fork, join[NS], t0, t1; CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  for (int i = 0; i < NS; i++) CK(cudaEventCreateWithFlags(&join[i], cudaEventDisableTiming));
  CK(cudaEventCreate(&t0)); CK(cudaEventCreate(&t1));
  const float one = 1.f, zero = 0.f;
  auto gemm = [&](cublasHandle_t h, const Prob &p) {
    CB(cublasGemmEx(h, p.ta, p.tb, p.m, p.n, p.k, &one, p.A, CUDA_R_16BF, p.lda, p.B, CUDA_R_16BF, p.ldb,
                    p.beta ? &one : &zero, p.C, CUDA_R_32F, p.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  // grouped: device pointer arrays
  const void **dA, **dB; void **dC; CK(cudaMalloc(&dA, E * sizeof(void*))); CK(cudaMalloc(&dB, E * sizeof(void*))); CK(cudaMalloc(&dC, E * sizeof(void*)));
  const char *kn[3] = {"fwd gate/up (m1024 k768)", "dinp gate/up (m768 k1024)", "dweight (m768 n1024 k=rows)"};
  printf("%-30s %9s %9s %9s %9s %9s %9s %9s\n", "product x8 experts", "seq", "2 str", "4 str", "8 str", "grouped", "dense1", "TFLOP");
  for (int kind = 0; kind < 3; kind++) {
    auto P = probs(kind, x, w, g, out, dw);
    double flop = 0; for (auto &p : P) flop += 2.0 * p.m * p.n * p.k;
    std::vector<const void*> hA, hB; std::vector<void*> hC;
    for (auto &p : P) { hA.push_back(p.A); hB.push_back(p.B); hC.push_back(p.C); }
    CK(cudaMemcpy(dA, hA.data(), E * sizeof(void*), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, hB.data(), E * sizeof(void*), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dC, hC.data(), E * sizeof(void*), cudaMemcpyHostToDevice));
    double res[6]; bool grouped_ok = true;
    for (int v = 0; v < 6; v++) {
      auto run = [&]() {
        if (v == 0) for (auto &p : P) gemm(mh, p);
        else if (v <= 3) {
          int ns = v == 1 ? 2 : v == 2 ? 4 : 8;
          CK(cudaEventRecord(fork, main_s));
          for (int i = 0; i < ns; i++) CK(cudaStreamWaitEvent(st[i], fork, 0));
          for (int e = 0; e < E; e++) gemm(hd[e % ns], P[e]);
          for (int i = 0; i < ns; i++) { CK(cudaEventRecord(join[i], st[i])); CK(cudaStreamWaitEvent(main_s, join[i], 0)); }
        } else if (v == 4) {
          std::vector<cublasOperation_t> ta, tb; std::vector<int> m, n, k, lda, ldb, ldc, gs; std::vector<float> al, be;
          for (auto &p : P) { ta.push_back(p.ta); tb.push_back(p.tb); m.push_back(p.m); n.push_back(p.n); k.push_back(p.k);
            lda.push_back(p.lda); ldb.push_back(p.ldb); ldc.push_back(p.ldc); gs.push_back(1); al.push_back(1.f); be.push_back(p.beta); }
          cublasStatus_t gst = (cublasGemmGroupedBatchedEx(mh, ta.data(), tb.data(), m.data(), n.data(), k.data(), al.data(), dA, CUDA_R_16BF, lda.data(),
             dB, CUDA_R_16BF, ldb.data(), be.data(), dC, CUDA_R_32F, ldc.data(), E, gs.data(), CUBLAS_COMPUTE_32F));
          if (gst != CUBLAS_STATUS_SUCCESS) grouped_ok = false;
        } else {
          Prob p = P[0];
          if (kind == 2) p.k = (int)rows; else p.n = (int)rows;
          if (kind == 2) { /* one big dweight: reuse */ }
          gemm(mh, p);
        }
      };
      for (int r = 0; r < 5; r++) run();
      std::vector<float> t;
      for (int r = 0; r < 30; r++) {
        CK(cudaEventRecord(t0, main_s)); run(); CK(cudaEventRecord(t1, main_s)); CK(cudaEventSynchronize(t1));
        float ms; CK(cudaEventElapsedTime(&ms, t0, t1)); t.push_back(ms);
      }
      std::sort(t.begin(), t.end()); res[v] = t[t.size() / 2];
    }
    printf("%-30s", kn[kind]);
    if (!grouped_ok) res[4] = 1e9;
    for (int v = 0; v < 6; v++) printf(" %9.4f", res[v]);
    printf("   %.1f GF; seq %.0f TF/s best %.0f\n", flop / 1e9, flop / res[0] / 1e9, flop / *std::min_element(res, res + 5) / 1e9);
  }
  return 0;
}
