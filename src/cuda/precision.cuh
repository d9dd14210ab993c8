/* precision.cuh — train.matmul_precision as the CUDA ops hold it: what the tensor cores are
 * fed (matmul.cu's cuBLAS products, attention.cu / attention_tc.cu's tile products). Each op
 * keeps its own setting (bench times one op's precisions while the others stay), parsed by
 * the one function below. */
#ifndef BRAID_PRECISION_CUH
#define BRAID_PRECISION_CUH

#include <string.h>

typedef enum { PRECISION_FP32, PRECISION_TF32, PRECISION_BF16 } Precision;

/* "fp32" | "tf32" | "bf16" into *out; -1 (and *out untouched) for any other name. */
static inline int precision_parse(const char *name, Precision *out) {
    static const char *names[] = {"fp32", "tf32", "bf16"};
    for (int p = 0; p < 3; p++)
        if (!strcmp(name, names[p])) {
            *out = (Precision)p;
            return 0;
        }
    return -1;
}

#endif
