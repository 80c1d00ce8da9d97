/*
 * safetensors.c: reading and validating safetensors headers, and building them for writing.
 *
 * A file from a stranger is checked before use, by the rules of safetensors' reference reader
 * (the Rust crate, whose JSON is serde_json's) and its format description: the header length
 * fits in the file and under 100 MB; the header is UTF-8, starts with '{' and is one strict JSON
 * object (RFC 8259: no raw control characters in strings, no leading zeros, nothing cJSON's
 * leniency would let through), trailing whitespace allowed; every number is a non-negative
 * integer literal (the reference reads shapes and offsets as usize, and refuses 2.0, 2e0 or
 * -0); keys are unique; every entry has a known dtype, a shape of at most FB_MAX_DIMS entries
 * and two offsets; the shape's byte size equals the span, and the spans tile the data section
 * exactly (no overlap, no hole, nothing past the end). Stricter than the reference, and said
 * so in docs/formats.md: names and metadata may not hold NUL (\u0000: C strings), metadata
 * keys may not repeat, and a tensor entry has no other fields. Every message names the file
 * and the tensor or byte.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"

/* ---- strict JSON: a byte-by-byte check before cJSON, which is lenient ---- */

enum { JSON_MAX_DEPTH = 128 }; /* serde_json's recursion limit */

typedef struct jscan {
    const unsigned char *p, *end;
    const char *what;            /* the first error, or NULL */
    const unsigned char *key[3]; /* the keys being read at depths 1-2 (tensor, field) */
    size_t key_len[3];
    int depth, fail_depth;
    const unsigned char *num; /* a bad number's text, for the message */
    size_t num_len;
} jscan;

static int jfail(jscan *j, const char *what)
{
    if (!j->what) {
        j->what = what;
        j->fail_depth = j->depth;
    }
    return 0;
}

/* Well-formed UTF-8 as Rust's str::from_utf8 wants it: no overlong forms, no surrogates,
 * nothing past U+10FFFF. Returns the offset of the first bad byte, or -1. */
static int64_t utf8_error(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                               : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n) return (int64_t)i;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return (int64_t)i;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return (int64_t)i;
        i += len;
    }
    return -1;
}

static void skip_space(jscan *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hex4(jscan *j, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++, j->p++) {
        if (j->p >= j->end) return jfail(j, "a \\u escape is cut short");
        unsigned c = *j->p;
        unsigned d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                   : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 16;
        if (d == 16) return jfail(j, "a \\u escape has a non-hex digit");
        v = v << 4 | d;
    }
    *out = v;
    return 1;
}

static int scan_string(jscan *j)
{
    j->p++; /* the opening quote */
    while (j->p < j->end && *j->p != '"') {
        unsigned c = *j->p;
        if (c < 0x20) return jfail(j, "a control character inside a string (escape it)");
        if (c != '\\') {
            j->p++;
            continue;
        }
        if (++j->p >= j->end) break;
        c = *j->p++;
        if (c == 'u') {
            unsigned u, low;
            if (!hex4(j, &u)) return 0;
            if (u == 0) return jfail(j, "\\u0000 in a string (names and metadata here are C strings)");
            if (u >= 0xdc00 && u <= 0xdfff) return jfail(j, "a lone low surrogate escape");
            if (u >= 0xd800 && u <= 0xdbff) {
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return jfail(j, "a high surrogate escape without its low half");
                j->p += 2;
                if (!hex4(j, &low)) return 0;
                if (low < 0xdc00 || low > 0xdfff)
                    return jfail(j, "a high surrogate escape without its low half");
            }
        } else if (!strchr("\"\\/bfnrt", (int)c) || c == 0) {
            return jfail(j, "an invalid escape in a string");
        }
    }
    if (j->p >= j->end) return jfail(j, "a string is not closed");
    j->p++;
    return 1;
}

/* Every number in a safetensors header is a shape entry or an offset: a non-negative integer
 * literal, without sign, fraction, exponent or leading zero. */
static int scan_number(jscan *j)
{
    const unsigned char *d = j->p;
    while (j->p < j->end && *j->p && strchr("0123456789+-.eE", *j->p)) j->p++;
    size_t n = (size_t)(j->p - d);
    int digits = 1;
    for (size_t k = 0; k < n; k++) digits &= d[k] >= '0' && d[k] <= '9';
    if (digits && !(n > 1 && d[0] == '0')) return 1;
    j->num = d;
    j->num_len = n;
    j->p = d;
    return jfail(j, digits ? "has a leading zero" : "is not a non-negative integer (shapes and "
                                                     "offsets are written without sign, fraction "
                                                     "or exponent)");
}

static int scan_value(jscan *j, int depth);

/* An object or array; keys are strings, separators where JSON puts them. */
static int scan_container(jscan *j, int depth)
{
    const unsigned char close = *j->p == '{' ? '}' : ']';
    if (depth > JSON_MAX_DEPTH) return jfail(j, "nesting deeper than 128 levels");
    j->depth = depth;
    j->p++;
    skip_space(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return 1;
    }
    for (;;) {
        if (close == '}') {
            if (j->p >= j->end || *j->p != '"') return jfail(j, "an object key that is not a string");
            const unsigned char *key = j->p + 1;
            if (!scan_string(j)) return 0;
            if (depth <= 2) {
                j->key[depth] = key;
                j->key_len[depth] = (size_t)(j->p - 1 - key);
            }
            skip_space(j);
            if (j->p >= j->end || *j->p != ':') return jfail(j, "a key without ':'");
            j->p++;
        }
        if (!scan_value(j, depth + 1)) return 0;
        j->depth = depth;
        skip_space(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            skip_space(j);
            continue;
        }
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 1;
        }
        return jfail(j, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int scan_value(jscan *j, int depth)
{
    skip_space(j);
    if (j->p >= j->end) return jfail(j, "a value is missing");
    unsigned c = *j->p;
    if (c == '{' || c == '[') return scan_container(j, depth);
    if (c == '"') return scan_string(j);
    if ((c >= '0' && c <= '9') || c == '-') return scan_number(j);
    static const char *const words[] = {"true", "false", "null"};
    for (int w = 0; w < 3; w++) {
        size_t n = strlen(words[w]);
        if ((size_t)(j->end - j->p) >= n && !memcmp(j->p, words[w], n)) {
            j->p += n;
            return 1;
        }
    }
    return jfail(j, "an unexpected character");
}

/* The header's bytes: UTF-8, '{' first, one strict JSON object, then only whitespace. */
static fb_status check_header_text(const char *path, const char *header, size_t n)
{
    const unsigned char *h = (const unsigned char *)header;
    int64_t bad = utf8_error(h, n);
    if (bad >= 0)
        return fb_set_error(FB_ERR_FORMAT, "%s: header is not UTF-8 (byte %lld: 0x%02x)", path,
                            (long long)bad, h[bad]);
    if (h[0] != '{')
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: header does not start with '{' (not a safetensors file?)", path);
    jscan j = {.p = h, .end = h + n};
    if (scan_container(&j, 1)) {
        skip_space(&j);
        if (j.p < j.end)
            return fb_set_error(FB_ERR_FORMAT,
                                "%s: header has bytes after the JSON object (at byte %zu)", path,
                                (size_t)(j.p - h));
        return FB_OK;
    }
    /* name where it went wrong: the tensor (or __metadata__) and its field */
    char where[160] = "";
    if (j.fail_depth >= 2 && j.key[1])
        snprintf(where, sizeof where, " in '%.*s'%s%.*s",
                 (int)(j.key_len[1] > 64 ? 64 : j.key_len[1]), (const char *)j.key[1],
                 j.fail_depth >= 3 && j.key[2] ? ", field " : "",
                 j.fail_depth >= 3 && j.key[2] ? (int)(j.key_len[2] > 32 ? 32 : j.key_len[2]) : 0,
                 j.fail_depth >= 3 && j.key[2] ? (const char *)j.key[2] : "");
    if (j.num)
        return fb_set_error(FB_ERR_FORMAT, "%s: header%s: the number %.*s %s (at byte %zu)", path,
                            where, (int)(j.num_len > 24 ? 24 : j.num_len), (const char *)j.num,
                            j.what, (size_t)(j.p - h));
    return fb_set_error(FB_ERR_FORMAT, "%s: header is not valid JSON%s: %s (at byte %zu)", path,
                        where, j.p >= j.end ? "it ends before the object closes" : j.what,
                        (size_t)(j.p - h));
}

/* One parsed header entry, kept until the layout has been checked. */
typedef struct st_entry {
    const char *name; /* borrowed from the cJSON tree */
    fb_dtype dtype;
    int ndim;
    int64_t shape[FB_MAX_DIMS];
    uint64_t begin, end;
} st_entry;

/* Integers in the header are JSON numbers; they must be whole, non-negative and exact. */
static int json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item)) return 0;
    double v = item->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != (double)(uint64_t)v) return 0;
    *out = (uint64_t)v;
    return 1;
}

static fb_status parse_entry(const char *path, const cJSON *item, st_entry *e)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", path,
                            name);
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL, *field;
    cJSON_ArrayForEach(field, item)
    {
        if (strcmp(field->string, "dtype") == 0 && !dtype) dtype = field;
        else if (strcmp(field->string, "shape") == 0 && !shape) shape = field;
        else if (strcmp(field->string, "data_offsets") == 0 && !offsets) offsets = field;
        else
            return fb_set_error(FB_ERR_FORMAT,
                                "%s: tensor '%s': unexpected or repeated field '%s' (allowed: "
                                "dtype, shape, data_offsets)",
                                path, name, field->string);
    }
    if (!dtype || !shape || !offsets)
        return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s': missing field '%s'", path, name,
                            !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    e->name = name;
    if (!cJSON_IsString(dtype))
        return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", path,
                            name);
    int found = 0;
    for (int d = 0; d < FB_DTYPE_COUNT; d++) {
        if (strcmp(dtype->valuestring, fb_dtype_name((fb_dtype)d)) == 0) {
            e->dtype = (fb_dtype)d;
            found = 1;
        }
    }
    if (!found)
        return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, name,
                            dtype->valuestring);
    if (!cJSON_IsArray(shape))
        return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s': shape is not an array", path,
                            name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > FB_MAX_DIMS)
        return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s': rank %d exceeds the limit of %d",
                            path, name, ndim, FB_MAX_DIMS);
    e->ndim = ndim;
    int i = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape)
    {
        uint64_t v;
        if (!json_uint(dim, &v))
            return fb_set_error(FB_ERR_FORMAT,
                                "%s: tensor '%s': shape entry %d is not a non-negative integer",
                                path, name, i);
        e->shape[i++] = (int64_t)v;
    }
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        !json_uint(cJSON_GetArrayItem(offsets, 0), &e->begin) ||
        !json_uint(cJSON_GetArrayItem(offsets, 1), &e->end))
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets must be [begin, end] non-negative "
                            "integers",
                            path, name);
    if (e->end < e->begin)
        return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end "
                                           "before they begin",
                            path, name, (unsigned long long)e->begin,
                            (unsigned long long)e->end);
    int64_t numel;
    size_t nbytes;
    if (fb_shape_size(name, e->dtype, e->ndim, e->shape, &numel, &nbytes))
        return fb_error_prefix(FB_ERR_FORMAT, "%s", path);
    if ((uint64_t)nbytes != e->end - e->begin)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: tensor '%s': shape and dtype %s need %zu bytes but "
                            "data_offsets [%llu, %llu] span %llu",
                            path, name, fb_dtype_name(e->dtype), nbytes,
                            (unsigned long long)e->begin, (unsigned long long)e->end,
                            (unsigned long long)(e->end - e->begin));
    return FB_OK;
}

static int compare_entries(const void *a, const void *b)
{
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The spans, sorted, must tile [0, data_size) exactly. */
static fb_status check_layout(const char *path, st_entry *e, int64_t n, uint64_t data_size)
{
    qsort(e, (size_t)n, sizeof *e, compare_entries);
    uint64_t expected = 0;
    for (int64_t i = 0; i < n; i++) {
        if (e[i].end > data_size)
            return fb_set_error(FB_ERR_FORMAT,
                                "%s: tensor '%s': data_offsets [%llu, %llu] run past the end "
                                "of the data section (%llu bytes)",
                                path, e[i].name, (unsigned long long)e[i].begin,
                                (unsigned long long)e[i].end, (unsigned long long)data_size);
        if (e[i].begin < expected)
            return fb_set_error(FB_ERR_FORMAT,
                                "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor "
                                "'%s'",
                                path, e[i].name, (unsigned long long)e[i].begin,
                                (unsigned long long)e[i].end, e[i - 1].name);
        if (e[i].begin > expected)
            return fb_set_error(FB_ERR_FORMAT,
                                "%s: %llu unused bytes before tensor '%s' at data offset %llu "
                                "(the data section must have no holes)",
                                path, (unsigned long long)(e[i].begin - expected), e[i].name,
                                (unsigned long long)expected);
        expected = e[i].end;
    }
    if (expected != data_size)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: %llu bytes after the last tensor are not used by any tensor",
                            path, (unsigned long long)(data_size - expected));
    return FB_OK;
}

static fb_status read_metadata(const char *path, const cJSON *meta, fb_model *model)
{
    if (!cJSON_IsObject(meta))
        return fb_set_error(FB_ERR_FORMAT, "%s: __metadata__ is not a JSON object", path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta)
    {
        if (!cJSON_IsString(kv))
            return fb_set_error(FB_ERR_FORMAT, "%s: __metadata__ value '%s' is not a string",
                                path, kv->string);
        for (const cJSON *before = meta->child; before != kv; before = before->next)
            if (!strcmp(before->string, kv->string))
                return fb_set_error(FB_ERR_FORMAT, "%s: __metadata__ key '%s' appears twice", path,
                                    kv->string);
        fb_status st = fb_model_set_metadata(model, kv->string, kv->valuestring);
        if (st) return st;
    }
    return FB_OK;
}

fb_status fb_safetensors_read(const char *path, fb_model *model)
{
    fb_source *src = NULL;
    char *header = NULL;
    cJSON *root = NULL;
    st_entry *entries = NULL;
    fb_status st = fb_source_open(path, &src);
    if (st) return st;

    uint8_t lenbuf[8];
    if (src->size < 8) {
        st = fb_set_error(FB_ERR_FORMAT,
                          "%s: file is %llu bytes, too short for the 8-byte header length "
                          "(not a safetensors file?)",
                          path, (unsigned long long)src->size);
        goto done;
    }
    if ((st = fb_source_pread(src, 0, 8, lenbuf))) goto done;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbuf[i];
    if (hlen > FB_ST_MAX_HEADER) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes",
                          path, (unsigned long long)hlen, FB_ST_MAX_HEADER);
        goto done;
    }
    if (hlen > src->size - 8) {
        st = fb_set_error(FB_ERR_FORMAT,
                          "%s: header length %llu runs past the end of the file (%llu bytes)",
                          path, (unsigned long long)hlen, (unsigned long long)src->size);
        goto done;
    }
    if (hlen < 2) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: header length %llu is too short for a JSON object",
                          path, (unsigned long long)hlen);
        goto done;
    }
    header = fb_malloc(hlen + 1);
    if (!header) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    if ((st = fb_source_pread(src, 8, hlen, header))) goto done;
    header[hlen] = '\0';
    if ((st = check_header_text(path, header, hlen))) goto done;
    root = cJSON_ParseWithLength(header, hlen);
    if (!root) { /* the strict scan passed, so only memory can be short */
        st = fb_set_error(FB_ERR_NOMEM, "%s: out of memory parsing the header", path);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }

    int64_t n = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) n++;
    entries = fb_calloc((size_t)n + 1, sizeof *entries);
    if (!entries) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    int64_t count = 0;
    int seen_metadata = 0;
    cJSON_ArrayForEach(item, root)
    {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (seen_metadata++) {
                st = fb_set_error(FB_ERR_FORMAT, "%s: __metadata__ appears twice", path);
                goto done;
            }
            if ((st = read_metadata(path, item, model))) goto done;
            continue;
        }
        if ((st = parse_entry(path, item, &entries[count]))) goto done;
        count++;
    }
    uint64_t data_start = 8 + hlen;
    if ((st = check_layout(path, entries, count, src->size - data_start))) goto done;
    for (int64_t i = 0; i < count; i++) {
        st = fb_model_add_tensor_lazy(model, entries[i].name, entries[i].dtype, entries[i].ndim,
                                      entries[i].shape, src, data_start + entries[i].begin);
        if (st) {
            if (st == FB_ERR_ARG && !entries[i].name[0])
                st = fb_set_error(FB_ERR_FORMAT, "%s: a tensor has an empty name", path);
            else if (st == FB_ERR_ARG)
                st = fb_set_error(FB_ERR_FORMAT,
                                  "%s: tensor '%s' is defined twice (in this header, or also "
                                  "in another shard of the checkpoint)",
                                  path, entries[i].name);
            goto done;
        }
    }
done:
    fb_free(entries);
    cJSON_Delete(root);
    fb_free(header);
    fb_source_unref(src);
    return st;
}

fb_status fb_safetensors_header(const fb_model *layout, int64_t first, int64_t count,
                                int with_metadata, fb_buf *out, uint64_t *rel_offsets)
{
    fb_buf json;
    fb_buf_init(&json);
    fb_buf_puts(&json, "{");
    int need_comma = 0;
    if (with_metadata && layout->meta_count > 0) {
        fb_buf_puts(&json, "\"__metadata__\":{");
        for (int64_t i = 0; i < layout->meta_count; i++) {
            if (i) fb_buf_puts(&json, ",");
            fb_buf_json_string(&json, layout->meta_keys[i]);
            fb_buf_puts(&json, ":");
            fb_buf_json_string(&json, layout->meta_values[i]);
        }
        fb_buf_puts(&json, "}");
        need_comma = 1;
    }
    /* Data goes in order of decreasing element size (stable), so with the 8-byte aligned
     * data start every tensor is aligned for its dtype; the header keeps model order. */
    uint64_t offset = 0;
    for (size_t es = 8; es >= 1; es /= 2) {
        for (int64_t i = 0; i < count; i++) {
            const fb_tensor *t = layout->tensors[first + i];
            size_t size = fb_dtype_size(t->dtype);
            if (size != es) continue;
            rel_offsets[i] = offset;
            offset += t->nbytes;
        }
    }
    for (int64_t i = 0; i < count; i++) {
        const fb_tensor *t = layout->tensors[first + i];
        if (need_comma) fb_buf_puts(&json, ",");
        need_comma = 1;
        fb_buf_json_string(&json, t->name);
        fb_buf_printf(&json, ":{\"dtype\":\"%s\",\"shape\":[", fb_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            fb_buf_printf(&json, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        fb_buf_printf(&json, "],\"data_offsets\":[%llu,%llu]}",
                      (unsigned long long)rel_offsets[i],
                      (unsigned long long)(rel_offsets[i] + t->nbytes));
    }
    fb_buf_puts(&json, "}");
    while (!json.failed && (json.len + 8) % 8) fb_buf_puts(&json, " "); /* pad */
    if (json.failed) {
        fb_buf_free(&json);
        return FB_ERR_NOMEM;
    }
    if (json.len > FB_ST_MAX_HEADER) {
        size_t len = json.len;
        fb_buf_free(&json);
        return fb_set_error(FB_ERR_ARG,
                            "safetensors header would be %zu bytes, over the %u-byte limit "
                            "readers accept; write sharded output",
                            len, FB_ST_MAX_HEADER);
    }
    uint8_t lenbuf[8];
    uint64_t hlen = json.len;
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)(hlen >> (8 * i));
    fb_buf_init(out);
    fb_buf_append(out, (const char *)lenbuf, 8);
    fb_buf_append(out, json.data, json.len);
    fb_buf_free(&json);
    if (out->failed) {
        fb_buf_free(out);
        return FB_ERR_NOMEM;
    }
    return FB_OK;
}
