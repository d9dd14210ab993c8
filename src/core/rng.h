/* rng.h — a small, portable, seedable generator (SplitMix64 seeding a xoshiro256**),
 * so the same seed gives the same numbers on every build and platform. Its whole
 * state is four words, which a checkpoint stores to resume exactly. */
#ifndef BRAID_RNG_H
#define BRAID_RNG_H
#include <stdint.h>

typedef struct Rng { uint64_t s[4]; } Rng;

void     rng_seed(Rng *r, uint64_t seed);
uint64_t rng_u64(Rng *r);
uint32_t rng_below(Rng *r, uint32_t n);      /* uniform in [0, n) without modulo bias */
float    rng_uniform(Rng *r);                /* [0, 1) */
float    rng_uniform_range(Rng *r, float lo, float hi);
float    rng_normal(Rng *r);                 /* standard normal (Box-Muller) */
void     rng_fill_normal(Rng *r, float *x, size_t n, float std);
void     rng_fill_uniform(Rng *r, float *x, size_t n, float lo, float hi);

#endif
