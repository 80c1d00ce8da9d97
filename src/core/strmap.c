/*
 * strmap.c: open-addressing hash index from strings to int64 (see strmap.h).
 * The table is kept at most half full so probes stay short.
 */
#include "strmap.h"

#include <string.h>

#include "alloc.h"

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void fb_strmap_init(fb_strmap *m) { memset(m, 0, sizeof *m); }

void fb_strmap_clear(fb_strmap *m)
{
    fb_free(m->keys);
    fb_free(m->values);
    fb_strmap_init(m);
}

static int64_t find_slot(const char **keys, int64_t cap, const char *key)
{
    int64_t i = (int64_t)(hash_str(key) & (uint64_t)(cap - 1));
    while (keys[i] && strcmp(keys[i], key) != 0) i = (i + 1) & (cap - 1);
    return i;
}

static fb_status grow(fb_strmap *m)
{
    int64_t cap = m->cap ? m->cap * 2 : 16;
    const char **keys = fb_calloc((size_t)cap, sizeof *keys);
    int64_t *values = fb_malloc((size_t)cap * sizeof *values);
    if (!keys || !values) {
        fb_free(keys);
        fb_free(values);
        return FB_ERR_NOMEM;
    }
    for (int64_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        int64_t j = find_slot(keys, cap, m->keys[i]);
        keys[j] = m->keys[i];
        values[j] = m->values[i];
    }
    fb_free(m->keys);
    fb_free(m->values);
    m->keys = keys;
    m->values = values;
    m->cap = cap;
    return FB_OK;
}

fb_status fb_strmap_put(fb_strmap *m, const char *key, int64_t value)
{
    if (2 * (m->count + 1) > m->cap) {
        fb_status st = grow(m);
        if (st) return st;
    }
    int64_t i = find_slot(m->keys, m->cap, key);
    if (m->keys[i]) return FB_ERR_ARG;
    m->keys[i] = key;
    m->values[i] = value;
    m->count++;
    return FB_OK;
}

int64_t fb_strmap_get(const fb_strmap *m, const char *key)
{
    if (!m->cap) return -1;
    int64_t i = find_slot(m->keys, m->cap, key);
    return m->keys[i] ? m->values[i] : -1;
}
