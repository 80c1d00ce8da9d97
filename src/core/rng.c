/*
 * rng.c: stream keys of the counter-based generator (see rng.h).
 */
#include "rng.h"

uint64_t fb_rng_key(uint64_t seed, const char *name, uint64_t stream)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of the name */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return fb_mix64(fb_mix64(seed) ^ fb_mix64(h + 0x632BE59BD9B4E019ull) ^
                    fb_mix64(stream * 0x9E3779B97F4A7C15ull + 1));
}
