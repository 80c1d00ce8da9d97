/*
 * tasks.c: task definitions, splits and image transforms (see tasks.h).
 *
 * Invariant: a task's splits are disjoint. Examples are identified by (source pool, index);
 * train and validation take consecutive runs of one seeded permutation of the source's
 * training pool, and the test split takes either the source's own test pool or, when the
 * source has a single pool, a run of the same permutation before the other two.
 */
#include "tasks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/status.h"
#include "io/dataset.h"
#include "io/render.h"
#include "io/writer.h"

const char *const fb_split_names[FB_NUM_SPLITS] = {"train", "val", "test"};

static const char *const set_keys[] = {"image_size", "channels",   "mean",  "std",
                                       "seed",       "sources",    "tasks", "resample",
                                       "storage",    "image_cache"};

/* how sources are read: the resampler, the preprocessed-image cache, whether the train pool
 * is needed at all */
typedef struct load_opts {
    int resample;
    const char *cache_dir;
    int skip_train;
    int no_train_splits; /* neither train nor val is wanted: a drawn source skips drawing it */
} load_opts;

int fb_taskset_key(const char *key)
{
    for (size_t i = 0; i < sizeof set_keys / sizeof *set_keys; i++)
        if (!strcmp(key, set_keys[i])) return 1;
    return 0;
}

/* A loaded source: its training pool and test pool (test == train when it has one pool). */
typedef struct source {
    const char *name;
    fb_images train, test;
    int single;
} source;

static const char *const source_keys[] = {
    "type",         "path",         "train",       "test",        "images",  "labels",
    "train_images", "train_labels", "test_images", "test_labels", "package", "class_names",
    "fonts",        "chars",        "seed",        "kind",        "clutter", "max_rotation",
    "polarity"};

static fb_status check_keys(const fb_config *node, const char *const *keys, size_t n,
                            const char *what)
{
    if (!node || node->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "%s: %s must be a mapping", fb_cfg_where(node), what);
    for (int i = 0; i < node->count; i++) {
        size_t j = 0;
        while (j < n && strcmp(node->keys[i], keys[j]))
            j++;
        if (j == n)
            return fb_set_error(FB_ERR_CONFIG, "%s: unknown key '%s' in %s",
                                fb_cfg_where(node->items[i]), node->keys[i], what);
    }
    return FB_OK;
}

fb_status fb_cfg_path(const fb_config *n, const char *what, char **out)
{
    *out = NULL;
    const char *rel;
    fb_status st = fb_cfg_string(n, what, &rel);
    if (st) return st;
    char *dir = n->origin ? fb_path_dirname(n->origin) : NULL;
    *out = fb_path_join(dir, rel);
    fb_free(dir);
    return *out ? FB_OK : FB_ERR_NOMEM;
}

/* A path key of a source; NULL if absent. */
static fb_status path_of(const fb_config *src, const char *key, const char *sname, char **out)
{
    *out = NULL;
    const fb_config *n = fb_cfg_map_get(src, key);
    if (fb_cfg_is_null(n)) return FB_OK;
    char where[160];
    snprintf(where, sizeof where, "sources.%s.%s", sname, key);
    return fb_cfg_path(n, where, out);
}

/* Adds "install the Debian package" to a file-not-found error when the source names one. */
static fb_status with_package(fb_status st, const fb_config *src)
{
    const char *pkg = NULL;
    const fb_config *p = fb_cfg_map_get(src, "package");
    if (st != FB_ERR_IO || fb_cfg_is_null(p) || fb_cfg_string(p, "package", &pkg)) return st;
    char msg[FB_ERROR_MAX];
    snprintf(msg, sizeof msg, "%s", fb_last_error());
    return fb_set_error(st, "%s (install the Debian package %s: apt-get install %s)", msg, pkg,
                        pkg);
}

static fb_status load_images(const fb_config *src, const char *sname, const char *type,
                             const char *images_key, const char *labels_key, const char *dir_key,
                             int64_t size, int64_t channels, const load_opts *lo, fb_images *out,
                             int *present)
{
    char *a = NULL, *b = NULL;
    fb_status st = FB_OK;
    *present = 0;
    if (!strcmp(type, "idx")) {
        if ((st = path_of(src, images_key, sname, &a)) ||
            (st = path_of(src, labels_key, sname, &b)))
            goto done;
        if (!a != !b) {
            st = fb_set_error(FB_ERR_CONFIG, "%s: sources.%s needs both %s and %s",
                              fb_cfg_where(src), sname, images_key, labels_key);
            goto done;
        }
        if (a) {
            *present = 1;
            st = with_package(fb_idx_read(a, b, out), src);
        }
    } else if (!strcmp(type, "digits_csv")) {
        if ((st = path_of(src, dir_key, sname, &a))) goto done;
        if (a) {
            *present = 1;
            st = with_package(fb_digits_read(a, out), src);
        }
    } else if (!strcmp(type, "image_folder")) {
        if ((st = path_of(src, dir_key, sname, &a))) goto done;
        if (a) {
            *present = 1;
            const fb_folder_options fo = {.size = size,
                                          .channels = channels,
                                          .resample = lo->resample,
                                          .cache_dir = lo->cache_dir};
            st = with_package(fb_image_folder_read_ex(a, &fo, out), src);
        }
    } else {
        st = fb_set_error(FB_ERR_CONFIG,
                          "%s: sources.%s.type '%s' is not one of idx, digits_csv, "
                          "image_folder, glyphs, procedural",
                          fb_cfg_where(src), sname, type);
    }
done:
    fb_free(a);
    fb_free(b);
    return st;
}

/* Brings every image of d to size x size x channels (CLIP's resize and centre crop). */
static fb_status conform(fb_images *d, int64_t size, int64_t channels, int resample,
                         const char *sname)
{
    if (d->height == size && d->width == size && d->channels == channels) return FB_OK;
    if (d->channels != channels)
        return fb_set_error(FB_ERR_CONFIG, "source %s has %lld channels, the taskpool wants %lld",
                            sname, (long long)d->channels, (long long)channels);
    const size_t img = (size_t)(size * size * channels);
    uint8_t *px = fb_malloc((size_t)d->n * img);
    if (!px) return FB_ERR_NOMEM;
    const size_t src_img = (size_t)(d->height * d->width * d->channels);
    for (int64_t i = 0; i < d->n; i++) {
        const uint8_t *from = d->pixels + (size_t)i * src_img;
        uint8_t *to = px + (size_t)i * img;
        fb_status st =
            resample == FB_RESAMPLE_CLIP
                ? fb_image_resize_crop_clip(from, d->height, d->width, channels, size, to)
                : fb_image_resize_crop(from, d->height, d->width, channels, size, to);
        if (st) {
            fb_free(px);
            return st;
        }
    }
    fb_free(d->pixels);
    d->pixels = px;
    d->height = d->width = size;
    return FB_OK;
}

/* An optional number key of a generated source. */
static fb_status gen_number(const fb_config *src, const char *key, const char *sname, double dflt,
                            double *out)
{
    const fb_config *n = fb_cfg_map_get(src, key);
    *out = dflt;
    if (fb_cfg_is_null(n)) return FB_OK;
    char where[160];
    snprintf(where, sizeof where, "sources.%s.%s", sname, key);
    return fb_cfg_double(n, where, out);
}

/* Class names live with the training pool; one not drawn takes the test pool's. */
static fb_status names_to_train(source *out)
{
    if (out->train.class_names || !out->test.class_names) return FB_OK;
    out->train.class_names = out->test.class_names;
    out->train.num_classes = out->test.num_classes;
    out->test.class_names = NULL;
    return FB_OK;
}

/* A source drawn rather than read (io/render.h): `glyphs` renders `chars` from `fonts`,
 * `procedural` draws `kind`; `train` and `test` are image counts (test only: one pool). */
static fb_status generate(const fb_config *src, const char *sname, const char *type, int64_t size,
                          int64_t channels, const load_opts *lo, source *out, int *has_train,
                          int *has_test)
{
    if (channels != 1)
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: sources.%s: %s images have one channel, the taskpool wants %lld",
                            fb_cfg_where(src), sname, type, (long long)channels);
    int64_t count[2] = {0, 0};
    static const char *const split_keys[2] = {"train", "test"};
    for (int i = 0; i < 2; i++) {
        const fb_config *n = fb_cfg_map_get(src, split_keys[i]);
        char where[160];
        snprintf(where, sizeof where, "sources.%s.%s", sname, split_keys[i]);
        fb_status st = fb_cfg_is_null(n) ? FB_OK : fb_cfg_int(n, where, &count[i]);
        if (st) return st;
        if (count[i] < 0 || count[i] > (1 << 24))
            return fb_set_error(FB_ERR_CONFIG, "%s: %s must be a count in 0..16777216",
                                fb_cfg_where(n), where);
    }
    if (!count[0])
        return fb_set_error(FB_ERR_CONFIG, "%s: sources.%s draws no training images (set train)",
                            fb_cfg_where(src), sname);
    int64_t seed = 0;
    double rot;
    const fb_config *sd = fb_cfg_map_get(src, "seed");
    fb_status st = fb_cfg_is_null(sd) ? FB_OK : fb_cfg_int(sd, "seed", &seed);
    if (!st) st = gen_number(src, "max_rotation", sname, 10, &rot);
    if (!st && (rot < 0 || rot > 180))
        st = fb_set_error(FB_ERR_CONFIG, "%s: sources.%s.max_rotation must be 0..180 degrees",
                          fb_cfg_where(src), sname);
    int clutter = 0;
    const fb_config *cn = fb_cfg_map_get(src, "clutter");
    if (!st && !fb_cfg_is_null(cn)) st = fb_cfg_bool(cn, "clutter", &clutter);
    int polarity = FB_POLARITY_EITHER;
    const fb_config *pn = fb_cfg_map_get(src, "polarity");
    if (!st && !fb_cfg_is_null(pn)) {
        const char *v;
        static const char *const pol[] = {"either", "dark", "light"};
        if (!(st = fb_cfg_string(pn, "polarity", &v))) {
            polarity = -1;
            for (int i = 0; i < 3; i++)
                if (!strcmp(v, pol[i])) polarity = i;
            if (polarity < 0)
                st = fb_set_error(FB_ERR_CONFIG,
                                  "%s: sources.%s.polarity '%s' is not one of either, dark, light",
                                  fb_cfg_where(pn), sname, v);
        }
    }
    if (st) return st;
    /* with a test pool, an evaluation that needs no training split skips drawing it */
    *has_test = count[1] > 0;
    *has_train = !(*has_test && lo->no_train_splits);
    if (!*has_train) count[0] = 0;
    fb_images *pools[2] = {&out->train, &out->test};
    if (!strcmp(type, "procedural")) {
        const fb_config *kn = fb_cfg_map_get(src, "kind");
        const char *kind;
        if (!kn)
            return fb_set_error(FB_ERR_CONFIG, "%s: sources.%s needs a kind (textures, shapes, "
                                "counts)", fb_cfg_where(src), sname);
        if ((st = fb_cfg_string(kn, "kind", &kind))) return st;
        for (int i = 0; i < 2 && !st; i++)
            if (count[i])
                st = fb_procedural_render(kind, count[i], size, (uint64_t)seed, split_keys[i],
                                          polarity, pools[i]);
        return st ? st : names_to_train(out);
    }
    const fb_config *fn = fb_cfg_map_get(src, "fonts"), *chn = fb_cfg_map_get(src, "chars");
    if (!fn || fn->kind != FB_CFG_SEQ || fn->count < 1 || !chn)
        return fb_set_error(FB_ERR_CONFIG, "%s: sources.%s needs fonts (a list of font files) "
                            "and chars", fb_cfg_where(src), sname);
    fb_glyph_options o = {.n = 0, .size = size, .seed = (uint64_t)seed, .max_rotation = rot,
                          .clutter = clutter, .nfonts = fn->count, .polarity = polarity};
    if ((st = fb_cfg_string(chn, "chars", &o.chars))) return st;
    char **paths = fb_calloc((size_t)fn->count, sizeof *paths);
    if (!paths) return FB_ERR_NOMEM;
    for (int i = 0; i < fn->count && !st; i++)
        st = fb_cfg_path(fn->items[i], "fonts", &paths[i]);
    o.fonts = (const char *const *)paths;
    for (int i = 0; i < 2 && !st; i++)
        if (count[i]) {
            o.n = count[i];
            o.stream = split_keys[i];
            st = with_package(fb_glyphs_render(&o, pools[i]), src);
        }
    for (int i = 0; i < fn->count; i++)
        fb_free(paths[i]);
    fb_free(paths);
    return st ? st : names_to_train(out);
}

static fb_status source_load(const fb_config *src, const char *sname, int64_t size,
                             int64_t channels, const load_opts *lo, source *out)
{
    memset(out, 0, sizeof *out);
    out->name = sname;
    fb_status st =
        check_keys(src, source_keys, sizeof source_keys / sizeof *source_keys, "a source");
    if (st) return st;
    const char *type;
    char where[160];
    snprintf(where, sizeof where, "sources.%s.type", sname);
    const fb_config *t = fb_cfg_map_get(src, "type");
    if (!t)
        return fb_set_error(FB_ERR_CONFIG, "%s: sources.%s needs a type", fb_cfg_where(src), sname);
    if ((st = fb_cfg_string(t, where, &type))) return st;
    int has_train = 0, has_test = 0, has_all = 0;
    const int generated = !strcmp(type, "glyphs") || !strcmp(type, "procedural");
    if (generated) {
        st = generate(src, sname, type, size, channels, lo, out, &has_train, &has_test);
    } else {
        if (!lo->skip_train)
            st = load_images(src, sname, type, "train_images", "train_labels", "train", size,
                             channels, lo, &out->train, &has_train);
        if (!st)
            st = load_images(src, sname, type, "test_images", "test_labels", "test", size,
                             channels, lo, &out->test, &has_test);
    }
    if (!st && !generated && !has_train && !has_test) {
        st = load_images(src, sname, type, "images", "labels", "path", size, channels, lo,
                         &out->train, &has_all);
        if (!st && !has_all)
            st = fb_set_error(FB_ERR_CONFIG, "%s: sources.%s names no data files",
                              fb_cfg_where(src), sname);
    }
    if (!st && !has_train && !has_all) { /* a test set alone: the train pool is empty */
        out->train.height = out->train.width = size;
        out->train.channels = channels;
    }
    if (!st) st = conform(&out->train, size, channels, lo->resample, sname);
    if (!st && has_test) st = conform(&out->test, size, channels, lo->resample, sname);
    if (!st && has_test && out->test.num_classes > out->train.num_classes)
        out->train.num_classes = out->test.num_classes;
    out->single = !has_test;
    /* class names from the config when the files have none */
    const fb_config *cn = fb_cfg_map_get(src, "class_names");
    if (!st && !fb_cfg_is_null(cn)) {
        if (cn->kind != FB_CFG_SEQ || cn->count < out->train.num_classes) {
            st = fb_set_error(FB_ERR_CONFIG, "%s: sources.%s.class_names needs %lld names",
                              fb_cfg_where(cn), sname, (long long)out->train.num_classes);
        } else if (!out->train.class_names) {
            int64_t K = cn->count;
            out->train.class_names = fb_calloc((size_t)K, sizeof(char *));
            if (!out->train.class_names) st = FB_ERR_NOMEM;
            for (int64_t k = 0; k < K && !st; k++) {
                const char *s;
                if ((st = fb_cfg_string(cn->items[k], "class_names", &s))) break;
                if (!(out->train.class_names[k] = fb_strdup(s))) st = FB_ERR_NOMEM;
            }
            if (!st)
                out->train.num_classes = K;
            else if (out->train.class_names) {
                for (int64_t k = 0; k < K; k++)
                    fb_free(out->train.class_names[k]);
                fb_free(out->train.class_names);
                out->train.class_names = NULL;
            }
        }
    }
    if (st) {
        fb_images_free(&out->train);
        fb_images_free(&out->test);
    }
    return st;
}

static void source_free(source *s)
{
    fb_images_free(&s->train);
    fb_images_free(&s->test);
}

/* ---------------------------------------------------------------------- transforms -- */

typedef enum xform {
    X_ROT90,
    X_ROT180,
    X_ROT270,
    X_HFLIP,
    X_VFLIP,
    X_TRANSPOSE,
    X_INVERT,
    X_PERMUTE
} xform;
static const char *const xform_names[] = {"rot90", "rot180",    "rot270", "hflip",
                                          "vflip", "transpose", "invert", "permute"};

/* dst <- transform(src), both S x S x C bytes; perm: S*S source positions for X_PERMUTE. */
static void apply_xform(xform x, const uint8_t *src, uint8_t *dst, int64_t S, int64_t C,
                        const int64_t *perm)
{
    for (int64_t y = 0; y < S; y++)
        for (int64_t xx = 0; xx < S; xx++) {
            int64_t sy = y, sx = xx; /* the source pixel of output (y, xx) */
            switch (x) {
            case X_ROT90: sy = xx, sx = S - 1 - y; break; /* counter-clockwise */
            case X_ROT180: sy = S - 1 - y, sx = S - 1 - xx; break;
            case X_ROT270: sy = S - 1 - xx, sx = y; break;
            case X_HFLIP: sx = S - 1 - xx; break;
            case X_VFLIP: sy = S - 1 - y; break;
            case X_TRANSPOSE: sy = xx, sx = y; break;
            case X_PERMUTE: sy = perm[y * S + xx] / S, sx = perm[y * S + xx] % S; break;
            case X_INVERT: break;
            }
            for (int64_t c = 0; c < C; c++) {
                uint8_t v = src[(sy * S + sx) * C + c];
                dst[(y * S + xx) * C + c] = x == X_INVERT ? (uint8_t)(255 - v) : v;
            }
        }
}

void fb_permutation(int64_t *p, int64_t n, uint64_t key)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        uint64_t r = fb_mix64(key + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull);
        int64_t j = (int64_t)(r % (uint64_t)(i + 1));
        int64_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

/* --------------------------------------------------------------------------- tasks -- */

static const char *const task_keys[] = {"source", "classes", "transform", "train", "val", "test"};

typedef struct task_def {
    const source *src;
    int32_t *map; /* source class -> task class, -1 when unused */
    int64_t src_classes;
    xform xf[8];
    int nxf;
    int64_t *perm; /* pixel permutation for X_PERMUTE, or NULL */
    int64_t want[FB_NUM_SPLITS];
} task_def;

static fb_status class_map(const fb_config *node, const char *tname, const source *s, fb_task *t,
                           task_def *d)
{
    const int64_t K0 = s->train.num_classes;
    d->src_classes = K0;
    d->map = fb_malloc((size_t)K0 * sizeof *d->map);
    if (!d->map) return FB_ERR_NOMEM;
    char **names0 = s->train.class_names;
    char buf[64];
    if (fb_cfg_is_null(node)) { /* all classes as they are */
        for (int64_t k = 0; k < K0; k++)
            d->map[k] = (int32_t)k;
        t->num_classes = K0;
    } else {
        for (int64_t k = 0; k < K0; k++)
            d->map[k] = -1;
        int groups = node->kind == FB_CFG_MAP;
        if (node->kind != FB_CFG_SEQ && !groups)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: tasks.%s.classes must be a list of source "
                                "classes or a mapping of name: [source classes]",
                                fb_cfg_where(node), tname);
        t->num_classes = node->count;
        for (int g = 0; g < node->count; g++) {
            const fb_config *members = node->items[g];
            int nm = groups ? (members->kind == FB_CFG_SEQ ? members->count : -1) : 1;
            if (nm <= 0)
                return fb_set_error(FB_ERR_CONFIG,
                                    "%s: tasks.%s.classes.%s must be a non-empty "
                                    "list of source classes",
                                    fb_cfg_where(members), tname, node->keys[g]);
            for (int m = 0; m < nm; m++) {
                const fb_config *c = groups ? members->items[m] : members;
                int64_t v;
                fb_status st = fb_cfg_int(c, "classes", &v);
                if (st) return st;
                if (v < 0 || v >= K0)
                    return fb_set_error(FB_ERR_CONFIG,
                                        "%s: tasks.%s: class %lld is not in source "
                                        "%s (classes 0..%lld)",
                                        fb_cfg_where(c), tname, (long long)v, s->name,
                                        (long long)K0 - 1);
                if (d->map[v] >= 0)
                    return fb_set_error(FB_ERR_CONFIG, "%s: tasks.%s: class %lld is listed twice",
                                        fb_cfg_where(c), tname, (long long)v);
                d->map[v] = g;
            }
        }
    }
    if (t->num_classes < 2)
        return fb_set_error(FB_ERR_CONFIG, "%s: tasks.%s needs at least 2 classes",
                            fb_cfg_where(node), tname);
    t->class_names = fb_calloc((size_t)t->num_classes, sizeof(char *));
    if (!t->class_names) return FB_ERR_NOMEM;
    for (int64_t k = 0; k < t->num_classes; k++) {
        const char *name = NULL;
        if (node && node->kind == FB_CFG_MAP) {
            name = node->keys[k];
        } else {
            int64_t src_k = k;
            if (node && node->kind == FB_CFG_SEQ) fb_cfg_int(node->items[k], "classes", &src_k);
            if (names0)
                name = names0[src_k];
            else
                snprintf(buf, sizeof buf, "%lld", (long long)src_k), name = buf;
        }
        if (!(t->class_names[k] = fb_strdup(name))) return FB_ERR_NOMEM;
    }
    return FB_OK;
}

static fb_status task_parse(const fb_config *node, const char *tname, const source *srcs, int nsrc,
                            uint64_t seed, fb_task *t, task_def *d)
{
    fb_status st = check_keys(node, task_keys, sizeof task_keys / sizeof *task_keys, "a task");
    if (st) return st;
    const fb_config *sn = fb_cfg_map_get(node, "source");
    const char *sname;
    if (!sn)
        return fb_set_error(FB_ERR_CONFIG, "%s: tasks.%s needs a source", fb_cfg_where(node),
                            tname);
    if ((st = fb_cfg_string(sn, "source", &sname))) return st;
    for (int i = 0; i < nsrc && !d->src; i++)
        if (!strcmp(srcs[i].name, sname)) d->src = &srcs[i];
    if (!d->src)
        return fb_set_error(FB_ERR_CONFIG, "%s: tasks.%s: no source named '%s' under sources",
                            fb_cfg_where(sn), tname, sname);
    if ((st = class_map(fb_cfg_map_get(node, "classes"), tname, d->src, t, d))) return st;
    const fb_config *xn = fb_cfg_map_get(node, "transform");
    if (!fb_cfg_is_null(xn)) {
        if (xn->kind != FB_CFG_SEQ || xn->count > 8)
            return fb_set_error(FB_ERR_CONFIG, "%s: tasks.%s.transform must be a list (of up to 8)",
                                fb_cfg_where(xn), tname);
        for (int i = 0; i < xn->count; i++) {
            const char *s;
            if ((st = fb_cfg_string(xn->items[i], "transform", &s))) return st;
            int j = 0;
            while (j < 8 && strcmp(s, xform_names[j]))
                j++;
            if (j == 8)
                return fb_set_error(FB_ERR_CONFIG,
                                    "%s: tasks.%s: unknown transform '%s' (rot90, "
                                    "rot180, rot270, hflip, vflip, transpose, invert, permute)",
                                    fb_cfg_where(xn->items[i]), tname, s);
            d->xf[d->nxf++] = (xform)j;
            if (j == X_PERMUTE && !d->perm) {
                int64_t S = d->src->train.height;
                if (!(d->perm = fb_malloc((size_t)(S * S) * sizeof *d->perm))) return FB_ERR_NOMEM;
                fb_permutation(d->perm, S * S, fb_rng_key(seed, tname, 1));
            }
        }
    }
    static const int64_t defaults[FB_NUM_SPLITS] = {-1, 0, -1};
    for (int s = 0; s < FB_NUM_SPLITS; s++) {
        const fb_config *n = fb_cfg_map_get(node, fb_split_names[s]);
        d->want[s] = defaults[s];
        if (fb_cfg_is_null(n)) continue;
        if ((st = fb_cfg_int(n, fb_split_names[s], &d->want[s]))) return st;
        if (d->want[s] < 0 || d->want[s] > (1ll << 31))
            return fb_set_error(FB_ERR_CONFIG, "%s: tasks.%s.%s must be a number of examples >= 0",
                                fb_cfg_where(n), tname, fb_split_names[s]);
    }
    return FB_OK;
}

/* Indices into pool d of examples whose class the task uses, permuted by key. */
static fb_status eligible(const fb_images *p, const task_def *d, uint64_t key, int64_t **out,
                          int64_t *count)
{
    int64_t *perm = fb_malloc((size_t)(p->n ? p->n : 1) * sizeof *perm);
    if (!perm) return FB_ERR_NOMEM;
    fb_permutation(perm, p->n, key);
    int64_t m = 0;
    for (int64_t i = 0; i < p->n; i++) {
        int32_t l = p->labels[perm[i]];
        if (l >= 0 && l < d->src_classes && d->map[l] >= 0) perm[m++] = perm[i];
    }
    *out = perm;
    *count = m;
    return FB_OK;
}

static fb_status make_split(fb_task *t, int s, const fb_images *p, const int64_t *idx, int64_t n,
                            const task_def *d, const fb_taskset *ts)
{
    const int64_t S = ts->image_size, C = ts->channels, img = S * S * C;
    t->n[s] = n;
    if (ts->bytes) { /* views into the source's pool, normalised when read (fb_task_image) */
        if (d->nxf)
            return fb_set_error(FB_ERR_CONFIG, "task %s: storage: bytes takes no transform",
                                t->name);
        t->pixels[s] = p->pixels;
        t->idx[s] = fb_malloc((size_t)(n ? n : 1) * sizeof *t->idx[s]);
        t->y[s] = fb_malloc((size_t)(n ? n : 1) * sizeof(int32_t));
        if (!t->idx[s] || !t->y[s]) return FB_ERR_NOMEM;
        for (int64_t i = 0; i < n; i++) {
            t->idx[s][i] = idx[i];
            t->y[s][i] = d->map[p->labels[idx[i]]];
        }
        return FB_OK;
    }
    t->x[s] = fb_malloc((size_t)(n ? n * img : 1) * sizeof(float));
    t->y[s] = fb_malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    uint8_t *a = fb_malloc((size_t)img), *b = fb_malloc((size_t)img);
    fb_status st = t->x[s] && t->y[s] && a && b ? FB_OK : FB_ERR_NOMEM;
    for (int64_t i = 0; i < n && !st; i++) {
        memcpy(a, p->pixels + idx[i] * img, (size_t)img);
        for (int k = 0; k < d->nxf; k++) {
            apply_xform(d->xf[k], a, b, S, C, d->perm);
            uint8_t *tmp = a;
            a = b;
            b = tmp;
        }
        fb_image_normalize(a, S, C, ts->mean, ts->std, t->x[s] + i * img);
        t->y[s][i] = d->map[p->labels[idx[i]]];
    }
    fb_free(a);
    fb_free(b);
    return st;
}

static fb_status task_build(fb_task *t, const task_def *d, const fb_taskset *ts, uint64_t seed,
                            unsigned splits)
{
    const source *s = d->src;
    int64_t *tr = NULL, *te = NULL, ntr, nte;
    fb_status st = eligible(&s->train, d, fb_rng_key(seed, t->name, 0), &tr, &ntr);
    if (st) return st;
    int64_t want[FB_NUM_SPLITS];
    memcpy(want, d->want, sizeof want);
    int64_t off = 0; /* next unused position of the training permutation */
    if (s->single) {
        if (want[FB_SPLIT_TEST] < 0) want[FB_SPLIT_TEST] = ntr / 5;
        te = tr;
        nte = ntr;
        off = want[FB_SPLIT_TEST];
    } else if ((st = eligible(&s->test, d, fb_rng_key(seed, t->name, 2), &te, &nte))) {
        fb_free(tr);
        return st;
    }
    if (want[FB_SPLIT_TEST] < 0) want[FB_SPLIT_TEST] = nte;
    if (want[FB_SPLIT_TRAIN] < 0) want[FB_SPLIT_TRAIN] = ntr - off - want[FB_SPLIT_VAL];
    int64_t need_tr = off + want[FB_SPLIT_VAL] + want[FB_SPLIT_TRAIN];
    /* a training pool left undrawn (only the test split wanted) is not counted against */
    const int undrawn = !s->single && s->train.n == 0 &&
                        !(splits & (FB_SPLIT_BIT(FB_SPLIT_TRAIN) | FB_SPLIT_BIT(FB_SPLIT_VAL)));
    if (want[FB_SPLIT_TRAIN] < 0 && undrawn) want[FB_SPLIT_TRAIN] = 0;
    if (want[FB_SPLIT_TRAIN] < 0 || (need_tr > ntr && !undrawn) || want[FB_SPLIT_TEST] > nte) {
        if (s->single)
            st = fb_set_error(FB_ERR_CONFIG,
                              "task %s asks for %lld train + %lld val + %lld test "
                              "examples; source %s has %lld of its classes in all",
                              t->name, (long long)want[0], (long long)want[1], (long long)want[2],
                              s->name, (long long)ntr);
        else
            st = fb_set_error(FB_ERR_CONFIG,
                              "task %s asks for %lld train + %lld val + %lld test "
                              "examples; source %s has %lld train and %lld test examples of its "
                              "classes",
                              t->name, (long long)want[0], (long long)want[1], (long long)want[2],
                              s->name, (long long)ntr, (long long)nte);
        goto done;
    }
    for (int sp = 0; sp < FB_NUM_SPLITS && !st; sp++) {
        if (!(splits & FB_SPLIT_BIT(sp))) continue;
        if (sp == FB_SPLIT_TEST) {
            st = make_split(t, sp, s->single ? &s->train : &s->test, te, want[sp], d, ts);
        } else {
            int64_t begin = off + (sp == FB_SPLIT_TRAIN ? want[FB_SPLIT_VAL] : 0);
            st = make_split(t, sp, &s->train, tr + begin, want[sp], d, ts);
        }
    }
done:
    if (te != tr) fb_free(te);
    fb_free(tr);
    return st;
}

static void task_free(fb_task *t)
{
    fb_free(t->name);
    if (t->class_names)
        for (int64_t k = 0; k < t->num_classes; k++)
            fb_free(t->class_names[k]);
    fb_free(t->class_names);
    for (int s = 0; s < FB_NUM_SPLITS; s++) {
        fb_free(t->x[s]);
        fb_free(t->idx[s]);
        fb_free(t->y[s]);
    }
}

void fb_taskset_free(fb_taskset *ts)
{
    if (!ts) return;
    for (int i = 0; i < ts->num_tasks; i++)
        task_free(&ts->tasks[i]);
    fb_free(ts->tasks);
    for (int i = 0; i < ts->num_held; i++)
        fb_images_free(&ts->held[i]);
    fb_free(ts->held);
    memset(ts, 0, sizeof *ts);
}

static fb_status float_list(const fb_config *node, const char *key, int64_t C, float *out)
{
    const fb_config *n = fb_cfg_map_get(node, key);
    if (fb_cfg_is_null(n)) return FB_OK; /* defaults set by the caller */
    double *v;
    int count;
    fb_status st = fb_cfg_double_list(n, key, &v, &count);
    if (st) return st;
    if (count != C && count != 1) {
        fb_free(v);
        return fb_set_error(FB_ERR_CONFIG, "%s: %s needs %lld values (one per channel)",
                            fb_cfg_where(n), key, (long long)C);
    }
    for (int64_t c = 0; c < C; c++) {
        out[c] = (float)v[count == 1 ? 0 : c];
        if (!strcmp(key, "std") && !(out[c] > 0)) {
            fb_free(v);
            return fb_set_error(FB_ERR_CONFIG, "%s: std must be positive", fb_cfg_where(n));
        }
    }
    fb_free(v);
    return FB_OK;
}

static fb_status int_key(const fb_config *node, const char *key, int64_t lo, int64_t hi,
                         int64_t *out)
{
    const fb_config *n = fb_cfg_map_get(node, key);
    if (fb_cfg_is_null(n)) return FB_OK;
    fb_status st = fb_cfg_int(n, key, out);
    if (st) return st;
    if (*out < lo || *out > hi)
        return fb_set_error(FB_ERR_CONFIG, "%s: %s must be in [%lld, %lld], got %lld",
                            fb_cfg_where(n), key, (long long)lo, (long long)hi, (long long)*out);
    return FB_OK;
}

static int is_selected(const fb_config *only, const char *name)
{
    if (!only) return 1;
    for (int i = 0; i < only->count; i++)
        if (only->items[i]->kind == FB_CFG_SCALAR && !strcmp(only->items[i]->value, name)) return 1;
    return 0;
}

fb_status fb_taskset_load(const fb_config *node, unsigned splits, const fb_config *only,
                          fb_taskset *out)
{
    memset(out, 0, sizeof *out);
    if (!node || node->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: a taskpool must be a mapping with sources and tasks",
                            fb_cfg_where(node));
    out->image_size = 224;
    out->channels = 3;
    int64_t seed = 0;
    fb_status st = int_key(node, "image_size", 1, 4096, &out->image_size);
    if (!st) st = int_key(node, "channels", 1, 3, &out->channels);
    if (!st && out->channels == 2) st = fb_set_error(FB_ERR_CONFIG, "channels must be 1 or 3");
    if (!st) st = int_key(node, "seed", 0, INT64_MAX, &seed);
    for (int c = 0; c < 4; c++)
        out->mean[c] = 0.0f, out->std[c] = 1.0f;
    if (!st) st = float_list(node, "mean", out->channels, out->mean);
    if (!st) st = float_list(node, "std", out->channels, out->std);
    load_opts lo = {0};
    char *cache = NULL;
    const fb_config *n;
    if (!st && !fb_cfg_is_null(n = fb_cfg_map_get(node, "resample"))) {
        const char *v;
        if (!(st = fb_cfg_string(n, "resample", &v))) {
            if (!strcmp(v, "clip"))
                lo.resample = FB_RESAMPLE_CLIP;
            else if (strcmp(v, "stb"))
                st = fb_set_error(FB_ERR_CONFIG, "%s: resample must be stb or clip",
                                  fb_cfg_where(n));
        }
    }
    if (!st && !fb_cfg_is_null(n = fb_cfg_map_get(node, "storage"))) {
        const char *v;
        if (!(st = fb_cfg_string(n, "storage", &v))) {
            if (!strcmp(v, "bytes"))
                out->bytes = 1;
            else if (strcmp(v, "float"))
                st = fb_set_error(FB_ERR_CONFIG, "%s: storage must be float or bytes",
                                  fb_cfg_where(n));
        }
    }
    if (!st && !fb_cfg_is_null(n = fb_cfg_map_get(node, "image_cache")))
        st = fb_cfg_path(n, "image_cache", &cache);
    lo.cache_dir = cache;
    lo.no_train_splits = !(splits & (FB_SPLIT_BIT(FB_SPLIT_TRAIN) | FB_SPLIT_BIT(FB_SPLIT_VAL)));
    lo.skip_train = out->bytes && lo.no_train_splits;
    out->resample = lo.resample;
    if (st) {
        fb_free(cache);
        return st;
    }
    const fb_config *sn = fb_cfg_map_get(node, "sources"), *tn = fb_cfg_map_get(node, "tasks");
    if (!sn || sn->kind != FB_CFG_MAP || sn->count == 0)
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: a taskpool needs 'sources', a mapping of data sources",
                            fb_cfg_where(sn ? sn : node));
    if (!tn || tn->kind != FB_CFG_MAP || tn->count == 0)
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: a taskpool needs 'tasks', a mapping of task definitions",
                            fb_cfg_where(tn ? tn : node));
    /* only the sources some task uses are read */
    int nsrc = 0;
    source *srcs = fb_calloc((size_t)sn->count, sizeof *srcs);
    task_def *defs = fb_calloc((size_t)tn->count, sizeof *defs);
    out->tasks = fb_calloc((size_t)tn->count, sizeof *out->tasks);
    if (!srcs || !defs || !out->tasks) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < sn->count && !st; i++) {
        int used = 0;
        for (int j = 0; j < tn->count && !used; j++) {
            if (!is_selected(only, tn->keys[j])) continue;
            const fb_config *s = fb_cfg_map_get(tn->items[j], "source");
            used = s && s->kind == FB_CFG_SCALAR && !strcmp(s->value, sn->keys[i]);
        }
        if (!used) continue;
        st = source_load(sn->items[i], sn->keys[i], out->image_size, out->channels, &lo,
                         &srcs[nsrc]);
        if (!st) nsrc++;
    }
    for (int j = 0; j < tn->count && !st; j++) {
        if (!is_selected(only, tn->keys[j])) continue;
        fb_task *t = &out->tasks[out->num_tasks++];
        if (!(t->name = fb_strdup(tn->keys[j]))) {
            st = FB_ERR_NOMEM;
            break;
        }
        st = task_parse(tn->items[j], tn->keys[j], srcs, nsrc, (uint64_t)seed, t, &defs[j]);
        if (!st) st = task_build(t, &defs[j], out, (uint64_t)seed, splits);
    }
    /* byte storage: the tasks view the sources' pools, which the task set keeps */
    if (!st && out->bytes && !(out->held = fb_calloc((size_t)(2 * nsrc + 1), sizeof *out->held)))
        st = FB_ERR_NOMEM;
    for (int i = 0; i < nsrc && !st && out->bytes; i++) {
        out->held[out->num_held++] = srcs[i].train;
        out->held[out->num_held++] = srcs[i].test;
        memset(&srcs[i].train, 0, sizeof srcs[i].train);
        memset(&srcs[i].test, 0, sizeof srcs[i].test);
    }
done:
    fb_free(cache);
    for (int i = 0; i < nsrc; i++)
        source_free(&srcs[i]);
    if (defs)
        for (int j = 0; j < tn->count; j++) {
            fb_free(defs[j].map);
            fb_free(defs[j].perm);
        }
    fb_free(srcs);
    fb_free(defs);
    if (st) fb_taskset_free(out);
    return st;
}

int fb_task_has_split(const fb_task *t, int split)
{
    return t->x[split] || t->idx[split];
}

void fb_task_image(const fb_taskset *ts, const fb_task *t, int split, int64_t i, float *dst)
{
    const int64_t S = ts->image_size, C = ts->channels, img = S * S * C;
    if (t->x[split])
        memcpy(dst, t->x[split] + i * img, (size_t)img * sizeof *dst);
    else
        fb_image_normalize(t->pixels[split] + t->idx[split][i] * img, S, C, ts->mean, ts->std, dst);
}

void fb_task_draw_batch(const fb_taskset *ts, const fb_task *t, int split, uint64_t key,
                        int64_t step, int64_t B, float *dst)
{
    const int64_t n = t->n[split], img = ts->channels * ts->image_size * ts->image_size;
    for (int64_t b = 0; b < B; b++) {
        uint64_t r = fb_mix64(key + (uint64_t)(step * B + b) * 0x9E3779B97F4A7C15ull);
        fb_task_image(ts, t, split, (int64_t)(r % (uint64_t)n), dst + b * img);
    }
}
