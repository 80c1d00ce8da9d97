/*
 * simd.h: the level the library's own hand-written kernels dispatch on (see simd.c).
 */
#ifndef FB_CORE_SIMD_H
#define FB_CORE_SIMD_H

#include "fusionbench.h"

/* The level kernels use: the one fb_simd_get() reports, never above what the CPU has. Cheap
 * after the first call. */
fb_simd fb_simd_active(void);

#endif
