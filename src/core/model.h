/*
 * model.h: the internals of tensors and models (state dicts), shared by io/, pool/ and
 * method/. A tensor's bytes are in one of three places: owned heap memory, borrowed memory
 * (the caller's, or a view), or a byte range of an input file (lazy: read or mapped on
 * demand).
 */
#ifndef FB_CORE_MODEL_H
#define FB_CORE_MODEL_H

#include "fusionbench.h"
#include "source.h"
#include "strmap.h"

enum { FB_OWNS_PAGES = 2 }; /* owns_data: the bytes came from fb_alloc_pages */

struct fb_tensor {
    char *name;
    fb_dtype dtype;
    int ndim;
    int64_t shape[FB_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    void *data;        /* owned or borrowed bytes; NULL for a lazy tensor */
    int owns_data;     /* 0: borrowed or lazy; 1: fb_malloc'd; FB_OWNS_PAGES: fb_alloc_pages'd */
    fb_source *src;    /* lazy tensors: the file holding the bytes */
    uint64_t src_offset; /* absolute offset of the bytes in src */
};

struct fb_model {
    fb_tensor **tensors; /* pointers, so tensors stay put as the model grows */
    int64_t count, cap;
    fb_strmap index;     /* name -> position */
    char **meta_keys, **meta_values;
    int64_t meta_count, meta_cap;
    char *path;          /* where the model was loaded from, for messages; may be NULL */
    char *hub_id, *hub_commit; /* a model found in the hub cache: its id and snapshot */
};

/* numel and nbytes for a shape, with overflow checks; FB_ERR_ARG names `what`. */
fb_status fb_shape_size(const char *what, fb_dtype dtype, int ndim, const int64_t *shape,
                        int64_t *numel, size_t *nbytes);

/* Appends a tensor whose bytes live in src at offset (the model takes a reference). */
fb_status fb_model_add_tensor_lazy(fb_model *model, const char *name, fb_dtype dtype, int ndim,
                                   const int64_t *shape, fb_source *src, uint64_t offset);

/* Appends a tensor with a name, dtype and shape but no bytes: an output layout entry. */
fb_status fb_model_declare_tensor(fb_model *model, const char *name, fb_dtype dtype, int ndim,
                                  const int64_t *shape);

/* Reads bytes [offset, offset + n) of the tensor into dst. */
fb_status fb_tensor_read(const fb_tensor *t, size_t offset, size_t n, void *dst);

/* Advises the kernel that the tensor's file bytes will not be read again, so their page-cache
 * pages can go first (a lazy tensor; nothing for one in memory). The file is not touched. */
void fb_tensor_release_cache(const fb_tensor *t);

/* Bytes [offset, offset + n) of the tensor: a direct pointer when the tensor is in memory,
 * else read into scratch (n bytes) and scratch returned. */
fb_status fb_tensor_view(const fb_tensor *t, size_t offset, size_t n, void *scratch,
                         const void **out);

/* The tensor as a new f32 array (fb_malloc'd, at least one element); *out NULL on failure. */
fb_status fb_tensor_to_f32_copy(const fb_tensor *t, float **out);

/* A label for messages: the model's path, or "in memory". */
const char *fb_model_label(const fb_model *model);

#endif
