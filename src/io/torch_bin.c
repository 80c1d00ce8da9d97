/*
 * torch_bin.c: PyTorch checkpoints (torch.save's zip format: pytorch_model.bin) read without
 * running pickle.
 *
 * The archive holds <prefix>/data.pkl, a pickle of the state dict, and <prefix>/data/<key>, the
 * raw bytes of each storage. data.pkl is interpreted by a small pickle machine that knows only
 * the opcodes a state dict uses and only these globals: collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 and _rebuild_parameter(_with_state), and the typed storage
 * classes (torch.FloatStorage, ...). It never calls anything: REDUCE on an allowed global builds
 * a value (a dict, a tensor description), and any other global is refused by name before
 * anything else happens ("it calls posix.system"). Storages come in as persistent ids
 * ('storage', type, key, location, numel) and are checked against their zip entries.
 *
 * Tensors are then lazy, like safetensors ones: a contiguous tensor points into its storage's
 * bytes in the file (tied weights share them); a strided one (a transpose saved as such) is
 * gathered into memory at load. Bytes are little-endian, as torch.save writes them on x86.
 */
#include "torch_bin.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/model.h"
#include "core/status.h"
#include "zip.h"

enum { MAX_PICKLE = 256 << 20, MAX_MEMO = 1 << 24, MAX_DEPTH = 1 << 20 };

typedef enum vkind {
    V_NONE,
    V_BOOL,
    V_INT,
    V_FLOAT,
    V_STR,
    V_TUPLE,
    V_LIST,
    V_DICT,
    V_GLOBAL,
    V_STORAGE,
    V_TENSOR
} vkind;

/* The globals a state dict may name. */
typedef enum gkind { G_ORDERED_DICT, G_REBUILD_TENSOR, G_REBUILD_PARAMETER, G_STORAGE } gkind;

typedef struct value value;
struct value {
    vkind kind;
    int64_t i;     /* V_INT, V_BOOL */
    const char *s; /* V_STR (borrowed from the pickle text, NUL-terminated copy) */
    value **items; /* V_TUPLE, V_LIST; V_DICT: key, value, key, value, ... */
    int64_t n, cap;
    gkind g;         /* V_GLOBAL */
    fb_dtype dtype;  /* V_GLOBAL storage class, V_STORAGE */
    const char *key; /* V_STORAGE */
    int64_t numel;   /* V_STORAGE */
    value *storage;  /* V_TENSOR */
    int64_t offset;
    int ndim;
    int64_t shape[FB_MAX_DIMS], stride[FB_MAX_DIMS];
};

typedef struct machine {
    const char *path;
    const uint8_t *p, *end, *start;
    value **stack;
    int64_t sp, stack_cap;
    int64_t *marks;
    int64_t nmarks, marks_cap;
    value **memo;
    int64_t memo_cap, memo_len; /* memo_len: one past the highest index stored */
    value **all;                /* every value made, to free */
    int64_t nall, all_cap;
    char **strings;
    int64_t nstrings, strings_cap;
} machine;

static const struct {
    const char *name;
    fb_dtype dtype;
} storages[] = {
    {"FloatStorage", FB_F32},  {"HalfStorage", FB_F16}, {"BFloat16Storage", FB_BF16},
    {"DoubleStorage", FB_F64}, {"LongStorage", FB_I64}, {"IntStorage", FB_I32},
    {"ShortStorage", FB_I16},  {"CharStorage", FB_I8},  {"ByteStorage", FB_U8},
    {"BoolStorage", FB_BOOL},
};

static fb_status fail(machine *m, const char *what)
{
    return fb_set_error(FB_ERR_FORMAT, "%s: data.pkl: %s (at byte %lld)", m->path, what,
                        (long long)(m->p - m->start));
}

static value *new_value(machine *m, vkind kind)
{
    if (fb_reserve(&m->all, &m->all_cap, m->nall + 1, sizeof *m->all)) return NULL;
    value *v = fb_calloc(1, sizeof *v);
    if (v) {
        v->kind = kind;
        m->all[m->nall++] = v;
    }
    return v;
}

static fb_status push(machine *m, value *v)
{
    if (!v) return FB_ERR_NOMEM;
    if (m->sp >= MAX_DEPTH) return fail(m, "stack deeper than 2^20");
    if (fb_reserve(&m->stack, &m->stack_cap, m->sp + 1, sizeof *m->stack)) return FB_ERR_NOMEM;
    m->stack[m->sp++] = v;
    return FB_OK;
}

static value *pop(machine *m)
{
    int64_t floor = m->nmarks ? m->marks[m->nmarks - 1] : 0;
    return m->sp > floor ? m->stack[--m->sp] : NULL;
}

static fb_status append_item(value *c, value *v)
{
    if (fb_reserve(&c->items, &c->cap, c->n + 1, sizeof *c->items)) return FB_ERR_NOMEM;
    c->items[c->n++] = v;
    return FB_OK;
}

/* Bytes of the pickle text, checked against its end. */
static const uint8_t *take(machine *m, size_t n)
{
    if ((size_t)(m->end - m->p) < n) return NULL;
    const uint8_t *at = m->p;
    m->p += n;
    return at;
}

static uint64_t le(const uint8_t *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static fb_status push_string(machine *m, size_t len, vkind kind)
{
    const uint8_t *b = take(m, len);
    if (!b) return fail(m, "a string runs past the end");
    char *s = fb_strndup((const char *)b, len);
    if (!s || fb_reserve(&m->strings, &m->strings_cap, m->nstrings + 1, sizeof *m->strings)) {
        fb_free(s);
        return FB_ERR_NOMEM;
    }
    m->strings[m->nstrings++] = s;
    value *v = new_value(m, kind);
    if (v) v->s = s;
    return push(m, v);
}

/* GLOBAL "module\nname\n": only the few a state dict needs; anything else is refused here,
 * before it could be called. */
static fb_status push_global(machine *m, const char *module, const char *name)
{
    value *v = new_value(m, V_GLOBAL);
    if (!v) return FB_ERR_NOMEM;
    if (!strcmp(module, "collections") && !strcmp(name, "OrderedDict"))
        v->g = G_ORDERED_DICT;
    else if (!strcmp(module, "torch._utils") && !strcmp(name, "_rebuild_tensor_v2"))
        v->g = G_REBUILD_TENSOR;
    else if (!strcmp(module, "torch._utils") && (!strcmp(name, "_rebuild_parameter") ||
                                                 !strcmp(name, "_rebuild_parameter_with_state")))
        v->g = G_REBUILD_PARAMETER;
    else {
        int found = 0;
        for (size_t i = 0; !strcmp(module, "torch") && i < sizeof storages / sizeof storages[0];
             i++)
            if (!strcmp(name, storages[i].name)) {
                v->g = G_STORAGE;
                v->dtype = storages[i].dtype;
                found = 1;
            }
        if (!found)
            return fb_set_error(FB_ERR_FORMAT,
                                "refusing to load %s: its pickle calls %s.%s, which a state dict "
                                "does not need (nothing was run)",
                                m->path, module, name);
    }
    return push(m, v);
}

static int int_of(const value *v, int64_t *out)
{
    if (!v || (v->kind != V_INT && v->kind != V_BOOL)) return 0;
    *out = v->i;
    return 1;
}

/* A tuple of at most FB_MAX_DIMS non-negative integers. */
static int dims_of(const value *v, int *ndim, int64_t *dims)
{
    if (!v || v->kind != V_TUPLE || v->n > FB_MAX_DIMS) return 0;
    for (int64_t i = 0; i < v->n; i++)
        if (!int_of(v->items[i], &dims[i]) || dims[i] < 0) return 0;
    *ndim = (int)v->n;
    return 1;
}

/* REDUCE: the callable on the stack applied to its argument tuple, for the allowed ones. */
static fb_status reduce(machine *m)
{
    value *args = pop(m), *fn = pop(m);
    if (!args || !fn) return fail(m, "REDUCE with an empty stack");
    if (fn->kind != V_GLOBAL || args->kind != V_TUPLE)
        return fail(m, "REDUCE of something not callable");
    value *out = NULL;
    switch (fn->g) {
    case G_ORDERED_DICT:
        if (args->n) return fail(m, "OrderedDict with arguments");
        out = new_value(m, V_DICT);
        break;
    case G_REBUILD_PARAMETER:
        if (args->n < 1 || args->items[0]->kind != V_TENSOR)
            return fail(m, "_rebuild_parameter without a tensor");
        out = args->items[0];
        break;
    case G_REBUILD_TENSOR: {
        /* (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
        if (args->n < 6 || args->n > 7 || args->items[0]->kind != V_STORAGE)
            return fail(m, "_rebuild_tensor_v2 with unexpected arguments");
        if (!(out = new_value(m, V_TENSOR))) return FB_ERR_NOMEM;
        int nd2;
        out->storage = args->items[0];
        if (!int_of(args->items[1], &out->offset) || out->offset < 0 ||
            !dims_of(args->items[2], &out->ndim, out->shape) ||
            !dims_of(args->items[3], &nd2, out->stride) || nd2 != out->ndim)
            return fail(m, "_rebuild_tensor_v2 with a bad offset, size or stride");
        break;
    }
    case G_STORAGE: return fail(m, "a storage class called directly");
    }
    return push(m, out);
}

/* BINPERSID: ('storage', storage class, key, location, numel). */
static fb_status persistent(machine *m)
{
    value *t = pop(m);
    if (!t || t->kind != V_TUPLE || t->n != 5 || t->items[0]->kind != V_STR ||
        strcmp(t->items[0]->s, "storage") || t->items[1]->kind != V_GLOBAL ||
        t->items[1]->g != G_STORAGE || t->items[2]->kind != V_STR)
        return fail(m, "a persistent id that is not ('storage', type, key, location, numel)");
    value *s = new_value(m, V_STORAGE);
    if (!s) return FB_ERR_NOMEM;
    s->dtype = t->items[1]->dtype;
    s->key = t->items[2]->s;
    if (!int_of(t->items[4], &s->numel) || s->numel < 0) return fail(m, "a storage of bad size");
    return push(m, s);
}

static fb_status memo_put(machine *m, uint64_t id)
{
    if (!m->sp) return fail(m, "memo store with an empty stack");
    if (id >= MAX_MEMO) return fail(m, "memo index past 2^24");
    int64_t old = m->memo_cap;
    if (fb_reserve(&m->memo, &m->memo_cap, (int64_t)id + 1, sizeof *m->memo)) return FB_ERR_NOMEM;
    for (int64_t i = old; i < m->memo_cap; i++)
        m->memo[i] = NULL;
    m->memo[id] = m->stack[m->sp - 1];
    if ((int64_t)id >= m->memo_len) m->memo_len = (int64_t)id + 1;
    return FB_OK;
}

static fb_status memo_get(machine *m, uint64_t id)
{
    if (id >= (uint64_t)m->memo_len || !m->memo[id])
        return fail(m, "memo fetch of an index never stored");
    return push(m, m->memo[id]);
}

/* The items above the topmost mark, removed from the stack into container c (or dropped). */
static fb_status pop_mark(machine *m, value *c)
{
    if (!m->nmarks) return fail(m, "no MARK to pop to");
    int64_t from = m->marks[--m->nmarks];
    fb_status st = FB_OK;
    for (int64_t i = from; c && !st && i < m->sp; i++)
        st = append_item(c, m->stack[i]);
    m->sp = from;
    return st;
}

static fb_status set_items(machine *m, value *d, int64_t from)
{
    if ((m->sp - from) % 2) return fail(m, "SETITEMS with an odd number of items");
    if (d->kind != V_DICT) return fail(m, "SETITEM on something that is not a dict");
    fb_status st = FB_OK;
    for (int64_t i = from; !st && i < m->sp; i++)
        st = append_item(d, m->stack[i]);
    m->sp = from;
    return st;
}

/* Runs the pickle up to STOP; *result is the object it returns. */
static fb_status run_pickle(machine *m, value **result)
{
    fb_status st = FB_OK;
    while (!st) {
        const uint8_t *op = take(m, 1), *b;
        if (!op) return fail(m, "the pickle ends without STOP");
        switch (*op) {
        case 0x80: /* PROTO */
            if (!(b = take(m, 1)) || *b > 5) return fail(m, "an unknown pickle protocol");
            break;
        case 0x95: /* FRAME: a length hint */
            if (!take(m, 8)) return fail(m, "a cut FRAME");
            break;
        case 'c': { /* GLOBAL module\nname\n */
            const uint8_t *nl1 = memchr(m->p, '\n', (size_t)(m->end - m->p));
            const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(m->end - nl1 - 1)) : NULL;
            if (!nl2 || nl2 - m->p > 512) return fail(m, "a malformed GLOBAL");
            char module[512], name[512];
            snprintf(module, sizeof module, "%.*s", (int)(nl1 - m->p), (const char *)m->p);
            snprintf(name, sizeof name, "%.*s", (int)(nl2 - nl1 - 1), (const char *)nl1 + 1);
            m->p = nl2 + 1;
            st = push_global(m, module, name);
            break;
        }
        case 0x93: { /* STACK_GLOBAL */
            value *name = pop(m), *module = pop(m);
            if (!name || !module || name->kind != V_STR || module->kind != V_STR)
                return fail(m, "STACK_GLOBAL without two strings");
            st = push_global(m, module->s, name->s);
            break;
        }
        case '(': /* MARK */
            if (fb_reserve(&m->marks, &m->marks_cap, m->nmarks + 1, sizeof *m->marks))
                return FB_ERR_NOMEM;
            m->marks[m->nmarks++] = m->sp;
            break;
        case ')': st = push(m, new_value(m, V_TUPLE)); break;
        case ']': st = push(m, new_value(m, V_LIST)); break;
        case '}': st = push(m, new_value(m, V_DICT)); break;
        case 't': { /* TUPLE */
            value *t = new_value(m, V_TUPLE);
            if (!t) return FB_ERR_NOMEM;
            if (!(st = pop_mark(m, t))) st = push(m, t);
            break;
        }
        case 0x85:
        case 0x86:
        case 0x87: { /* TUPLE1, TUPLE2, TUPLE3 */
            int n = *op - 0x84;
            value *t = new_value(m, V_TUPLE);
            if (!t) return FB_ERR_NOMEM;
            int64_t floor = m->nmarks ? m->marks[m->nmarks - 1] : 0;
            if (m->sp - floor < n) return fail(m, "TUPLEn with too few items");
            for (int i = 0; i < n && !st; i++)
                st = append_item(t, m->stack[m->sp - n + i]);
            m->sp -= n;
            if (!st) st = push(m, t);
            break;
        }
        case 'a': { /* APPEND */
            value *v = pop(m);
            if (!v || !m->sp || m->stack[m->sp - 1]->kind != V_LIST)
                return fail(m, "APPEND to no list");
            st = append_item(m->stack[m->sp - 1], v);
            break;
        }
        case 'e': { /* APPENDS */
            if (!m->nmarks) return fail(m, "APPENDS without MARK");
            int64_t from = m->marks[m->nmarks - 1];
            if (from < 1 || m->stack[from - 1]->kind != V_LIST)
                return fail(m, "APPENDS to no list");
            st = pop_mark(m, m->stack[from - 1]);
            break;
        }
        case 's': { /* SETITEM */
            if (m->sp - (m->nmarks ? m->marks[m->nmarks - 1] : 0) < 3)
                return fail(m, "SETITEM with too few items");
            st = set_items(m, m->stack[m->sp - 3], m->sp - 2);
            break;
        }
        case 'u': { /* SETITEMS */
            if (!m->nmarks) return fail(m, "SETITEMS without MARK");
            int64_t from = m->marks[--m->nmarks];
            if (from < 1) return fail(m, "SETITEMS with no dict");
            st = set_items(m, m->stack[from - 1], from);
            break;
        }
        case 'b': { /* BUILD: an OrderedDict's attributes (_metadata) are not needed */
            value *state = pop(m);
            if (!state || !m->sp) return fail(m, "BUILD with too few items");
            if (m->stack[m->sp - 1]->kind != V_DICT && m->stack[m->sp - 1]->kind != V_TENSOR)
                return fail(m, "BUILD on an object that is not a dict or a tensor");
            break;
        }
        case 'K':
            if (!(b = take(m, 1))) return fail(m, "a cut BININT1");
            goto int_value;
        case 'M':
            if (!(b = take(m, 2))) return fail(m, "a cut BININT2");
            goto int_value;
        case 'J':
            if (!(b = take(m, 4))) return fail(m, "a cut BININT");
            goto int_value;
        int_value : {
            value *v = new_value(m, V_INT);
            if (!v) return FB_ERR_NOMEM;
            int n = *op == 'K' ? 1 : *op == 'M' ? 2 : 4;
            v->i = n == 4 ? (int64_t)(int32_t)le(b, 4) : (int64_t)le(b, n);
            st = push(m, v);
            break;
        }
        case 0x8a: { /* LONG1: little-endian two's complement of n <= 8 bytes */
            const uint8_t *nb = take(m, 1);
            if (!nb || *nb > 8 || !(b = take(m, *nb))) return fail(m, "a LONG1 too long or cut");
            value *v = new_value(m, V_INT);
            if (!v) return FB_ERR_NOMEM;
            uint64_t u = le(b, *nb);
            if (*nb && *nb < 8 && (b[*nb - 1] & 0x80)) u |= ~0ull << (8 * *nb);
            v->i = (int64_t)u;
            st = push(m, v);
            break;
        }
        case 'G': /* BINFLOAT: not in a state dict's structure, kept as a number */
            if (!take(m, 8)) return fail(m, "a cut BINFLOAT");
            st = push(m, new_value(m, V_FLOAT));
            break;
        case 0x88:
        case 0x89: { /* NEWTRUE, NEWFALSE */
            value *v = new_value(m, V_BOOL);
            if (v) v->i = *op == 0x88;
            st = push(m, v);
            break;
        }
        case 'N': st = push(m, new_value(m, V_NONE)); break;
        case 'X':
        case 0x8c:
        case 'T':
        case 'U': { /* BINUNICODE, SHORT_BINUNICODE, BINSTRING, SHORT_BINSTRING */
            int n = *op == 'X' || *op == 'T' ? 4 : 1;
            if (!(b = take(m, (size_t)n))) return fail(m, "a cut string length");
            uint64_t len = le(b, n);
            if (len > (uint64_t)(m->end - m->p)) return fail(m, "a string runs past the end");
            st = push_string(m, (size_t)len, V_STR);
            break;
        }
        case 'Q': st = persistent(m); break;
        case 'R': st = reduce(m); break;
        case 'q':
            if (!(b = take(m, 1))) return fail(m, "a cut BINPUT");
            st = memo_put(m, b[0]);
            break;
        case 'r':
            if (!(b = take(m, 4))) return fail(m, "a cut LONG_BINPUT");
            st = memo_put(m, le(b, 4));
            break;
        case 0x94: st = memo_put(m, (uint64_t)m->memo_len); break; /* MEMOIZE */
        case 'h':
            if (!(b = take(m, 1))) return fail(m, "a cut BINGET");
            st = memo_get(m, b[0]);
            break;
        case 'j':
            if (!(b = take(m, 4))) return fail(m, "a cut LONG_BINGET");
            st = memo_get(m, le(b, 4));
            break;
        case '0':
            if (!pop(m)) return fail(m, "POP with an empty stack");
            break;
        case '1': st = pop_mark(m, NULL); break; /* POP_MARK */
        case '2':
            if (!m->sp) return fail(m, "DUP with an empty stack");
            st = push(m, m->stack[m->sp - 1]);
            break;
        case '.': /* STOP */
            if (m->sp != 1 || m->nmarks) return fail(m, "STOP with more than one object left");
            *result = m->stack[0];
            return FB_OK;
        default: {
            char what[64];
            snprintf(what, sizeof what, "opcode 0x%02x, which a state dict does not use", *op);
            return fail(m, what);
        }
        }
    }
    return st;
}

static void machine_free(machine *m)
{
    for (int64_t i = 0; i < m->nall; i++) {
        fb_free(m->all[i]->items);
        fb_free(m->all[i]);
    }
    for (int64_t i = 0; i < m->nstrings; i++)
        fb_free(m->strings[i]);
    fb_free(m->all);
    fb_free(m->strings);
    fb_free(m->stack);
    fb_free(m->marks);
    fb_free(m->memo);
}

/* One tensor of the state dict into the model: lazy when contiguous, gathered otherwise. */
static fb_status add_tensor(const char *path, fb_source *src, const fb_zip *zip, const char *prefix,
                            const char *name, const value *t, fb_model *model)
{
    const value *s = t->storage;
    char entry[600];
    snprintf(entry, sizeof entry, "%s/data/%s", prefix, s->key);
    const fb_zip_entry *e = fb_zip_find(zip, entry);
    size_t es = fb_dtype_size(s->dtype);
    if (!e)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: tensor '%s': its storage '%s' is not in the archive", path, name,
                            entry);
    if ((uint64_t)s->numel > e->size / es || e->size != (uint64_t)s->numel * es)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: tensor '%s': storage '%s' holds %llu bytes, not %lld %s elements",
                            path, name, entry, (unsigned long long)e->size, (long long)s->numel,
                            fb_dtype_name(s->dtype));
    /* every element the tensor addresses must lie in its storage */
    int64_t numel = 1, last = t->offset, expect = 1;
    int contiguous = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] == 0)
            numel = 0;
        else if (numel &&
                 t->stride[d] > (INT64_MAX - last) / (t->shape[d] > 1 ? t->shape[d] - 1 : 1))
            return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s': strides overflow", path, name);
        if (numel) last += (t->shape[d] - 1) * t->stride[d];
        if (t->shape[d] != 1 && t->stride[d] != expect) contiguous = 0;
        expect *= t->shape[d] ? t->shape[d] : 1;
        if (numel) numel *= t->shape[d];
    }
    if (numel && last >= s->numel)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: tensor '%s': offset %lld, shape and strides reach element %lld of "
                            "a storage of %lld",
                            path, name, (long long)t->offset, (long long)last, (long long)s->numel);
    if (contiguous || !numel)
        return fb_model_add_tensor_lazy(model, name, s->dtype, t->ndim, t->shape, src,
                                        e->offset + (uint64_t)t->offset * es);
    /* strided: gather element by element, in row-major order */
    size_t span = (size_t)(last - t->offset + 1) * es;
    uint8_t *raw = fb_malloc(span), *dense = fb_malloc((size_t)numel * es);
    fb_status st = raw && dense
                       ? fb_source_pread(src, e->offset + (uint64_t)t->offset * es, span, raw)
                       : FB_ERR_NOMEM;
    int64_t idx[FB_MAX_DIMS] = {0};
    for (int64_t k = 0; !st && k < numel; k++) {
        int64_t at = 0;
        for (int d = 0; d < t->ndim; d++)
            at += idx[d] * t->stride[d];
        memcpy(dense + (size_t)k * es, raw + (size_t)at * es, es);
        for (int d = t->ndim - 1; d >= 0 && ++idx[d] == t->shape[d]; d--)
            idx[d] = 0;
    }
    if (!st) st = fb_model_add_tensor(model, name, s->dtype, t->ndim, t->shape, dense, NULL);
    fb_free(raw);
    fb_free(dense);
    return st;
}

fb_status fb_torch_bin_read(const char *path, fb_model *model)
{
    fb_source *src = NULL;
    fb_zip zip = {0};
    machine m = {.path = path};
    uint8_t *pkl = NULL;
    fb_status st = fb_source_open(path, &src);
    if (st) return st;
    if (!fb_zip_sniff(src)) {
        st = fb_set_error(FB_ERR_UNSUPPORTED,
                          "%s: not a zip archive: PyTorch's legacy format (before 1.6) or not a "
                          "checkpoint; re-save it with a current torch or as safetensors",
                          path);
        goto done;
    }
    if ((st = fb_zip_open(src, &zip))) goto done;
    /* <prefix>/data.pkl, exactly one */
    const fb_zip_entry *pe = NULL;
    for (int64_t i = 0; i < zip.count; i++) {
        const char *n = zip.entries[i].name, *slash = strchr(n, '/');
        if (slash && !strcmp(slash, "/data.pkl")) {
            if (pe) {
                st = fb_set_error(FB_ERR_FORMAT, "%s: two data.pkl entries", path);
                goto done;
            }
            pe = &zip.entries[i];
        }
    }
    if (!pe) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: no data.pkl in the archive (not torch.save's format)",
                          path);
        goto done;
    }
    if (pe->size > MAX_PICKLE) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: data.pkl is %llu bytes, over the %d-byte limit", path,
                          (unsigned long long)pe->size, MAX_PICKLE);
        goto done;
    }
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%.*s", (int)(strchr(pe->name, '/') - pe->name), pe->name);
    if (!(pkl = fb_malloc(pe->size ? (size_t)pe->size : 1))) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    if ((st = fb_source_pread(src, pe->offset, (size_t)pe->size, pkl))) goto done;
    m.p = m.start = pkl;
    m.end = pkl + pe->size;
    value *root = NULL;
    if ((st = run_pickle(&m, &root))) goto done;
    if (root->kind != V_DICT) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: the pickle holds no state dict (name -> tensor)",
                          path);
        goto done;
    }
    for (int64_t i = 0; !st && i + 1 < root->n; i += 2) {
        const value *k = root->items[i], *v = root->items[i + 1];
        if (k->kind != V_STR) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: a state dict key is not a string", path);
        } else if (v->kind != V_TENSOR) {
            st = fb_set_error(FB_ERR_FORMAT,
                              "%s: '%s' is not a tensor (a nested dict or other object: only flat "
                              "state dicts are read)",
                              path, k->s);
        } else if ((st = add_tensor(path, src, &zip, prefix, k->s, v, model)) == FB_ERR_ARG) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s' is defined twice", path, k->s);
        }
    }
done:
    machine_free(&m);
    fb_free(pkl);
    fb_zip_close(&zip);
    fb_source_unref(src);
    return st;
}
