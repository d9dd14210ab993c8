/* matmul.cu — linear layers through cuBLAS: float32 by default, TF32 tensor-core math on
 * request (matmul_set_precision_cuda).
 *
 * out[N,OC] = inp[N,C] · W[OC,C]ᵀ + b          (W stored PyTorch-style, out × in)
 * dinp     += dout · W                          [N,OC]·[OC,C]
 * dW       += doutᵀ · inp                       [OC,N]·[N,C]
 * db       += Σ_n dout[n,:]
 * cuBLAS is column-major: a row-major X[r,c] is the column-major Xᵀ with leading dimension
 * c, so each product is issued transposed (outᵀ = W · inpᵀ, and so on; see each call).
 * Every product is cublasGemmEx on float32 matrices; only its compute type changes with the
 * precision. fp32 (the default, CUBLAS_COMPUTE_32F) is full float32 on the CUDA cores and
 * agrees with the CPU op to rounding. tf32 (CUBLAS_COMPUTE_32F_FAST_TF32) lets cuBLAS round
 * the inputs to 10 mantissa bits for the tensor cores, accumulating in float32: storage,
 * master weights, AdamW and every non-matmul op stay float32 (PyTorch's allow_tf32).
 * A bf16 mode through CUBLAS_COMPUTE_32F_FAST_16BF was tried and dropped: on an H100 with
 * CUDA 13 it gave bit-for-bit the TF32 results and times (float32 inputs), so it was not
 * bf16; real bf16 needs bf16 operands (converted activations), which is still to do. The bias is a
 * separate tiny kernel; dbias is a column sum, one thread per output column with the rows
 * split over blockDim.y (fixed order, so it is deterministic). */
#include "cuda_check.h"
#include "ops_cuda.h"

#include <string.h>

static cublasHandle_t cublas_handle = NULL;
static cublasComputeType_t compute_type = CUBLAS_COMPUTE_32F;

extern "C" int matmul_set_precision_cuda(const char *precision) {
    if (!strcmp(precision, "fp32")) compute_type = CUBLAS_COMPUTE_32F;
    else if (!strcmp(precision, "tf32")) compute_type = CUBLAS_COMPUTE_32F_FAST_TF32;
    else return -1;
    return 0;
}

/* C[m,n] = alpha·op(A)·op(B) + beta·C, column-major float32 matrices, at the precision set. */
static void gemm(cublasHandle_t handle, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n,
                 int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                 const float *beta, float *C, int ldc) {
    CUBLAS_CHECK(cublasGemmEx(handle, op_a, op_b, m, n, k, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb,
                              beta, C, CUDA_R_32F, ldc, compute_type, CUBLAS_GEMM_DEFAULT));
}

extern "C" void ops_cuda_init(void) {
    if (cublas_handle) return;
    CUBLAS_CHECK(cublasCreate(&cublas_handle));
    CUBLAS_CHECK(cublasSetMathMode(cublas_handle, CUBLAS_DEFAULT_MATH));
}

extern "C" void ops_cuda_shutdown(void) {
    if (!cublas_handle) return;
    CUBLAS_CHECK(cublasDestroy(cublas_handle));
    cublas_handle = NULL;
}

static cublasHandle_t matmul_handle(cudaStream_t stream) {
    if (!cublas_handle) {
        fprintf(stderr, "%s:%d: matmul_*_cuda called before ops_cuda_init()\n", __FILE__, __LINE__);
        abort();
    }
    CUBLAS_CHECK(cublasSetStream(cublas_handle, stream));
    return cublas_handle;
}

/* out[n,o] += bias[o] */
__global__ void add_bias_kernel(float *out, const float *bias, int N, int OC) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)N * OC) out[i] += bias[i % OC];
}

/* dbias[o] += Σ_n dout[n,o]. Block (32, 8): threadIdx.x picks the column (coalesced rows
 * of 32 floats), threadIdx.y strides over rows; the 8 partial sums meet in shared memory. */
__global__ void column_sum_accumulate_kernel(float *dbias, const float *dout, int N, int OC) {
    __shared__ float partial[8][33];
    const int o = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (o < OC)
        for (int n = threadIdx.y; n < N; n += 8) sum += dout[(size_t)n * OC + o];
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && o < OC) {
        for (int r = 1; r < 8; r++) sum += partial[r][threadIdx.x];
        dbias[o] += sum;
    }
}

extern "C" void matmul_forward_cuda(float *out, const float *inp, const float *weight,
                                    const float *bias, int N, int C, int OC, int accumulate,
                                    cudaStream_t stream) {
    cublasHandle_t handle = matmul_handle(stream);
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    /* outᵀ[OC,N] = (Wᵀ as stored: C×OC, ld C)ᵀ · (inpᵀ: C×N, ld C) */
    gemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, weight, C, inp, C, &beta, out, OC);
    if (bias) {
        const size_t n = (size_t)N * OC;
        add_bias_kernel<<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(out, bias, N, OC);
        CUDA_CHECK_LAUNCH();
    }
}

extern "C" void matmul_backward_cuda(float *dinp, float *dweight, float *dbias, const float *dout,
                                     const float *inp, const float *weight, int N, int C, int OC,
                                     cudaStream_t stream) {
    cublasHandle_t handle = matmul_handle(stream);
    const float one = 1.0f;
    if (dinp) /* dinpᵀ[C,N] += (Wᵀ: C×OC, ld C) · (doutᵀ: OC×N, ld OC) */
        gemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, weight, C, dout, OC, &one, dinp, C);
    if (dweight) /* dWᵀ[C,OC] += (inpᵀ: C×N, ld C) · (doutᵀ: OC×N, ld OC)ᵀ */
        gemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp, C, dout, OC, &one, dweight, C);
    if (dbias) {
        column_sum_accumulate_kernel<<<(OC + 31) / 32, dim3(32, 8), 0, stream>>>(dbias, dout, N, OC);
        CUDA_CHECK_LAUNCH();
    }
}
