/* device.c — see device.h. */
#include "device.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

double matmul_precision_peak_factor(const char *precision) {
    if (!strcmp(precision, "tf32")) return 8.0;
    if (!strcmp(precision, "bf16")) return 16.0;
    return 1.0;
}

const char *matmul_precision_peak_label(const char *precision) {
    if (!strcmp(precision, "tf32")) return " of TF32 peak";
    if (!strcmp(precision, "bf16")) return " of bf16 peak";
    return "";
}

#ifdef BRAID_HAVE_CUDA
#include <cuda_runtime_api.h>
#include "../cuda/cuda_check.h"
#include "../cuda/ops_cuda.h"

const char *device_cuda_unavailable(void) {
    return device_cuda_available() ? NULL
                                   : "no CUDA device is present on this machine (use --device cpu, or "
                                     "--device auto to take a GPU when there is one)";
}

int device_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();   /* a missing driver is an answer here, not an error */
        return 0;
    }
    return n > 0;
}

const char *device_cuda_name(void) {
    static char name[256];
    if (!device_cuda_available()) return "none";
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    snprintf(name, sizeof name, "%s", prop.name);
    return name;
}
double device_cuda_peak_fp32_flops(void) {
    if (!device_cuda_available()) return 0.0;
    int sms = 0, khz = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
    return (double)sms * khz * 1e3 * 128.0 * 2.0;   /* sm_80 and later: 128 FP32 lanes per SM */
}
#else
double device_cuda_peak_fp32_flops(void) { return 0.0; }
const char *device_cuda_unavailable(void) {
    return "this build has no CUDA backend (nvcc was not found when it was configured; install the "
           "CUDA toolkit and rebuild, or use --device cpu)";
}
int device_cuda_available(void) { return 0; }
const char *device_cuda_name(void) { return "none"; }
#endif

void *device_alloc(DeviceKind dev, size_t bytes, const char *what) {
    if (dev == DEVICE_CPU) return braid_calloc(bytes ? bytes : 1, 1, what);
#ifdef BRAID_HAVE_CUDA
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess)
        BRAID_DIE("out of GPU memory allocating %s (%.1f MiB): %s", what, bytes / 1048576.0,
                  cudaGetErrorString(e));
    CUDA_CHECK(cudaMemset(p, 0, bytes ? bytes : 1));
    return p;
#else
    BRAID_DIE("device_alloc(%s): this build has no CUDA backend", what);
#endif
}

void device_free(DeviceKind dev, void *p) {
    if (!p) return;
    if (dev == DEVICE_CPU) { free(p); return; }
#ifdef BRAID_HAVE_CUDA
    CUDA_CHECK(cudaFree(p));
#endif
}

void device_zero(DeviceKind dev, void *p, size_t bytes) {
    if (dev == DEVICE_CPU) { memset(p, 0, bytes); return; }
#ifdef BRAID_HAVE_CUDA
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, 0));
#endif
}

void device_upload(DeviceKind dev, void *dst, const void *src, size_t bytes) {
    if (dev == DEVICE_CPU) { memcpy(dst, src, bytes); return; }
#ifdef BRAID_HAVE_CUDA
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
#endif
}

void device_download(DeviceKind dev, void *dst, const void *src, size_t bytes) {
    if (dev == DEVICE_CPU) { memcpy(dst, src, bytes); return; }
#ifdef BRAID_HAVE_CUDA
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
#endif
}

void device_copy(DeviceKind dev, void *dst, const void *src, size_t bytes) {
    if (dev == DEVICE_CPU) { memmove(dst, src, bytes); return; }
#ifdef BRAID_HAVE_CUDA
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
#endif
}

void device_synchronize(DeviceKind dev) {
    if (dev == DEVICE_CPU) return;
#ifdef BRAID_HAVE_CUDA
    CUDA_CHECK(cudaDeviceSynchronize());
#endif
}
