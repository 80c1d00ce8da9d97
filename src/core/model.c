/*
 * model.c: tensors and models, the state dicts everything else works on (see model.h).
 */
#include "model.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>

#include "alloc.h"
#include "status.h"

const char *fb_tensor_name(const fb_tensor *t) { return t->name; }
fb_dtype fb_tensor_dtype(const fb_tensor *t) { return t->dtype; }
int fb_tensor_ndim(const fb_tensor *t) { return t->ndim; }
const int64_t *fb_tensor_shape(const fb_tensor *t) { return t->shape; }
int64_t fb_tensor_numel(const fb_tensor *t) { return t->numel; }
size_t fb_tensor_nbytes(const fb_tensor *t) { return t->nbytes; }

void *fb_tensor_mutable_data(fb_tensor *t) { return t->owns_data ? t->data : NULL; }

fb_status fb_tensor_data(const fb_tensor *t, const void **data)
{
    if (t->data || !t->src) {
        *data = t->data;
        return FB_OK;
    }
    const uint8_t *base;
    fb_status st = fb_source_map(t->src, &base);
    if (st) return fb_error_prefix(st, "tensor '%s'", t->name);
    const uint8_t *p = base + t->src_offset;
    size_t align = fb_dtype_size(t->dtype);
    if ((uintptr_t)p % align == 0) {
        *data = p;
        return FB_OK;
    }
    /* safetensors does not pad between tensors, so a file written elsewhere may hold a
     * tensor at an offset its dtype cannot be read from: hand out an aligned private copy,
     * kept with the tensor (under the file's lock, as several threads may ask at once). */
    pthread_mutex_lock(&t->src->lock);
    if (!t->data) {
        void *copy = fb_malloc(t->nbytes);
        if (copy) {
            memcpy(copy, p, t->nbytes);
            ((fb_tensor *)t)->data = copy;
            ((fb_tensor *)t)->owns_data = 1;
        }
    }
    pthread_mutex_unlock(&t->src->lock);
    *data = t->data;
    return t->data ? FB_OK : FB_ERR_NOMEM;
}

fb_status fb_tensor_read(const fb_tensor *t, size_t offset, size_t n, void *dst)
{
    if (t->src && !t->data) {
        fb_status st = fb_source_pread(t->src, t->src_offset + offset, n, dst);
        return st ? fb_error_prefix(st, "tensor '%s'", t->name) : FB_OK;
    }
    if (n) memcpy(dst, (const uint8_t *)t->data + offset, n);
    return FB_OK;
}

void fb_tensor_release_cache(const fb_tensor *t)
{
    if (t->src && !t->data && t->nbytes)
        if (t->src->fd >= 0)
            posix_fadvise(t->src->fd, (off_t)t->src_offset, (off_t)t->nbytes, POSIX_FADV_DONTNEED);
}

fb_status fb_tensor_view(const fb_tensor *t, size_t offset, size_t n, void *scratch,
                         const void **out)
{
    if (t->src && !t->data) {
        *out = scratch;
        return fb_tensor_read(t, offset, n, scratch);
    }
    *out = (const uint8_t *)t->data + offset;
    return FB_OK;
}

fb_status fb_tensor_to_f32_copy(const fb_tensor *t, float **out)
{
    const int64_t n = fb_tensor_numel(t);
    *out = fb_malloc((size_t)(n ? n : 1) * sizeof **out);
    if (!*out) return FB_ERR_NOMEM;
    fb_status st = fb_tensor_to_f32(t, *out);
    if (st) {
        fb_free(*out);
        *out = NULL;
    }
    return st;
}

fb_status fb_tensor_to_f32(const fb_tensor *t, float *dst)
{
    if (!fb_dtype_is_float(t->dtype))
        return fb_set_error(FB_ERR_UNSUPPORTED, "tensor '%s' is %s, not a float tensor", t->name,
                            fb_dtype_name(t->dtype));
    const void *p = NULL;
    fb_status st = fb_tensor_data(t, &p);
    if (st) return st;
    return fb_convert_to_f32(t->dtype, p, dst, t->numel);
}

fb_status fb_shape_size(const char *what, fb_dtype dtype, int ndim, const int64_t *shape,
                        int64_t *numel, size_t *nbytes)
{
    if ((unsigned)dtype >= FB_DTYPE_COUNT)
        return fb_set_error(FB_ERR_ARG, "%s: invalid dtype %d", what, (int)dtype);
    if (ndim < 0 || ndim > FB_MAX_DIMS)
        return fb_set_error(FB_ERR_ARG, "%s: rank %d is outside 0..%d", what, ndim, FB_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return fb_set_error(FB_ERR_ARG, "%s: negative dimension %lld", what,
                                (long long)shape[i]);
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return fb_set_error(FB_ERR_ARG, "%s: element count overflows", what);
        n *= shape[i];
    }
    size_t es = fb_dtype_size(dtype);
    if ((uint64_t)n > SIZE_MAX / es)
        return fb_set_error(FB_ERR_ARG, "%s: byte size overflows", what);
    *numel = n;
    *nbytes = (size_t)n * es;
    return FB_OK;
}

fb_status fb_model_create(fb_model **out)
{
    *out = fb_calloc(1, sizeof **out);
    if (!*out) return FB_ERR_NOMEM;
    fb_strmap_init(&(*out)->index);
    return FB_OK;
}

static void tensor_free(fb_tensor *t)
{
    if (!t) return;
    if (t->owns_data == FB_OWNS_PAGES) fb_free_pages(t->data, t->nbytes);
    else if (t->owns_data) fb_free(t->data);
    if (t->src) fb_source_unref(t->src);
    fb_free(t->name);
    fb_free(t);
}

void fb_model_free(fb_model *m)
{
    if (!m) return;
    for (int64_t i = 0; i < m->count; i++) tensor_free(m->tensors[i]);
    fb_free(m->tensors);
    fb_strmap_clear(&m->index);
    for (int64_t i = 0; i < m->meta_count; i++) {
        fb_free(m->meta_keys[i]);
        fb_free(m->meta_values[i]);
    }
    fb_free(m->meta_keys);
    fb_free(m->meta_values);
    fb_free(m->path);
    fb_free(m->hub_id);
    fb_free(m->hub_commit);
    fb_free(m);
}

const char *fb_model_label(const fb_model *m) { return m->path ? m->path : "in memory"; }

/* Makes a tensor record with name, dtype and shape checked; no bytes yet. */
static fb_status tensor_new(const fb_model *m, const char *name, fb_dtype dtype, int ndim,
                            const int64_t *shape, fb_tensor **out)
{
    *out = NULL;
    if (!name || !*name) return fb_set_error(FB_ERR_ARG, "tensor name is empty");
    if (fb_strmap_get(&m->index, name) >= 0)
        return fb_set_error(FB_ERR_ARG, "tensor '%s' is already in the model", name);
    fb_tensor *t = fb_calloc(1, sizeof *t);
    if (!t) return FB_ERR_NOMEM;
    fb_status st = fb_shape_size(name, dtype, ndim, shape, &t->numel, &t->nbytes);
    if (st) {
        fb_free(t);
        return fb_error_prefix(st, "tensor");
    }
    t->name = fb_strdup(name);
    if (!t->name) {
        fb_free(t);
        return FB_ERR_NOMEM;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    *out = t;
    return FB_OK;
}

/* Takes ownership of t: appends it, or frees it on failure. */
static fb_status model_append(fb_model *m, fb_tensor *t)
{
    if (m->count == m->cap) {
        int64_t cap = m->cap ? 2 * m->cap : 16;
        fb_tensor **p = fb_realloc(m->tensors, (size_t)cap * sizeof *p);
        if (!p) {
            tensor_free(t);
            return FB_ERR_NOMEM;
        }
        m->tensors = p;
        m->cap = cap;
    }
    fb_status st = fb_strmap_put(&m->index, t->name, m->count);
    if (st) {
        tensor_free(t);
        return st == FB_ERR_NOMEM ? st : FB_ERR_INTERNAL;
    }
    m->tensors[m->count++] = t;
    return FB_OK;
}

fb_status fb_model_add_tensor(fb_model *m, const char *name, fb_dtype dtype, int ndim,
                              const int64_t *shape, const void *data, fb_tensor **t_out)
{
    fb_tensor *t;
    fb_status st = tensor_new(m, name, dtype, ndim, shape, &t);
    if (st) return st;
    int pages = t->nbytes >= FB_PAGES_MIN;
    t->data = pages ? fb_alloc_pages(t->nbytes)
                    : data ? fb_malloc(t->nbytes) : fb_calloc(1, t->nbytes);
    if (!t->data) {
        tensor_free(t);
        return FB_ERR_NOMEM;
    }
    t->owns_data = pages ? FB_OWNS_PAGES : 1;
    if (data && t->nbytes) memcpy(t->data, data, t->nbytes);
    st = model_append(m, t);
    if (!st && t_out) *t_out = t;
    return st;
}

fb_status fb_model_add_tensor_borrowed(fb_model *m, const char *name, fb_dtype dtype, int ndim,
                                       const int64_t *shape, const void *data)
{
    fb_tensor *t;
    fb_status st = tensor_new(m, name, dtype, ndim, shape, &t);
    if (st) return st;
    if (!data && t->nbytes) {
        tensor_free(t);
        return fb_set_error(FB_ERR_ARG, "tensor '%s': borrowed data is NULL", name);
    }
    t->data = (void *)data;
    return model_append(m, t);
}

fb_status fb_model_add_tensor_lazy(fb_model *m, const char *name, fb_dtype dtype, int ndim,
                                   const int64_t *shape, fb_source *src, uint64_t offset)
{
    fb_tensor *t;
    fb_status st = tensor_new(m, name, dtype, ndim, shape, &t);
    if (st) return st;
    fb_source_ref(src);
    t->src = src;
    t->src_offset = offset;
    return model_append(m, t);
}

fb_status fb_model_declare_tensor(fb_model *m, const char *name, fb_dtype dtype, int ndim,
                                  const int64_t *shape)
{
    fb_tensor *t;
    fb_status st = tensor_new(m, name, dtype, ndim, shape, &t);
    return st ? st : model_append(m, t);
}

int64_t fb_model_num_tensors(const fb_model *m) { return m->count; }

const fb_tensor *fb_model_tensor(const fb_model *m, int64_t i)
{
    return (i >= 0 && i < m->count) ? m->tensors[i] : NULL;
}

const fb_tensor *fb_model_find(const fb_model *m, const char *name)
{
    int64_t i = fb_strmap_get(&m->index, name);
    return i >= 0 ? m->tensors[i] : NULL;
}

int64_t fb_model_num_params(const fb_model *m)
{
    int64_t n = 0;
    for (int64_t i = 0; i < m->count; i++) n += m->tensors[i]->numel;
    return n;
}

fb_status fb_model_set_metadata(fb_model *m, const char *key, const char *value)
{
    char *v = fb_strdup(value);
    if (!v) return FB_ERR_NOMEM;
    for (int64_t i = 0; i < m->meta_count; i++) {
        if (strcmp(m->meta_keys[i], key) == 0) {
            fb_free(m->meta_values[i]);
            m->meta_values[i] = v;
            return FB_OK;
        }
    }
    char *k = fb_strdup(key);
    if (!k) {
        fb_free(v);
        return FB_ERR_NOMEM;
    }
    if (m->meta_count == m->meta_cap) {
        int64_t cap = m->meta_cap ? 2 * m->meta_cap : 8;
        char **keys = fb_realloc(m->meta_keys, (size_t)cap * sizeof *keys);
        if (keys) m->meta_keys = keys;
        char **vals = keys ? fb_realloc(m->meta_values, (size_t)cap * sizeof *vals) : NULL;
        if (vals) m->meta_values = vals;
        if (!keys || !vals) {
            fb_free(k);
            fb_free(v);
            return FB_ERR_NOMEM;
        }
        m->meta_cap = cap;
    }
    m->meta_keys[m->meta_count] = k;
    m->meta_values[m->meta_count] = v;
    m->meta_count++;
    return FB_OK;
}

const char *fb_model_get_metadata(const fb_model *m, const char *key)
{
    for (int64_t i = 0; i < m->meta_count; i++)
        if (strcmp(m->meta_keys[i], key) == 0) return m->meta_values[i];
    return NULL;
}

int64_t fb_model_num_metadata(const fb_model *m) { return m->meta_count; }

void fb_model_metadata_at(const fb_model *m, int64_t i, const char **key, const char **value)
{
    *key = m->meta_keys[i];
    *value = m->meta_values[i];
}
