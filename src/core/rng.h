/*
 * rng.h: a counter-based random generator. The n-th number of a stream is a pure function of
 * (stream key, n), so a random mask over a tensor comes out the same whatever the thread
 * count, chunk order or process. Keys come from (seed, tensor name, stream index), so every
 * tensor and every model draws an independent stream.
 *
 * The mixing function is SplitMix64's finaliser (Steele, Lea, Flood 2014). Its definition is
 * public and small, so tests/reference/ recomputes the same numbers in numpy.
 */
#ifndef FB_CORE_RNG_H
#define FB_CORE_RNG_H

#include <stdint.h>

static inline uint64_t fb_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The key of stream `stream` of tensor `name` under `seed`. */
uint64_t fb_rng_key(uint64_t seed, const char *name, uint64_t stream);

/* Number `counter` of stream `key`, uniform on [0, 1) with 24 random bits (exact in f32). */
static inline float fb_rng_uniform(uint64_t key, uint64_t counter)
{
    uint64_t x = fb_mix64(key + (counter + 1) * 0x9E3779B97F4A7C15ull);
    return (float)(int32_t)(x >> 40) * 0x1p-24f; /* via int32: exact, and it vectorises */
}

#endif
