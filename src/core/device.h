/* device.h — where a model's tensors live, and the few host-side moves between places.
 *
 * The CPU backend keeps everything in host memory. The CUDA backend (src/cuda/, built
 * when nvcc is found) keeps parameters, gradients, moments, the activation arena and the
 * scratch in device memory, and host code touches them only through these calls; the
 * layers' CUDA paths (LayerKind.forward_cuda/backward_cuda) queue their work on the
 * default stream, so a copy back to the host sees everything queued before it.
 * In a build without CUDA, asking for DEVICE_CUDA is an internal error (the config layer
 * rejects train.device: cuda there with a clear message first). */
#ifndef BRAID_DEVICE_H
#define BRAID_DEVICE_H
#include <stddef.h>
#include "../layers/layer.h"

/* NULL when CUDA can be used here; else why not, as a phrase for an error message ("no
 * CUDA device is present ..." or "this build has no CUDA backend ..."), with the way out. */
const char *device_cuda_unavailable(void);
/* 1 when this build has the CUDA backend and a CUDA device is present. */
int device_cuda_available(void);
/* Name of the CUDA device (or "none") for progress lines and benchmarks. */
const char *device_cuda_name(void);
/* The GPU's peak float32 FLOP/s without tensor cores (SMs × clock × 128 FMA lanes × 2),
 * the ceiling of braid's float32 kernels and cuBLAS with TF32 off; 0 without a GPU.
 * Model FLOP utilisation is reported against it. */
double device_cuda_peak_fp32_flops(void);
/* The dense tensor-core rate of train.matmul_precision per clock, as a multiple of float32
 * on the CUDA cores, on sm_80/sm_90: fp32 1, tf32 8, bf16 16 (H100 SXM at its rated clocks:
 * 67, 495, 989 TFLOP/s). Model FLOP utilisation is reported against peak × this, since the
 * matmuls are most of the FLOPs. 1 for an unknown name. */
double matmul_precision_peak_factor(const char *precision);
/* "" for fp32, else " of TF32 peak" / " of bf16 peak": what an MFU figure is relative to. */
const char *matmul_precision_peak_label(const char *precision);
/* Zero-filled memory of `bytes` on `dev`; dies naming `what` when out of memory. */
void *device_alloc(DeviceKind dev, size_t bytes, const char *what);
void device_free(DeviceKind dev, void *p);
void device_zero(DeviceKind dev, void *p, size_t bytes);
/* dst (on dev) ← src (host), and dst (host) ← src (on dev). Synchronous. */
void device_upload(DeviceKind dev, void *dst, const void *src, size_t bytes);
void device_download(DeviceKind dev, void *dst, const void *src, size_t bytes);
/* dst ← src, both on dev (queued, not waited for). */
void device_copy(DeviceKind dev, void *dst, const void *src, size_t bytes);
/* Waits for all queued device work. */
void device_synchronize(DeviceKind dev);

#endif
