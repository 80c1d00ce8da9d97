/*
 * strmap.h: a string -> int64 index (open addressing, FNV-1a). Keys are borrowed: the caller
 * keeps them alive while they are in the map. Used for tensor and model name lookups, which
 * must stay O(1) for checkpoints with tens of thousands of tensors.
 */
#ifndef FB_CORE_STRMAP_H
#define FB_CORE_STRMAP_H

#include <stdint.h>

#include "fusionbench.h"

typedef struct fb_strmap {
    const char **keys;
    int64_t *values;
    int64_t cap; /* 0 or a power of two */
    int64_t count;
} fb_strmap;

void fb_strmap_init(fb_strmap *m);
void fb_strmap_clear(fb_strmap *m);
/* Inserts key -> value; FB_ERR_ARG if key is already present. */
fb_status fb_strmap_put(fb_strmap *m, const char *key, int64_t value);
/* The value for key, or -1. */
int64_t fb_strmap_get(const fb_strmap *m, const char *key);

#endif
