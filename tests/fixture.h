/* fixture.h — reads the reference tensors written by tools/reference/ (the *_reference.py scripts).
 *
 * File format (little-endian), written by tools/reference/fixture.py:
 *   "BRFX" u32 version(1) u32 count, then per tensor:
 *   u32 name_len, name bytes, u32 ndim, u32 shape[ndim], float32 data[prod(shape)]
 * Integer tensors (token ids) are stored as float32 holding exact integers. */
#ifndef BRAID_FIXTURE_H
#define BRAID_FIXTURE_H
#include <stddef.h>

typedef struct FixtureTensor {
    char name[128];
    int ndim;
    int shape[8];
    size_t n;
    float *data;
} FixtureTensor;

typedef struct Fixture {
    FixtureTensor *tensors;
    int count;
} Fixture;

/* Returns 0 on success; on failure prints why to stderr and returns -1. */
int fixture_load(Fixture *fx, const char *path);
/* The tensor named `name`, or NULL (and a message on stderr). */
const FixtureTensor *fixture_get(const Fixture *fx, const char *name);
void fixture_free(Fixture *fx);

/* Directory holding tests/fixtures, set by CMake as BRAID_FIXTURE_DIR. */
#ifndef BRAID_FIXTURE_DIR
#define BRAID_FIXTURE_DIR "tests/fixtures"
#endif

#endif
