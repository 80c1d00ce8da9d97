/*
 * test_core.c: dtypes and conversions (against PyTorch's tables), tensors, models, the string
 * index and allocation failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "core/model.h"
#include "core/strmap.h"
#include "harness.h"

static fb_model *load_ref(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", fb_test_ref_dir, name);
    fb_model *m = NULL;
    if (fb_model_load(path, &m)) fb_test_fail(__FILE__, __LINE__, "%s", fb_last_error());
    return m;
}

static const void *data_of(const fb_model *m, const char *name)
{
    const fb_tensor *t = fb_model_find(m, name);
    const void *p = NULL;
    if (!t || fb_tensor_data(t, &p)) return NULL;
    return p;
}

TEST(f16_and_bf16_to_f32_match_torch_for_every_bit_pattern)
{
    fb_model *m = load_ref("conversions.safetensors");
    REQUIRE(m);
    const uint16_t *h = data_of(m, "f16_bits"), *b = data_of(m, "bf16_bits");
    const uint32_t *hf = data_of(m, "f16_as_f32"), *bf = data_of(m, "bf16_as_f32");
    REQUIRE(h && b && hf && bf);
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        float x = fb_f16_to_f32(h[i]), y = fb_bf16_to_f32(b[i]);
        uint32_t xb, yb;
        memcpy(&xb, &x, 4);
        memcpy(&yb, &y, 4);
        int xnan = isnan(x), ynan = isnan(y);
        /* NaNs: torch keeps the payload too; compare bits except for the quiet bit */
        if ((xnan ? (xb | 0x400000) != (hf[i] | 0x400000) : xb != hf[i]) && bad++ < 5)
            fb_test_fail(__FILE__, __LINE__, "f16 %04x -> %08x, torch %08x", h[i], xb, hf[i]);
        if ((ynan ? (yb | 0x400000) != (bf[i] | 0x400000) : yb != bf[i]) && bad++ < 5)
            fb_test_fail(__FILE__, __LINE__, "bf16 %04x -> %08x, torch %08x", b[i], yb, bf[i]);
    }
    fb_model_free(m);
}

TEST(f32_to_f16_and_bf16_round_to_nearest_even_like_torch)
{
    fb_model *m = load_ref("conversions.safetensors");
    REQUIRE(m);
    const fb_tensor *src = fb_model_find(m, "f32_src");
    REQUIRE(src);
    const float *x = data_of(m, "f32_src");
    const uint16_t *h = data_of(m, "f32_to_f16"), *b = data_of(m, "f32_to_bf16");
    int64_t n = fb_tensor_numel(src);
    REQUIRE(n > 200000);
    uint16_t *h2 = malloc((size_t)n * 2), *b2 = malloc((size_t)n * 2);
    EXPECT_OK(fb_convert_from_f32(FB_F16, x, h2, n));
    EXPECT_OK(fb_convert_from_f32(FB_BF16, x, b2, n));
    int bad = 0;
    for (int64_t i = 0; i < n && bad < 5; i++) {
        if (h2[i] != h[i] && ++bad)
            fb_test_fail(__FILE__, __LINE__, "f32 %.9g -> f16 %04x, torch %04x", x[i], h2[i], h[i]);
        if (b2[i] != b[i] && ++bad)
            fb_test_fail(__FILE__, __LINE__, "f32 %.9g -> bf16 %04x, torch %04x", x[i], b2[i],
                         b[i]);
    }
    /* NaN stays NaN in both */
    EXPECT((fb_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (fb_f32_to_f16(NAN) & 0x3ff));
    EXPECT(isnan(fb_bf16_to_f32(fb_f32_to_bf16(NAN))));
    free(h2);
    free(b2);
    fb_model_free(m);
}

TEST(every_safetensors_dtype_reads_with_its_values)
{
    fb_model *m = load_ref("dtypes.safetensors");
    fb_model *want = load_ref("dtypes_as_f32.safetensors");
    REQUIRE(m && want);
    const char *floats[] = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"};
    for (int i = 0; i < 6; i++) {
        const fb_tensor *t = fb_model_find(m, floats[i]);
        REQUIRE(t);
        fb_dtype d;
        EXPECT_OK(fb_dtype_from_name(floats[i], &d));
        EXPECT(fb_tensor_dtype(t) == d);
        float *got = malloc((size_t)fb_tensor_numel(t) * 4);
        EXPECT_OK(fb_tensor_to_f32(t, got));
        const float *exp = data_of(want, floats[i]);
        for (int64_t j = 0; exp && j < fb_tensor_numel(t); j++) {
            if (isnan(exp[j]) ? !isnan(got[j]) : memcmp(&got[j], &exp[j], 4) != 0) {
                fb_test_fail(__FILE__, __LINE__, "%s[%lld] = %g, expected %g", floats[i],
                             (long long)j, got[j], exp[j]);
                break;
            }
        }
        free(got);
    }
    const int64_t *i64 = data_of(m, "I64");
    EXPECT(i64 && i64[0] == -(INT64_C(1) << 62) && i64[4] == (INT64_C(1) << 62));
    const uint64_t *u64 = data_of(m, "U64");
    EXPECT(u64 && u64[1] == UINT64_MAX);
    const fb_tensor *i8 = fb_model_find(m, "I8");
    EXPECT(i8 && fb_tensor_ndim(i8) == 2 && fb_tensor_shape(i8)[1] == 2);
    const uint8_t *bools = data_of(m, "BOOL");
    EXPECT(bools && bools[0] == 1 && bools[1] == 0);
    EXPECT(fb_model_get_metadata(m, "written_by") &&
           !strcmp(fb_model_get_metadata(m, "written_by"), "make_reference.py"));
    EXPECT(fb_model_get_metadata(m, "quote\"and\\slash") &&
           !strcmp(fb_model_get_metadata(m, "quote\"and\\slash"), "x\ny"));
    EXPECT_ERROR(fb_tensor_to_f32(fb_model_find(m, "I32"), NULL), FB_ERR_UNSUPPORTED, "I32");
    fb_model_free(m);
    fb_model_free(want);
}

TEST(dtype_names_and_aliases)
{
    fb_dtype d;
    EXPECT_OK(fb_dtype_from_name("bf16", &d));
    EXPECT(d == FB_BF16);
    EXPECT_OK(fb_dtype_from_name("torch.float16", &d));
    EXPECT(d == FB_F16);
    EXPECT_OK(fb_dtype_from_name("F32", &d));
    EXPECT(d == FB_F32);
    EXPECT_ERROR(fb_dtype_from_name("float7", &d), FB_ERR_ARG, "float7");
    EXPECT(fb_dtype_size(FB_BF16) == 2 && fb_dtype_size(FB_U64) == 8);
    EXPECT(fb_dtype_is_float(FB_F8_E5M2) && !fb_dtype_is_float(FB_BOOL));
    EXPECT(!strcmp(fb_status_str(FB_ERR_MISMATCH), "FB_ERR_MISMATCH"));
    float x = 1.0f;
    uint8_t out[4];
    EXPECT_ERROR(fb_convert_from_f32(FB_F8_E4M3, &x, out, 1), FB_ERR_UNSUPPORTED, "F8_E4M3");
}

TEST(models_keep_order_names_and_metadata)
{
    fb_model *m;
    REQUIRE_OK(fb_model_create(&m));
    int64_t shape[2] = {2, 3};
    float v[6] = {1, 2, 3, 4, 5, 6};
    fb_tensor *t = NULL;
    EXPECT_OK(fb_model_add_tensor(m, "b.weight", FB_F32, 2, shape, v, &t));
    EXPECT(t && fb_tensor_mutable_data(t) && ((float *)fb_tensor_mutable_data(t))[5] == 6);
    EXPECT_OK(fb_model_add_tensor_borrowed(m, "a.weight", FB_F32, 2, shape, v));
    EXPECT_ERROR(fb_model_add_tensor(m, "a.weight", FB_F32, 2, shape, v, NULL), FB_ERR_ARG,
                 "a.weight");
    int64_t bad[1] = {-1};
    EXPECT_ERROR(fb_model_add_tensor(m, "neg", FB_F32, 1, bad, NULL, NULL), FB_ERR_ARG,
                 "negative");
    int64_t huge[3] = {INT64_C(1) << 40, INT64_C(1) << 40, 4};
    EXPECT_ERROR(fb_model_add_tensor(m, "huge", FB_F32, 3, huge, NULL, NULL), FB_ERR_ARG,
                 "overflow");
    EXPECT_ERROR(fb_model_add_tensor(m, "rank9", FB_F32, 9, shape, NULL, NULL), FB_ERR_ARG,
                 "rank 9");
    EXPECT(fb_model_num_tensors(m) == 2);
    EXPECT(!strcmp(fb_tensor_name(fb_model_tensor(m, 0)), "b.weight"));
    EXPECT(fb_model_find(m, "a.weight") == fb_model_tensor(m, 1));
    EXPECT(fb_model_find(m, "missing") == NULL);
    EXPECT(fb_model_num_params(m) == 12);
    EXPECT_OK(fb_model_set_metadata(m, "format", "pt"));
    EXPECT_OK(fb_model_set_metadata(m, "format", "np"));
    EXPECT(fb_model_num_metadata(m) == 1 && !strcmp(fb_model_get_metadata(m, "format"), "np"));
    fb_model_free(m);
}

TEST(string_index_finds_every_key_after_growth)
{
    fb_strmap map;
    fb_strmap_init(&map);
    static char keys[5000][16];
    for (int i = 0; i < 5000; i++) {
        snprintf(keys[i], sizeof keys[i], "layer.%d", i);
        EXPECT_OK(fb_strmap_put(&map, keys[i], i));
    }
    EXPECT(fb_strmap_put(&map, "layer.7", 1) == FB_ERR_ARG);
    int wrong = 0;
    for (int i = 0; i < 5000; i++) wrong += fb_strmap_get(&map, keys[i]) != i;
    EXPECT(wrong == 0);
    EXPECT(fb_strmap_get(&map, "layer.5000") == -1);
    fb_strmap_clear(&map);
}

TEST(allocation_failures_are_reported_not_crashes)
{
    /* Fail each allocation of a small workflow in turn: every call must return an error or
     * succeed, never crash. (Leaks are checked by `make test-sanitize`.) */
    for (long n = 0; n < 40; n++) {
        fb_model *m = NULL;
        fb_alloc_fail_after(n);
        fb_status st = fb_model_create(&m);
        int64_t shape[1] = {4};
        float v[4] = {0};
        if (!st) st = fb_model_add_tensor(m, "w", FB_F32, 1, shape, v, NULL);
        if (!st) st = fb_model_set_metadata(m, "k", "v");
        fb_method *meth = NULL;
        if (!st) st = fb_method_create("task_arithmetic", "{scaling_factor: 0.5}", &meth);
        fb_alloc_fail_after(-1);
        EXPECT(st == FB_OK || st == FB_ERR_NOMEM || st == FB_ERR_FORMAT);
        fb_method_free(meth);
        fb_model_free(m);
    }
}
