/* bench_ops.h — per-op GPU benchmarks (`bench --ops`): single CUDA ops and whole layers
 * timed at the shapes a config implies, each against the ceiling that bounds it.
 *
 * Compute-bound ops (the cuBLAS matmul, flash attention, whole layers) report TFLOP/s
 * against the GPU's float32 peak (device_cuda_peak_fp32_flops); memory-bound ones (the
 * selective scan, the causal conv1d) report GB/s and the time their minimal memory
 * traffic would take at the GPU's DRAM bandwidth (the "floor"). bench_ops.c states every
 * FLOP and byte formula next to the op it belongs to.
 *
 * Timing: `warmup` untimed calls, then `repeats` calls each bracketed by cudaEvents on the
 * default stream (where every braid launcher queues its work); the median is reported.
 * Inputs are seeded random (normal, never zero-filled), so runs are repeatable. */
#ifndef BRAID_BENCH_OPS_H
#define BRAID_BENCH_OPS_H
#include <stdio.h>
#include "common.h"

struct Config;

typedef struct BenchOpsOptions {
    int warmup;           /* untimed calls before each op's timed ones (>= 0) */
    int repeats;          /* timed calls per op; their median is reported (>= 1) */
    int json;             /* 1: one JSON line per op besides the table line */
    const char *source;   /* what the config came from, for the header (may be NULL) */
    FILE *out;            /* where the table and the JSON lines go (NULL: stdout) */
} BenchOpsOptions;

/* 0 when bench_ops_run can run here; else -1 with err saying why (this build has no
 * CUDA backend, or no CUDA device is visible). */
int bench_ops_check_gpu(BraidError *err);

/* Times every op at cfg's shapes (train.batch_size, task.seq_len, model.*) and prints one
 * line per op (and one JSON line with opt->json). An op the config's shape does not allow
 * (a kernel limit, a kind without a CUDA path) gets a "skipped" line saying why. Returns 0,
 * or -1 with err when it cannot run at all (see bench_ops_check_gpu). It creates the cuBLAS
 * handle (ops_cuda_init) and destroys it at the end (ops_cuda_shutdown), and every device
 * buffer it made: run it where no CUDA model is alive in the same process. */
int bench_ops_run(const struct Config *cfg, const BenchOpsOptions *opt, BraidError *err);

#endif
