/* cuda_harness.h — one LayerKind's CUDA path (forward_cuda/backward_cuda) against its CPU
 * path on the same random parameters, input and output gradient.
 *
 * The CPU side is a LayerHarness (layer_harness.h: params initialised by their rules,
 * then perturbed, so no norm weight is exactly 1 and no D exactly 0). The CUDA side is a
 * second Layer of the same kind built with device = DEVICE_CUDA (its init, size queries
 * and scratch are the device's own), given a copy of the same parameters. Then:
 *  - y is poisoned (0xFF bytes: NaN) on the device before forward_cuda, so an element the
 *    kernel forgets to write fails;
 *  - dx and every gradient start from the same random values on both sides, and the
 *    INCREMENTS are compared, so a backward that overwrites instead of adding fails;
 *  - errors are |cuda − cpu| / max|cpu| per tensor (y, dx, each parameter's gradient),
 *    against fwd_tol for y and bwd_tol for the gradients; aux_loss and stats (MoE load)
 *    are compared too. Every tensor's error is printed, the worst first on failure.
 *
 * Below that, the op-level helpers the kernel tests share (test_cuda_ops, test_cuda_scan,
 * test_cuda_gla): random host tensors, device copies, NaN-poisoned outputs, and the
 * element-wise check with its printed observed error. */
#ifndef BRAID_CUDA_HARNESS_H
#define BRAID_CUDA_HARNESS_H
#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"
#include "layers/layer.h"
#include "models/config.h"

/* Returns 1 when every tensor agrees within tolerance; prints a line per tensor. */
int cuda_layer_check(const LayerKind *kind, const Config *cfg, int B, int T, unsigned long seed,
                     double fwd_tol, double bwd_tol, const char *what);

struct LayerHarness;
/* As cuda_layer_check, but prepare(h, arg) runs first on the CPU side's harness, after its
 * parameters and x are drawn and before anything is run or copied to the device, so a
 * test can shape them (MoE: scale the router for clear top-k margins, silence an expert);
 * both sides then start from what prepare left. prepare may be NULL. */
int cuda_layer_check_prepared(const LayerKind *kind, const Config *cfg, int B, int T,
                              unsigned long seed, double fwd_tol, double bwd_tol, const char *what,
                              void (*prepare)(struct LayerHarness *h, void *arg), void *arg);

/* max |a − b| / max |b| over n (the increments a − a0 and b − b0 when a0, b0 are given,
 * else NULL); a NaN anywhere in a gives infinity. */
double cuda_rel_err(const float *a, const float *b, const float *a0, const float *b0, size_t n);

/* For a test's main(): 1 when a CUDA device is present (else prints that `test` skipped). */
int cuda_harness_have_gpu(const char *test);

/* A whole CUDA test's main(): 77 (CTest's "skipped") without a GPU; else creates the
 * cuBLAS handle, runs the suite in-process (CK_NOFORK: a CUDA context does not survive
 * fork()), destroys the handle, and returns EXIT_SUCCESS or EXIT_FAILURE. */
struct Suite;
int cuda_test_main(const char *test, struct Suite *(*make_suite)(void));

/* ---- op-level helpers: one CUDA kernel against its CPU kernel on the same data.
 * Host buffers come from braid_malloc and are released with free(); device buffers come
 * from cudaMalloc and are released with cudaFree. The random ones draw from the test's own
 * Rng, so each test decides its seed and the data it draws stays the same run to run. */

/* n floats, normal with standard deviation `scale`, drawn from rng. */
float *cuda_test_host_normal(Rng *rng, size_t n, float scale);

/* The same, every value at least 1e-3 from 0 (moved out, keeping its sign): inputs where a
 * zero would zero an output whatever the kernel computed (a gradient times a zero dout). */
float *cuda_test_host_normal_nonzero(Rng *rng, size_t n, float scale);

/* n floats, uniform in [lo, hi), drawn from rng. */
float *cuda_test_host_uniform(Rng *rng, size_t n, float lo, float hi);

/* A new host copy of n floats (the start values of a gradient, kept to compare against). */
float *cuda_test_host_copy(const float *x, size_t n);

/* `bytes` uncleared bytes on the device (at least 1, so a zero-size shape still gets a
 * pointer to free). BYTES, not floats: the ops tests also allocate ints, doubles and
 * opaque scratch. */
void *cuda_test_device_alloc(size_t bytes);

/* A device copy of n host floats. */
float *cuda_test_device_copy(const float *x, size_t n);

/* n device floats, every one NaN (bytes 0xFF): what a kernel WRITES starts from this, so
 * an element it never wrote reads back as NaN and fails cuda_test_check_close. */
float *cuda_test_device_poisoned(size_t n);

/* The bits of x rounded to the nearest bfloat16, ties to even (x finite): what
 * __float2bfloat16_rn and the kernels' bf16 stores give. */
uint16_t cuda_test_bf16_bits(float x);

/* `bytes` bytes on the device, every one 0xFF (as bf16 or float32: NaN) */
void *cuda_test_device_poisoned_bytes(size_t bytes);
/* Whether two device byte ranges hold the same bits (pass whole allocations, so a write past
 * the values, into the poison around them, counts too); prints one line, fails the test at
 * the first differing byte (a fused kernel against the separate kernels it replaces, a strided
 * output against the flat one placed in its rows). */
void cuda_test_check_same_bits(const char *op, const char *shape, const void *d_got, const void *d_want,
                               size_t bytes);
/* rows × cols elements of `size` bytes from the flat device array src into the device array
 * dst, whose rows lie ld elements apart (dst[r·ld + c]), waiting for the copy; the rest of dst
 * is left as it is: a flat output placed where a strided call should have written it. */
void cuda_test_copy_rows_strided(void *dst, size_t ld, const void *src, size_t rows, size_t cols, size_t size);

/* Waits for the whole device, then copies n floats back into a new host buffer. The whole
 * device rather than one stream: some tests queue on their own stream, some on the default
 * one, and all that matters here is that every queued kernel has finished. */
float *cuda_test_host_from_device(const float *d, size_t n);

/* What cuda_test_compare found; a test that asserts more than closeness (the
 * reduced-precision matmul checks that rounding DID happen) reads the fields. */
typedef struct CudaComparison {
    size_t n_nan, first_nan;     /* elements of `got` that are NaN (never written) */
    size_t worst;                /* index of the largest |got − want| among the others */
    double worst_diff, max_want;
} CudaComparison;

/* got against want over n floats: NaNs in got are counted (not diffed), max_want is
 * max |want|, worst_diff the largest |got − want| in double precision. */
CudaComparison cuda_test_compare(const float *got, const float *want, size_t n);

/* Asserts (ck_assert_msg: call it from inside a Check test) that every element was
 * written (no NaN in got) and the worst |got − want| ≤ tol · max|want|. Always prints one
 * line with the observed worst |diff| / max|want| next to tol, so the log shows how much
 * room each tolerance leaves (tools/gpu_test.sh and gpu_scan_test.sh read `op` from its
 * first 40 columns); a failure names op, shape, the worst element, both values and the
 * difference. */
void cuda_test_check_close(const char *op, const char *shape, const float *got, const float *want,
                           size_t n, double tol);

/* cuda_test_host_from_device, then cuda_test_check_close against the CPU's want. */
void cuda_test_check_device_close(const char *op, const char *shape, const float *device,
                                  const float *want, size_t n, double tol);

#endif
