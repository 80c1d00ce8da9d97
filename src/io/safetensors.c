/*
 * safetensors.c: reading and validating safetensors headers, and building them for writing.
 *
 * A file from a stranger is checked before use: the header length fits in the file and under
 * 100 MB, the header is one JSON object (trailing spaces allowed), every entry has a known
 * dtype, a shape of at most FB_MAX_DIMS non-negative integers and two integer offsets, the
 * shape's byte size equals the span, and the spans tile the data section exactly (no overlap,
 * no hole, nothing past the end). Every message names the file and the tensor.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"

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
    if (header[0] != '{') {
        st = fb_set_error(FB_ERR_FORMAT, "%s: header does not start with '{' (not a safetensors "
                                         "file?)",
                          path);
        goto done;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(header, hlen, &end, 0);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = (at && at >= header && at <= header + hlen) ? (size_t)(at - header) : 0;
        st = fb_set_error(FB_ERR_FORMAT, "%s: header is not valid JSON (error near byte %zu)",
                          path, off);
        goto done;
    }
    for (const char *p = end; p < header + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = fb_set_error(FB_ERR_FORMAT,
                              "%s: header has bytes after the JSON object (at byte %zu)", path,
                              (size_t)(p - header));
            goto done;
        }
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
            if (st == FB_ERR_ARG)
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
    while ((json.len + 8) % 8) fb_buf_puts(&json, " ");
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
