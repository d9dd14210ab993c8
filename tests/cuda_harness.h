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
 *    are compared too. Every tensor's error is printed, the worst first on failure. */
#ifndef BRAID_CUDA_HARNESS_H
#define BRAID_CUDA_HARNESS_H
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

#endif
