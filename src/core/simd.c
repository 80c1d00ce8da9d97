/*
 * simd.c: which instruction sets the library's own kernels may use (FB_SIMD).
 *
 * A few kernels have hand-written AVX2 or AVX-512 versions beside their plain C ones (TIES's
 * window scan and merge, DARE's random drops). Each fast version computes the same operations
 * in the same order as its plain one, so the level changes speed, never bytes; the tests run
 * the reference suites and a byte comparison under every level the CPU has.
 *
 * The level is a process-wide setting like the thread count: FB_SIMD from the environment
 * (scalar, avx2, avx512), read on first use, else the best level the CPU supports. A level the
 * CPU lacks, or a name that is no level, is an error raised by fb_simd_get() (the merge and
 * evaluation entry points call it, so the C API reports it too); kernels then dispatch on
 * fb_simd_active(), which never exceeds what the CPU has. OpenBLAS chooses its own kernels
 * from the CPU (docs/reliability.md says what that can change).
 */
#include "simd.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

static const char *const level_names[] = {"scalar", "avx2", "avx512"};

/* -1: not yet read; else the level in use. `env_error` is set when FB_SIMD was unusable. */
static atomic_int active = -1;
static atomic_int env_error = 0;

const char *fb_simd_name(fb_simd level)
{
    return level >= FB_SIMD_SCALAR && level <= FB_SIMD_AVX512 ? level_names[level] : "unknown";
}

fb_simd fb_simd_best(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* avx512 is x86-64-v4's set (F, DQ, BW, VL) on top of avx2; avx2 is x86-64-v3's core
     * (AVX2 with FMA), the set every AVX2 machine since 2013 has */
    int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    return v4 ? FB_SIMD_AVX512 : v3 ? FB_SIMD_AVX2 : FB_SIMD_SCALAR;
#else
    return FB_SIMD_SCALAR;
#endif
}

/* Parses a level's name; returns FB_OK with *out set, or an error naming what was given and
 * what the CPU allows (`source` says where the name came from). */
static fb_status parse_level(const char *name, const char *source, fb_simd *out)
{
    fb_simd best = fb_simd_best();
    char have[64] = "scalar";
    for (int l = FB_SIMD_AVX2; l <= (int)best; l++) {
        strcat(have, ", ");
        strcat(have, level_names[l]);
    }
    for (int l = FB_SIMD_SCALAR; l <= FB_SIMD_AVX512; l++) {
        if (strcmp(name, level_names[l]) != 0) continue;
        if (l > (int)best)
            return fb_set_error(FB_ERR_UNSUPPORTED, "%s%s: this CPU lacks %s (it has: %s)", source,
                                name, name, have);
        *out = (fb_simd)l;
        return FB_OK;
    }
    return fb_set_error(FB_ERR_ARG,
                        "%s'%s' is not a SIMD level (expected scalar, avx2 or avx512; "
                        "this CPU has: %s)",
                        source, name, have);
}

/* Reads FB_SIMD once; an unusable value leaves the best level active and remembers the error
 * for fb_simd_get() to raise. */
static int resolve(void)
{
    int l = atomic_load(&active);
    if (l >= 0) return l;
    const char *env = getenv("FB_SIMD");
    fb_simd want = fb_simd_best();
    int bad = 0;
    if (env && *env) {
        char saved[FB_ERROR_MAX];
        strcpy(saved, fb_last_error()); /* reading a setting must not clobber a caller's error */
        bad = parse_level(env, "FB_SIMD=", &want) != FB_OK;
        fb_set_error(FB_OK, "%s", saved);
        if (bad) want = fb_simd_best();
    }
    int expected = -1;
    if (atomic_compare_exchange_strong(&active, &expected, (int)want))
        atomic_store(&env_error, bad);
    return atomic_load(&active);
}

fb_simd fb_simd_active(void)
{
    return (fb_simd)resolve();
}

fb_status fb_simd_get(fb_simd *out)
{
    int l = resolve();
    if (out) *out = (fb_simd)l;
    if (atomic_load(&env_error)) {
        fb_simd ignored;
        return parse_level(getenv("FB_SIMD") ? getenv("FB_SIMD") : "", "FB_SIMD=", &ignored);
    }
    return FB_OK;
}

fb_status fb_simd_set(const char *name)
{
    fb_simd l = fb_simd_best();
    if (name) {
        fb_status st = parse_level(name, "SIMD level ", &l);
        if (st) return st;
    }
    atomic_store(&active, (int)l);
    atomic_store(&env_error, 0);
    return FB_OK;
}
