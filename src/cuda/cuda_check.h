/* cuda_check.h — every CUDA runtime and cuBLAS call is checked; a failure is an internal
 * or system error (see common.h), so it aborts on the spot naming the file, the line, the
 * call and the library's own error string, as llm.c's cudaCheck does.
 * Kernel launches return nothing: follow each with CUDA_CHECK_LAUNCH(), which reads the
 * launch error (bad configuration, too much shared memory) without synchronising. */
#ifndef BRAID_CUDA_CHECK_H
#define BRAID_CUDA_CHECK_H
#include <stdio.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>
#include <cublas_v2.h>

#define CUDA_CHECK(call)                                                                   \
    do {                                                                                   \
        cudaError_t cuda_check_err_ = (call);                                              \
        if (cuda_check_err_ != cudaSuccess) {                                              \
            fprintf(stderr, "%s:%d: CUDA error in %s: %s\n", __FILE__, __LINE__, #call,    \
                    cudaGetErrorString(cuda_check_err_));                                  \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#define CUBLAS_CHECK(call)                                                                 \
    do {                                                                                   \
        cublasStatus_t cublas_check_status_ = (call);                                      \
        if (cublas_check_status_ != CUBLAS_STATUS_SUCCESS) {                               \
            fprintf(stderr, "%s:%d: cuBLAS error in %s: %s\n", __FILE__, __LINE__, #call,  \
                    cublasGetStatusString(cublas_check_status_));                          \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

/* A file-static device scratch buffer that only grows: *buffer holds at least `bytes` on
 * return. Calls on one stream use it in turn; before a regrow cudaFree waits for the
 * device, so no queued kernel still reads the old one. Not thread-safe. */
static inline void *grow_device_buffer(void **buffer, size_t *capacity, size_t bytes) {
    if (bytes > *capacity) {
        if (*buffer) CUDA_CHECK(cudaFree(*buffer));
        CUDA_CHECK(cudaMalloc(buffer, bytes));
        *capacity = bytes;
    }
    return *buffer;
}

/* The current device's SM count (launch policies size their grids by it). */
static inline int cuda_sm_count(void) {
    int device = 0, sms = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
}

#endif
