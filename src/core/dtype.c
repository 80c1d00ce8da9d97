/*
 * dtype.c: element types, their safetensors names and sizes, and exact conversions between
 * f32 and the half types.
 *
 * f32 -> f16/bf16 rounds to nearest, ties to even, as PyTorch's casts do, so a merge computed
 * in f32 and written as bf16 has the same bytes as torch's `.to(torch.bfloat16)`. NaN becomes
 * a quiet NaN with the same canonical payload PyTorch writes (f16 keeps the sign, bf16 0x7FC0).
 */
#include <ctype.h>
#include <string.h>

#include "fusionbench.h"
#include "status.h"

static const struct {
    const char *name;
    size_t size;
    int is_float;
} dtype_info[FB_DTYPE_COUNT] = {
    [FB_F64] = {"F64", 8, 1},      [FB_F32] = {"F32", 4, 1},    [FB_F16] = {"F16", 2, 1},
    [FB_BF16] = {"BF16", 2, 1},    [FB_I64] = {"I64", 8, 0},    [FB_I32] = {"I32", 4, 0},
    [FB_I16] = {"I16", 2, 0},      [FB_I8] = {"I8", 1, 0},      [FB_U8] = {"U8", 1, 0},
    [FB_BOOL] = {"BOOL", 1, 0},    [FB_U16] = {"U16", 2, 0},    [FB_U32] = {"U32", 4, 0},
    [FB_U64] = {"U64", 8, 0},      [FB_F8_E4M3] = {"F8_E4M3", 1, 1},
    [FB_F8_E5M2] = {"F8_E5M2", 1, 1},
};

static int valid(fb_dtype d) { return (unsigned)d < FB_DTYPE_COUNT; }

const char *fb_dtype_name(fb_dtype d) { return valid(d) ? dtype_info[d].name : "?"; }
size_t fb_dtype_size(fb_dtype d) { return valid(d) ? dtype_info[d].size : 0; }
int fb_dtype_is_float(fb_dtype d) { return valid(d) && dtype_info[d].is_float; }

/* Aliases users type on the command line (torch and numpy spellings). */
static const struct {
    const char *alias;
    fb_dtype dtype;
} dtype_aliases[] = {
    {"float64", FB_F64}, {"double", FB_F64},  {"float32", FB_F32},   {"float", FB_F32},
    {"fp32", FB_F32},    {"float16", FB_F16}, {"half", FB_F16},      {"fp16", FB_F16},
    {"bfloat16", FB_BF16}, {"bf16", FB_BF16}, {"int64", FB_I64},     {"int32", FB_I32},
    {"int16", FB_I16},   {"int8", FB_I8},     {"uint8", FB_U8},      {"bool", FB_BOOL},
};

static int equal_nocase(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return *a == *b;
}

fb_status fb_dtype_from_name(const char *name, fb_dtype *out)
{
    const char *s = name;
    if (strncmp(s, "torch.", 6) == 0) s += 6;
    for (int d = 0; d < FB_DTYPE_COUNT; d++)
        if (equal_nocase(s, dtype_info[d].name)) return *out = (fb_dtype)d, FB_OK;
    for (size_t i = 0; i < sizeof dtype_aliases / sizeof dtype_aliases[0]; i++)
        if (equal_nocase(s, dtype_aliases[i].alias)) return *out = dtype_aliases[i].dtype, FB_OK;
    return fb_set_error(FB_ERR_ARG,
                        "unknown dtype '%s' (expected one of F64, F32, F16, BF16, I64, I32, "
                        "I16, I8, U8, BOOL, U16, U32, U64, F8_E4M3, F8_E5M2)",
                        name);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float fb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);
        /* subnormal: normalise the mantissa */
        uint32_t e = 113; /* 127 - 15 + 1 */
        while (!(mant & 0x400)) {
            mant <<= 1;
            e--;
        }
        return bits_f32(sign | (e << 23) | ((mant & 0x3ff) << 13));
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000 | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

/* Rounds x >> shift to nearest, ties to even (shift >= 1). */
static uint32_t shift_round_even(uint32_t x, unsigned shift)
{
    uint32_t r = x >> shift, rem = x & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return r;
}

uint16_t fb_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffff;
    if (a > 0x7f800000) return sign | 0x7e00;      /* NaN */
    if (a >= 0x477ff000) return sign | 0x7c00;     /* rounds past 65504: inf */
    if (a >= 0x38800000) {                         /* normal half */
        uint32_t r = (((a >> 23) - 112) << 10) | ((a & 0x7fffff) >> 13);
        uint32_t rem = a & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
        return sign | (uint16_t)r;
    }
    if (a <= 0x33000000) return sign;              /* at most 2^-25: rounds to zero */
    /* subnormal half: value / 2^-24 = mant * 2^(e - 126) */
    uint32_t e = a >> 23, mant = (a & 0x7fffff) | 0x800000;
    return sign | (uint16_t)shift_round_even(mant, 126 - e);
}

float fb_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t fb_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return 0x7fc0;
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* F8 E4M3 "fn" (as torch.float8_e4m3fn): bias 7, no infinities, S.1111.111 is NaN. */
static float f8_e4m3_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80) << 24;
    uint32_t exp = (b >> 3) & 0xf, mant = b & 0x7;
    if (exp == 0xf && mant == 0x7) return bits_f32(sign | 0x7fc00000);
    if (exp == 0) { /* subnormal: mant * 2^-9 */
        float v = (float)mant / 512.0f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 120) << 23) | (mant << 20));
}

/* F8 E5M2 is the top byte of an IEEE f16. */
static float f8_e5m2_to_f32(uint8_t b) { return fb_f16_to_f32((uint16_t)(b << 8)); }

fb_status fb_convert_to_f32(fb_dtype src_dtype, const void *src, float *dst, int64_t n)
{
    switch (src_dtype) {
    case FB_F32: memcpy(dst, src, (size_t)n * 4); return FB_OK;
    case FB_F64: {
        const double *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
        return FB_OK;
    }
    case FB_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = fb_f16_to_f32(s[i]);
        return FB_OK;
    }
    case FB_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = bits_f32((uint32_t)s[i] << 16);
        return FB_OK;
    }
    case FB_F8_E4M3: {
        const uint8_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = f8_e4m3_to_f32(s[i]);
        return FB_OK;
    }
    case FB_F8_E5M2: {
        const uint8_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = f8_e5m2_to_f32(s[i]);
        return FB_OK;
    }
    default:
        return fb_set_error(FB_ERR_UNSUPPORTED, "cannot convert %s to F32: not a float dtype",
                            fb_dtype_name(src_dtype));
    }
}

fb_status fb_convert_from_f32(fb_dtype dst_dtype, const float *src, void *dst, int64_t n)
{
    switch (dst_dtype) {
    case FB_F32: memcpy(dst, src, (size_t)n * 4); return FB_OK;
    case FB_F64: {
        double *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = src[i];
        return FB_OK;
    }
    case FB_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = fb_f32_to_f16(src[i]);
        return FB_OK;
    }
    case FB_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = fb_f32_to_bf16(src[i]);
        return FB_OK;
    }
    default:
        return fb_set_error(FB_ERR_UNSUPPORTED,
                            "cannot write %s: outputs may be F64, F32, F16 or BF16",
                            fb_dtype_name(dst_dtype));
    }
}
