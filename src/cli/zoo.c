/*
 * zoo.c: `fusion_bench zoo`, the model zoo the benchmark table merges (docs/zoo.md).
 *
 * FusionBench's flagship pool is CLIP-ViT-B/32 (pretrained by OpenAI) fine-tuned on eight
 * tasks, each evaluated through a fixed zero-shot head. The zoo rebuilds that recipe at a size
 * this machine can train, on the tasks of a taskpool:
 *   1. pretrain a small CLIP-layout vision tower on a mixture of the pretraining tasks'
 *      training images, one classifier over their classes side by side (or over their
 *      sources' classes, shared by the tasks drawn from one source: pretrain.labels),
 *   2. give each task a head from the frozen pretrained features (class prototypes of its own
 *      images, or of the same images without the task's transform: head.images; optionally
 *      turned by one rotation shared by every task, head.gap, and refined by logistic
 *      regression): the analogue of CLIP's zero-shot text heads,
 *   3. fine-tune the whole tower per task with its head frozen (as FusionBench's models were),
 *   4. write _pretrained_ + one model per task (safetensors), config.json, heads.safetensors,
 *      modelpool.yaml and taskpool.yaml, then zoo.json last: its fingerprint of the inputs
 *      (zoo config, taskpool, data files) makes the next run reuse the zoo.
 * Everything is a function of the seed: the same bytes for any thread count.
 */
#include "zoo.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "config/config.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/rng.h"
#include "core/status.h"
#include "io/writer.h"
#include "nn/clip_vit.h"
#include "nn/kernels.h"
#include "nn/optim.h"
#include "nn/train.h"
#include "pool/tasks.h"

#define ZOO_FORMAT "fusionbench-c zoo 1" /* bump when the recipe changes */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct zoo_opts {
    fb_config *cfg, *taskpool;
    const char *out_dir;
    int64_t seed;
    fb_clip_config model;
    int64_t pre_steps, pre_batch, pre_per_task, head_steps, head_examples, ft_steps, ft_batch;
    int64_t ft_examples; /* the first N training examples fine-tune; 0: all */
    double pre_lr, pre_wd, head_lr, ft_lr, ft_wd, ft_momentum, ft_eps, logit_scale;
    double head_gap; /* head.gap: how far every head is turned by one shared rotation */
    int ft_sgd;
    int pre_source_labels;  /* pretrain.labels: source */
    int head_untransformed; /* head.images: untransformed */
    int tty;
    double t0;
} zoo_opts;

/* ---------------------------------------------------------------- configuration -- */

static fb_status get_num(const fb_config *cfg, const char *dotted, double lo, double hi, double *out)
{
    const fb_config *n = fb_config_get(cfg, dotted);
    if (!n) return fb_set_error(FB_ERR_CONFIG, "zoo config lacks '%s'", dotted);
    fb_status st = fb_cfg_double(n, dotted, out);
    if (!st && !(*out >= lo && *out <= hi))
        st = fb_set_error(FB_ERR_CONFIG, "%s: %s must be in [%g, %g]", fb_cfg_where(n), dotted, lo, hi);
    return st;
}

static fb_status get_i64(const fb_config *cfg, const char *dotted, int64_t lo, int64_t hi, int64_t *out)
{
    double v;
    fb_status st = get_num(cfg, dotted, (double)lo, (double)hi, &v);
    if (!st && v != (double)(int64_t)v)
        st = fb_set_error(FB_ERR_CONFIG, "%s must be an integer", dotted);
    if (!st) *out = (int64_t)v;
    return st;
}

/* An optional key with two values: *out = 0 for `first` (also when absent), 1 for `second`. */
static fb_status get_choice(const fb_config *cfg, const char *dotted, const char *first,
                            const char *second, int *out)
{
    const fb_config *n = fb_config_get(cfg, dotted);
    const char *s = first;
    fb_status st = n && !fb_cfg_is_null(n) ? fb_cfg_string(n, dotted, &s) : FB_OK;
    if (st) return st;
    if (strcmp(s, first) && strcmp(s, second))
        return fb_set_error(FB_ERR_CONFIG, "%s: %s must be %s or %s", fb_cfg_where(n), dotted, first,
                            second);
    *out = !strcmp(s, second);
    return FB_OK;
}

static const char *const zoo_keys[] = {"taskpool", "output_dir", "seed", "model", "pretrain",
                                       "head", "finetune"};

/* the keys each section may hold; NULL ends a list */
static const char *const section_keys[][10] = {
    {"model", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
     "patch_size", "projection_dim", NULL},
    {"pretrain", "tasks", "steps", "batch_size", "examples_per_task", "lr", "weight_decay",
     "labels", NULL},
    {"head", "examples", "steps", "lr", "images", "gap", NULL},
    {"finetune", "optimizer", "momentum", "steps", "batch_size", "lr", "weight_decay", "eps",
     "examples", NULL},
};

/* A misspelt key (finetune.esp) is an error, not a default silently used. */
static fb_status check_sections(const fb_config *c)
{
    for (size_t s = 0; s < sizeof section_keys / sizeof *section_keys; s++) {
        const fb_config *sec = fb_cfg_map_get(c, section_keys[s][0]);
        if (!sec || sec->kind != FB_CFG_MAP) continue; /* a missing key is reported when read */
        for (int i = 0; i < sec->count; i++) {
            int j = 1;
            while (section_keys[s][j] && strcmp(sec->keys[i], section_keys[s][j])) j++;
            if (!section_keys[s][j])
                return fb_set_error(FB_ERR_CONFIG, "%s: unknown zoo key '%s.%s'",
                                    fb_cfg_where(sec->items[i]), section_keys[s][0], sec->keys[i]);
        }
    }
    return FB_OK;
}

static fb_status read_opts(zoo_opts *z)
{
    const fb_config *c = z->cfg;
    if (!c || c->kind != FB_CFG_MAP) return fb_set_error(FB_ERR_CONFIG, "the zoo config must be a mapping");
    for (int i = 0; i < c->count; i++) {
        size_t j = 0, n = sizeof zoo_keys / sizeof *zoo_keys;
        while (j < n && strcmp(c->keys[i], zoo_keys[j])) j++;
        if (j == n)
            return fb_set_error(FB_ERR_CONFIG, "%s: unknown zoo key '%s'", fb_cfg_where(c->items[i]),
                                c->keys[i]);
    }
    fb_status st = check_sections(c);
    if (st) return st;
    int64_t v;
    fb_clip_config *m = &z->model;
    if ((st = get_i64(c, "seed", 0, INT64_MAX / 2, &z->seed))) return st;
    if ((st = get_i64(c, "model.hidden_size", 1, 4096, &m->hidden))) return st;
    if ((st = get_i64(c, "model.intermediate_size", 1, 16384, &m->intermediate))) return st;
    if ((st = get_i64(c, "model.num_attention_heads", 1, 64, &m->heads))) return st;
    if ((st = get_i64(c, "model.num_hidden_layers", 1, 48, &m->layers))) return st;
    if ((st = get_i64(c, "model.patch_size", 1, 1024, &m->patch_size))) return st;
    if ((st = get_i64(c, "model.projection_dim", 0, 4096, &m->projection))) return st;
    if ((st = get_i64(c, "pretrain.steps", 0, 1 << 24, &z->pre_steps))) return st;
    if ((st = get_i64(c, "pretrain.batch_size", 1, 4096, &z->pre_batch))) return st;
    if ((st = get_i64(c, "pretrain.examples_per_task", 1, 1 << 24, &z->pre_per_task))) return st;
    if ((st = get_num(c, "pretrain.lr", 0, 10, &z->pre_lr))) return st;
    if ((st = get_num(c, "pretrain.weight_decay", 0, 10, &z->pre_wd))) return st;
    if ((st = get_i64(c, "head.steps", 0, 1 << 20, &z->head_steps))) return st;
    if ((st = get_i64(c, "head.examples", 1, 1 << 24, &z->head_examples))) return st;
    if ((st = get_num(c, "head.lr", 0, 10, &z->head_lr))) return st;
    if ((st = get_i64(c, "finetune.steps", 0, 1 << 24, &z->ft_steps))) return st;
    if ((st = get_i64(c, "finetune.batch_size", 1, 4096, &z->ft_batch))) return st;
    if ((st = get_num(c, "finetune.lr", 0, 10, &z->ft_lr))) return st;
    if ((st = get_num(c, "finetune.weight_decay", 0, 10, &z->ft_wd))) return st;
    if ((st = get_num(c, "finetune.momentum", 0, 1, &z->ft_momentum))) return st;
    z->ft_examples = 0; /* optional: every training example */
    if (fb_config_get(c, "finetune.examples") &&
        (st = get_i64(c, "finetune.examples", 1, 1 << 30, &z->ft_examples)))
        return st;
    z->head_gap = 0; /* optional: the heads as the tower's own prototypes */
    if (fb_config_get(c, "head.gap") && (st = get_num(c, "head.gap", 0, 1, &z->head_gap)))
        return st;
    z->ft_eps = 1e-8; /* optional: torch's default */
    if (fb_config_get(c, "finetune.eps") && (st = get_num(c, "finetune.eps", 1e-12, 1, &z->ft_eps)))
        return st;
    const char *opt;
    const fb_config *on = fb_config_get(c, "finetune.optimizer");
    if (!on) return fb_set_error(FB_ERR_CONFIG, "zoo config lacks 'finetune.optimizer'");
    if ((st = fb_cfg_string(on, "finetune.optimizer", &opt))) return st;
    if (strcmp(opt, "sgd") && strcmp(opt, "adamw"))
        return fb_set_error(FB_ERR_CONFIG, "%s: finetune.optimizer must be sgd or adamw", fb_cfg_where(on));
    z->ft_sgd = !strcmp(opt, "sgd");
    (void)v;
    if ((st = get_choice(c, "pretrain.labels", "task", "source", &z->pre_source_labels))) return st;
    if ((st = get_choice(c, "head.images", "task", "untransformed", &z->head_untransformed)))
        return st;
    const fb_config *pt = fb_config_get(c, "pretrain.tasks"), *tasks = fb_cfg_map_get(z->taskpool, "tasks");
    if (!pt || pt->kind != FB_CFG_SEQ || pt->count == 0)
        return fb_set_error(FB_ERR_CONFIG, "zoo config: pretrain.tasks must list the taskpool tasks "
                            "whose training data is the pretraining mixture");
    for (int i = 0; i < pt->count; i++)
        if (pt->items[i]->kind != FB_CFG_SCALAR || !tasks || tasks->kind != FB_CFG_MAP ||
            !fb_cfg_map_get(tasks, pt->items[i]->value))
            return fb_set_error(FB_ERR_CONFIG, "%s: pretrain.tasks: '%s' is not a task of the taskpool",
                                fb_cfg_where(pt->items[i]),
                                pt->items[i]->kind == FB_CFG_SCALAR ? pt->items[i]->value : "?");
    m->quick_gelu = 1;
    m->eps = 1e-5f;
    /* image geometry and logit scale come from the taskpool */
    const fb_config *tp = z->taskpool, *n;
    m->image_size = 224;
    m->channels = 3;
    z->logit_scale = 100;
    if ((n = fb_cfg_map_get(tp, "image_size")) && (st = fb_cfg_int(n, "taskpool.image_size", &m->image_size)))
        return st;
    if ((n = fb_cfg_map_get(tp, "channels")) && (st = fb_cfg_int(n, "taskpool.channels", &m->channels)))
        return st;
    if ((n = fb_cfg_map_get(tp, "logit_scale")) && !fb_cfg_is_null(n) &&
        (st = fb_cfg_double(n, "taskpool.logit_scale", &z->logit_scale)))
        return st;
    return fb_clip_config_check(m, "zoo config (model)");
}

/* FNV-1a over the inputs: the rendered configs, the recipe version and every data file's size
 * and modification time. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}

static uint64_t fingerprint(const zoo_opts *z)
{
    uint64_t h = 0xCBF29CE484222325ull;
    h = fnv(h, ZOO_FORMAT, sizeof ZOO_FORMAT);
    const fb_config *parts[] = {z->cfg, z->taskpool};
    for (int i = 0; i < 2; i++) {
        char *y = fb_cfg_to_yaml(parts[i]);
        if (y) h = fnv(h, y, strlen(y));
        free(y);
    }
    const fb_config *src = fb_cfg_map_get(z->taskpool, "sources");
    for (int i = 0; src && src->kind == FB_CFG_MAP && i < src->count; i++) {
        const fb_config *s = src->items[i];
        for (int j = 0; s->kind == FB_CFG_MAP && j < s->count; j++) {
            const fb_config *v = s->items[j];
            /* a scalar that names a file, or a list of them (a glyph source's fonts) */
            const int n = v->kind == FB_CFG_SEQ ? v->count : v->kind == FB_CFG_SCALAR;
            for (int e = 0; e < n; e++) {
                const fb_config *f = v->kind == FB_CFG_SEQ ? v->items[e] : v;
                if (f->kind != FB_CFG_SCALAR) continue;
                char *dir = f->origin ? fb_path_dirname(f->origin) : NULL;
                char *path = fb_path_join(dir, f->value);
                struct stat sb;
                if (path && stat(path, &sb) == 0) {
                    int64_t x[2] = {(int64_t)sb.st_size, (int64_t)sb.st_mtime};
                    h = fnv(h, x, sizeof x);
                }
                fb_free(dir);
                fb_free(path);
            }
        }
    }
    return h;
}

/* ---------------------------------------------------------------------- progress -- */

static void say(const zoo_opts *z, const char *fmt, ...) FB_PRINTF(2, 3);
static void say(const zoo_opts *z, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (z->tty) fputs("\r\033[K", stdout);
    printf("zoo [%5.1f s] ", now() - z->t0);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    va_end(ap);
}

typedef struct step_ctx {
    const zoo_opts *z;
    const char *what;
    int64_t steps;
    double last;
} step_ctx;

static void on_step(void *user, int64_t step, float loss)
{
    step_ctx *s = user;
    double t = now();
    int last = step + 1 == s->steps;
    if (s->z->tty) {
        if (t - s->last < 0.25 && !last) return;
        printf("\r\033[Kzoo [%5.1f s] %s: step %lld/%lld, loss %.4f", t - s->z->t0, s->what,
               (long long)step + 1, (long long)s->steps, loss);
        if (last) putchar('\n');
        fflush(stdout);
    } else if (last || t - s->last > 15) {
        printf("zoo [%5.1f s] %s: step %lld/%lld, loss %.4f\n", t - s->z->t0, s->what,
               (long long)step + 1, (long long)s->steps, loss);
        fflush(stdout);
    } else {
        return;
    }
    s->last = t;
}

/* ------------------------------------------------------------------------ recipe -- */

/* Gaussian N(0, std) from two uniforms of the counter-based generator (Box-Muller). */
static float gauss(uint64_t key, uint64_t i, float std)
{
    double u1 = (double)fb_rng_uniform(key, 2 * i) + 0x1p-25, u2 = fb_rng_uniform(key, 2 * i + 1);
    return (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* transformers' CLIP initialisation, simplified: N(0, 0.02) weights and embeddings, zero
 * biases, unit layer-norm scales. */
static void init_params(fb_clip *net, uint64_t seed)
{
    for (int64_t i = 0; i < fb_clip_num_tensors(net); i++) {
        int64_t numel;
        const char *name = fb_clip_tensor_name(net, i, &numel);
        float *p = fb_clip_param(net, name, NULL);
        size_t len = strlen(name);
        int bias = len > 5 && !strcmp(name + len - 5, ".bias");
        int norm = strstr(name, "norm") != NULL;
        uint64_t key = fb_rng_key(seed, name, 0);
        for (int64_t j = 0; j < numel; j++)
            p[j] = bias ? 0.0f : norm ? 1.0f : gauss(key, (uint64_t)j, 0.02f);
    }
}

/* The name of task t's source in the taskpool ("" when it has none). */
static const char *task_source(const zoo_opts *z, const char *task)
{
    const fb_config *tasks = fb_cfg_map_get(z->taskpool, "tasks");
    const fb_config *t = tasks ? fb_cfg_map_get(tasks, task) : NULL;
    const fb_config *s = t ? fb_cfg_map_get(t, "source") : NULL;
    return s && s->kind == FB_CFG_SCALAR ? s->value : "";
}

/* Pretraining: one classifier over the joint label space of the pretraining tasks, on their
 * training splits: the "pretraining mixture". The classes are each task's side by side, or
 * (pretrain.labels: source; ts then holds the tasks without their class maps) their sources'
 * classes, one label per source class whichever task an image came from. */
static fb_status pretrain(const zoo_opts *z, fb_clip *net, const fb_taskset *ts)
{
    const int64_t img = ts->channels * ts->image_size * ts->image_size;
    const fb_config *list = fb_config_get(z->cfg, "pretrain.tasks");
    int64_t n = 0, K = 0, base[64];
    if (ts->num_tasks > 64) return fb_set_error(FB_ERR_CONFIG, "zoo: a taskpool of at most 64 tasks");
    for (int i = 0; i < ts->num_tasks; i++) {
        const fb_task *t = &ts->tasks[i];
        int used = 0;
        for (int j = 0; j < list->count; j++) used |= !strcmp(list->items[j]->value, t->name);
        base[i] = -1;
        if (!used) continue;
        n += t->n[FB_SPLIT_TRAIN] < z->pre_per_task ? t->n[FB_SPLIT_TRAIN] : z->pre_per_task;
        int shared = -1; /* an earlier used task of the same source */
        for (int j = 0; z->pre_source_labels && j < i && shared < 0; j++)
            if (base[j] >= 0 && !strcmp(task_source(z, ts->tasks[j].name), task_source(z, t->name)))
                shared = j;
        base[i] = shared >= 0 ? base[shared] : K;
        if (shared < 0) K += t->num_classes;
    }
    const int64_t F = z->model.projection ? z->model.projection : z->model.hidden;
    float *x = fb_malloc((size_t)(n * img) * sizeof(float)), *head = fb_malloc((size_t)(K * F) * 4);
    int32_t *y = fb_malloc((size_t)n * sizeof(int32_t));
    fb_status st = x && y && head ? FB_OK : FB_ERR_NOMEM;
    int64_t k = 0;
    for (int i = 0; i < ts->num_tasks && !st; i++) {
        const fb_task *t = &ts->tasks[i];
        if (base[i] < 0) continue;
        int64_t m = t->n[FB_SPLIT_TRAIN] < z->pre_per_task ? t->n[FB_SPLIT_TRAIN] : z->pre_per_task;
        memcpy(x + k * img, t->x[FB_SPLIT_TRAIN], (size_t)(m * img) * sizeof(float));
        for (int64_t j = 0; j < m; j++) y[k + j] = (int32_t)(base[i] + t->y[FB_SPLIT_TRAIN][j]);
        k += m;
    }
    /* random unit rows: initial logits within +-logit_scale, as CLIP's normalised heads */
    uint64_t hkey = fb_rng_key((uint64_t)z->seed, "zoo/pretrain_head", 0);
    for (int64_t r = 0; !st && r < K; r++) {
        double s2 = 0;
        for (int64_t j = 0; j < F; j++) {
            head[r * F + j] = gauss(hkey, (uint64_t)(r * F + j), 1.0f);
            s2 += (double)head[r * F + j] * head[r * F + j];
        }
        for (int64_t j = 0; j < F; j++) head[r * F + j] *= (float)(1.0 / sqrt(s2));
    }
    if (!st) {
        say(z, "pretraining on %lld images of %d tasks (%lld classes), %lld steps of %lld",
            (long long)n, list->count, (long long)K, (long long)z->pre_steps, (long long)z->pre_batch);
        step_ctx sc = {z, "pretrain", z->pre_steps, 0};
        fb_train_options o = {.steps = z->pre_steps, .batch = z->pre_batch, .adamw = 1,
                              .lr = (float)z->pre_lr, .weight_decay = (float)z->pre_wd,
                              .head_scale = (float)z->logit_scale, .train_backbone = 1,
                              .train_head = 1, .cosine = 1, .warmup = z->pre_steps / 20,
                              .seed = (uint64_t)z->seed, .on_step = on_step,
                              .user = &sc};
        float loss;
        if (z->pre_steps > 0) st = fb_clip_train(net, head, K, x, y, n, &o, &loss);
    }
    fb_free(x);
    fb_free(y);
    fb_free(head);
    return st;
}

/* head.gap g > 0: every head row p becomes (1 - g) p + g Q p, normalised, with Q one random
 * orthogonal matrix shared by every task (seeded). CLIP's text heads sit in another region of
 * the embedding space than its image features (the modality gap) and every task's fine-tuning
 * partly corrects the same misalignment; g = 1 leaves the heads near chance. */
static fb_status turn_heads(const zoo_opts *z, float *W, int64_t K, int64_t F)
{
    double *q = fb_malloc((size_t)(F * F) * sizeof(double));
    double *row = fb_malloc((size_t)F * sizeof(double));
    if (!q || !row) {
        fb_free(q);
        fb_free(row);
        return FB_ERR_NOMEM;
    }
    const uint64_t key = fb_rng_key((uint64_t)z->seed, "zoo/head_gap", 0);
    for (int64_t i = 0; i < F; i++) { /* rows of Q: Gram-Schmidt on Gaussian rows, twice */
        for (int64_t j = 0; j < F; j++) q[i * F + j] = gauss(key, (uint64_t)(i * F + j), 1.0f);
        for (int pass = 0; pass < 2; pass++)
            for (int64_t r = 0; r < i; r++) {
                double d = 0;
                for (int64_t j = 0; j < F; j++) d += q[i * F + j] * q[r * F + j];
                for (int64_t j = 0; j < F; j++) q[i * F + j] -= d * q[r * F + j];
            }
        double s = 0;
        for (int64_t j = 0; j < F; j++) s += q[i * F + j] * q[i * F + j];
        for (int64_t j = 0; j < F; j++) q[i * F + j] /= sqrt(s);
    }
    for (int64_t k = 0; k < K; k++) {
        double s = 0;
        for (int64_t i = 0; i < F; i++) {
            double d = 0;
            for (int64_t j = 0; j < F; j++) d += q[i * F + j] * W[k * F + j];
            row[i] = (1 - z->head_gap) * W[k * F + i] + z->head_gap * d;
            s += row[i] * row[i];
        }
        for (int64_t i = 0; i < F; i++) W[k * F + i] = (float)(row[i] / (sqrt(s) + 1e-12));
    }
    fb_free(q);
    fb_free(row);
    return FB_OK;
}

/* Head of task t from frozen features: the class means of the normalised features, centred
 * on their average and normalised (so the heads point apart, as CLIP's text heads do, instead
 * of all along the features' common direction), then head_steps of full-batch AdamW on the
 * cross-entropy of the cosine logits (0: the prototypes as they are). */
static fb_status fit_head(const zoo_opts *z, fb_clip *net, const fb_task *t, const float *xh,
                          int64_t img, float *W)
{
    const int64_t K = t->num_classes, F = z->model.projection ? z->model.projection : z->model.hidden;
    const int64_t n = t->n[FB_SPLIT_TRAIN] < z->head_examples ? t->n[FB_SPLIT_TRAIN] : z->head_examples;
    const int64_t B = fb_clip_max_batch(net);
    float *feat = fb_malloc((size_t)(n * F) * 4), *logits = fb_malloc((size_t)(n * K) * 4);
    float *probs = fb_malloc((size_t)(n * K) * 4), *normed = fb_malloc((size_t)(n * F) * 4);
    float *norms = fb_malloc((size_t)n * 4), *dlogits = fb_malloc((size_t)(n * K) * 4);
    float *dW = fb_malloc((size_t)(K * F) * 4);
    fb_adamw opt = {0};
    fb_status st = feat && logits && probs && normed && norms && dlogits && dW ? FB_OK : FB_ERR_NOMEM;
    for (int64_t i = 0; i < n && !st; i += B) {
        int64_t b = n - i < B ? n - i : B;
        const float *f;
        if (!(st = fb_clip_forward(net, xh + i * img, b, &f)))
            memcpy(feat + i * F, f, (size_t)(b * F) * 4);
    }
    if (st) goto done;
    /* prototypes */
    memset(W, 0, (size_t)(K * F) * 4);
    for (int64_t i = 0; i < n; i++) {
        double s = 0;
        for (int64_t j = 0; j < F; j++) s += (double)feat[i * F + j] * feat[i * F + j];
        float inv = (float)(1.0 / (sqrt(s) + 1e-12));
        for (int64_t j = 0; j < F; j++) W[t->y[FB_SPLIT_TRAIN][i] * F + j] += feat[i * F + j] * inv;
    }
    for (int64_t j = 0; j < F; j++) { /* class means, then centred */
        double mean = 0;
        for (int64_t k = 0; k < K; k++) {
            int64_t count = 0;
            for (int64_t i = 0; i < n; i++) count += t->y[FB_SPLIT_TRAIN][i] == k;
            W[k * F + j] /= (float)(count ? count : 1);
            mean += W[k * F + j];
        }
        for (int64_t k = 0; k < K; k++) W[k * F + j] -= (float)(mean / (double)K);
    }
    for (int64_t k = 0; k < K; k++) {
        double s = 0;
        for (int64_t j = 0; j < F; j++) s += (double)W[k * F + j] * W[k * F + j];
        float inv = (float)(1.0 / (sqrt(s) + 1e-12));
        for (int64_t j = 0; j < F; j++) W[k * F + j] *= inv;
    }
    if (z->head_gap > 0 && (st = turn_heads(z, W, K, F))) goto done;
    if (z->head_steps > 0 && (st = fb_adamw_init(&opt, K * F, (float)z->head_lr, 0.0f))) goto done;
    for (int64_t s = 0; s < z->head_steps; s++) {
        fb_head_forward(logits, normed, norms, feat, W, (float)z->logit_scale, n, F, K);
        fb_cross_entropy_forward(probs, logits, t->y[FB_SPLIT_TRAIN], n, K);
        memset(dlogits, 0, (size_t)(n * K) * 4);
        memset(dW, 0, (size_t)(K * F) * 4);
        fb_cross_entropy_backward(dlogits, probs, t->y[FB_SPLIT_TRAIN], n, K, 1.0f);
        fb_linear_backward(NULL, dW, NULL, dlogits, normed, NULL, n, F, K);
        for (int64_t j = 0; j < K * F; j++) dW[j] *= (float)z->logit_scale;
        fb_adamw_step(&opt, W, dW);
    }
done:
    fb_adamw_free(&opt);
    fb_free(feat);
    fb_free(logits);
    fb_free(probs);
    fb_free(normed);
    fb_free(norms);
    fb_free(dlogits);
    fb_free(dW);
    return st;
}

static fb_status save_net(fb_clip *net, const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir, name);
    fb_model *m;
    fb_status st = fb_clip_to_model(net, &m);
    if (!st) st = fb_model_set_metadata(m, "format", "pt");
    if (!st) st = fb_model_save(m, path, NULL);
    fb_model_free(m);
    return st;
}

static fb_status write_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return fb_write_text_atomic(path, text);
}

static fb_status write_config_json(const zoo_opts *z)
{
    const fb_clip_config *m = &z->model;
    char text[1024];
    snprintf(text, sizeof text,
             "{\n  \"architectures\": [\"CLIPVisionModelWithProjection\"],\n"
             "  \"model_type\": \"clip_vision_model\",\n  \"hidden_size\": %lld,\n"
             "  \"intermediate_size\": %lld,\n  \"num_attention_heads\": %lld,\n"
             "  \"num_hidden_layers\": %lld,\n  \"image_size\": %lld,\n  \"patch_size\": %lld,\n"
             "  \"num_channels\": %lld,\n  \"projection_dim\": %lld,\n"
             "  \"hidden_act\": \"quick_gelu\",\n  \"layer_norm_eps\": 1e-05\n}\n",
             (long long)m->hidden, (long long)m->intermediate, (long long)m->heads,
             (long long)m->layers, (long long)m->image_size, (long long)m->patch_size,
             (long long)m->channels, (long long)m->projection);
    return write_text(z->out_dir, "config.json", text);
}

/* The taskpool copy: model_config and heads set, data paths made absolute. */
static fb_status write_taskpool(const zoo_opts *z)
{
    fb_config *tp;
    fb_status st = fb_cfg_copy(z->taskpool, &tp);
    if (st) return st;
    fb_config *src = fb_cfg_map_get(tp, "sources");
    for (int i = 0; !st && src && src->kind == FB_CFG_MAP && i < src->count; i++) {
        fb_config *s = src->items[i];
        for (int j = 0; !st && s->kind == FB_CFG_MAP && j < s->count; j++) {
            fb_config *v = s->items[j];
            const char *k = s->keys[j];
            if (v->kind != FB_CFG_SCALAR || !v->origin || v->value[0] == '/' ||
                !(strstr(k, "path") || strstr(k, "train") || strstr(k, "test") ||
                  !strcmp(k, "images") || !strcmp(k, "labels")))
                continue;
            char *dir = fb_path_dirname(v->origin), *abs = NULL;
            char *joined = dir ? fb_path_join(dir, v->value) : NULL;
            if (joined) abs = realpath(joined, NULL);
            fb_free(dir);
            if (abs) {
                fb_free(v->value);
                v->value = fb_strdup(abs);
                if (!v->value) st = FB_ERR_NOMEM;
            }
            free(abs);
            fb_free(joined);
        }
    }
    if (!st) st = fb_cfg_override(tp, "model_config", "config.json");
    if (!st) st = fb_cfg_override(tp, "heads", "heads.safetensors");
    char *y = st ? NULL : fb_cfg_to_yaml(tp);
    if (!st && !y) st = FB_ERR_NOMEM;
    if (!st) {
        size_t n = strlen(y) + 512;
        char *text = fb_malloc(n);
        if (!text) st = FB_ERR_NOMEM;
        else {
            snprintf(text, n, "# written by fusion_bench zoo: the tasks the zoo's models were trained "
                              "on,\n# with their heads; evaluate with taskpool=<this file>\n%s", y);
            st = write_text(z->out_dir, "taskpool.yaml", text);
            fb_free(text);
        }
    }
    free(y);
    fb_config_free(tp);
    return st;
}

static fb_status write_modelpool(const zoo_opts *z, const fb_taskset *ts)
{
    fb_buf b;
    fb_buf_init(&b);
    fb_buf_puts(&b, "# written by fusion_bench zoo: the pretrained tower and one fine-tuned model per task\n"
                    "_target_: fusion_bench.modelpool.CLIPVisionModelPool\nmodels:\n"
                    "  _pretrained_: _pretrained_.safetensors\n");
    for (int i = 0; i < ts->num_tasks; i++)
        fb_buf_printf(&b, "  %s: %s.safetensors\n", ts->tasks[i].name, ts->tasks[i].name);
    fb_status st = b.failed ? FB_ERR_NOMEM : write_text(z->out_dir, "modelpool.yaml", b.data);
    fb_buf_free(&b);
    return st;
}

/* The training splits of the taskpool's tasks with key `drop` removed from every task. */
static fb_status variant_load(const zoo_opts *z, const char *drop, fb_taskset *out)
{
    fb_config *tp;
    fb_status st = fb_cfg_copy(z->taskpool, &tp);
    if (st) return st;
    fb_config *tasks = fb_cfg_map_get(tp, "tasks");
    for (int i = 0; tasks && tasks->kind == FB_CFG_MAP && i < tasks->count; i++)
        if (tasks->items[i]->kind == FB_CFG_MAP) fb_cfg_map_remove(tasks->items[i], drop);
    st = fb_taskset_load(tp, FB_SPLIT_BIT(FB_SPLIT_TRAIN), NULL, out);
    fb_config_free(tp);
    return st;
}

static fb_status build(zoo_opts *z, uint64_t fp)
{
    fb_taskset ts;
    say(z, "loading tasks");
    fb_status st = fb_taskset_load(z->taskpool, FB_SPLIT_BIT(FB_SPLIT_TRAIN) | FB_SPLIT_BIT(FB_SPLIT_VAL),
                                   NULL, &ts);
    if (st) return st;
    /* the same tasks without their transforms (head.images: untransformed) or without their
     * class maps (pretrain.labels: source): the same seeded example draws */
    fb_taskset hts = {0}, pts = {0};
    if (z->head_untransformed && !(st = variant_load(z, "transform", &hts)))
        for (int i = 0; i < ts.num_tasks && !st; i++)
            if (hts.tasks[i].n[FB_SPLIT_TRAIN] != ts.tasks[i].n[FB_SPLIT_TRAIN] ||
                memcmp(hts.tasks[i].y[FB_SPLIT_TRAIN], ts.tasks[i].y[FB_SPLIT_TRAIN],
                       (size_t)ts.tasks[i].n[FB_SPLIT_TRAIN] * sizeof(int32_t)))
                st = fb_set_error(FB_ERR_INTERNAL, "zoo: task %s: untransformed examples differ",
                                  ts.tasks[i].name);
    if (!st && z->pre_source_labels) st = variant_load(z, "classes", &pts);
    if (st) {
        fb_taskset_free(&hts);
        fb_taskset_free(&ts);
        return st;
    }
    const int64_t img = ts.channels * ts.image_size * ts.image_size;
    const int64_t F = z->model.projection ? z->model.projection : z->model.hidden;
    int64_t maxb = z->pre_batch > z->ft_batch ? z->pre_batch : z->ft_batch;
    if (maxb < 256) maxb = 256;
    fb_clip *net = NULL;
    fb_model *heads = NULL;
    float *theta0 = NULL, *W = NULL;
    cJSON *summary = cJSON_CreateObject(), *tasks = summary ? cJSON_AddObjectToObject(summary, "tasks") : NULL;
    if (!tasks) st = FB_ERR_NOMEM;
    if (!st) st = fb_clip_create(&z->model, maxb, &net);
    if (!st) st = fb_model_create(&heads);
    if (st) goto done;
    init_params(net, (uint64_t)z->seed);
    fb_nn_blas_single(1);
    if ((st = pretrain(z, net, z->pre_source_labels ? &pts : &ts))) goto done;
    const int64_t np = fb_clip_num_params(net);
    if (!(theta0 = fb_malloc((size_t)np * 4))) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    memcpy(theta0, fb_clip_params(net), (size_t)np * 4);
    if ((st = save_net(net, z->out_dir, "_pretrained_"))) goto done;
    for (int i = 0; i < ts.num_tasks && !st; i++) {
        const fb_task *t = &ts.tasks[i];
        const int64_t K = t->num_classes;
        memcpy(fb_clip_params(net), theta0, (size_t)np * 4);
        fb_free(W);
        if (!(W = fb_malloc((size_t)(K * F) * 4))) {
            st = FB_ERR_NOMEM;
            break;
        }
        const float *xh = z->head_untransformed ? hts.tasks[i].x[FB_SPLIT_TRAIN] : t->x[FB_SPLIT_TRAIN];
        if ((st = fit_head(z, net, t, xh, img, W))) break;
        double acc0 = 0, acc1 = 0;
        const float *xv = t->x[FB_SPLIT_VAL];
        if (t->n[FB_SPLIT_VAL] &&
            (st = fb_clip_accuracy(net, W, K, (float)z->logit_scale, xv, t->y[FB_SPLIT_VAL],
                                   t->n[FB_SPLIT_VAL], &acc0)))
            break;
        char what[200];
        snprintf(what, sizeof what, "fine-tune %s (%d/%d)", t->name, i + 1, ts.num_tasks);
        step_ctx sc = {z, what, z->ft_steps, 0};
        fb_train_options o = {.steps = z->ft_steps, .batch = z->ft_batch, .adamw = !z->ft_sgd,
                              .lr = (float)z->ft_lr, .weight_decay = (float)z->ft_wd,
                              .momentum = (float)z->ft_momentum, .adam_eps = (float)z->ft_eps,
                              .head_scale = (float)z->logit_scale, .train_backbone = 1,
                              .train_head = 0, .cosine = 1, .warmup = z->ft_steps / 20,
                              .seed = fb_rng_key((uint64_t)z->seed, t->name, 3),
                              .on_step = on_step, .user = &sc};
        float loss;
        const int64_t nft = z->ft_examples && z->ft_examples < t->n[FB_SPLIT_TRAIN]
                                ? z->ft_examples
                                : t->n[FB_SPLIT_TRAIN];
        if (z->ft_steps > 0 &&
            (st = fb_clip_train(net, W, K, t->x[FB_SPLIT_TRAIN], t->y[FB_SPLIT_TRAIN], nft, &o,
                                &loss)))
            break;
        if (t->n[FB_SPLIT_VAL] &&
            (st = fb_clip_accuracy(net, W, K, (float)z->logit_scale, xv, t->y[FB_SPLIT_VAL],
                                   t->n[FB_SPLIT_VAL], &acc1)))
            break;
        say(z, "%s: validation accuracy %.1f%% pretrained + head, %.1f%% fine-tuned", t->name,
            100 * acc0, 100 * acc1);
        cJSON *o2 = cJSON_AddObjectToObject(tasks, t->name);
        if (o2) {
            cJSON_AddNumberToObject(o2, "val_accuracy_pretrained", acc0);
            cJSON_AddNumberToObject(o2, "val_accuracy_finetuned", acc1);
        }
        if ((st = save_net(net, z->out_dir, t->name))) break;
        int64_t shape[2] = {K, F};
        st = fb_model_add_tensor(heads, t->name, FB_F32, 2, shape, W, NULL);
    }
    if (!st) {
        char path[4096];
        snprintf(path, sizeof path, "%s/heads.safetensors", z->out_dir);
        st = fb_model_save(heads, path, NULL);
    }
    if (!st) st = write_config_json(z);
    if (!st) st = write_modelpool(z, &ts);
    if (!st) st = write_taskpool(z);
    if (!st) { /* last: the stamp that says the zoo is complete */
        char fps[32];
        snprintf(fps, sizeof fps, "%016llx", (unsigned long long)fp);
        cJSON_AddStringToObject(summary, "format", ZOO_FORMAT);
        cJSON_AddStringToObject(summary, "fingerprint", fps);
        cJSON_AddNumberToObject(summary, "seed", (double)z->seed);
        cJSON_AddNumberToObject(summary, "parameters", (double)np);
        cJSON_AddNumberToObject(summary, "build_seconds", now() - z->t0);
        char *text = cJSON_Print(summary);
        if (!text) st = FB_ERR_NOMEM;
        else {
            size_t n = strlen(text);
            char *t2 = fb_malloc(n + 2);
            if (!t2) st = FB_ERR_NOMEM;
            else {
                memcpy(t2, text, n);
                memcpy(t2 + n, "\n", 2);
                st = write_text(z->out_dir, "zoo.json", t2);
                fb_free(t2);
            }
            cJSON_free(text);
        }
    }
done:
    fb_nn_blas_single(0);
    cJSON_Delete(summary);
    fb_free(W);
    fb_free(theta0);
    fb_model_free(heads);
    fb_clip_free(net);
    fb_taskset_free(&ts);
    fb_taskset_free(&hts);
    fb_taskset_free(&pts);
    return st;
}

/* 1 when out_dir/zoo.json carries this fingerprint and the models are all there. */
static int up_to_date(const zoo_opts *z, uint64_t fp)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/zoo.json", z->out_dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char want[64];
    snprintf(want, sizeof want, "\"fingerprint\":\t\"%016llx\"", (unsigned long long)fp);
    if (!strstr(text, want)) return 0;
    const char *files[] = {"_pretrained_.safetensors", "heads.safetensors", "config.json",
                           "modelpool.yaml", "taskpool.yaml"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", z->out_dir, files[i]);
        if (access(path, R_OK)) return 0;
    }
    const fb_config *tasks = fb_cfg_map_get(z->taskpool, "tasks");
    for (int i = 0; tasks && i < tasks->count; i++) {
        snprintf(path, sizeof path, "%s/%s.safetensors", z->out_dir, tasks->keys[i]);
        if (access(path, R_OK)) return 0;
    }
    return 1;
}

static fb_status load_named(const char *config_dir, const char *group, const char *name,
                            fb_config **out)
{
    char path[4096];
    size_t n = strlen(name);
    if (strchr(name, '/') || (n > 5 && !strcmp(name + n - 5, ".yaml")))
        snprintf(path, sizeof path, "%s", name);
    else
        snprintf(path, sizeof path, "%s/%s/%s.yaml", config_dir, group, name);
    return fb_config_load(path, out);
}

static void zoo_usage(void)
{
    printf("usage: fusion_bench zoo [--force] [zoo=NAME_OR_PATH] [key.path=value ...]\n\n"
           "Builds the model zoo: pretrains a small CLIP-layout vision tower, fits a head per task\n"
           "and fine-tunes one model per task of the zoo's taskpool (config/zoo/NAME.yaml;\n"
           "default mixed8). Reuses the zoo when nothing it depends on changed.\n\n"
           "  --force              rebuild even when the zoo is up to date\n"
           "  output_dir=DIR       where to write it (default from the zoo config)\n"
           "  pretrain.steps=N     any key of the zoo config, e.g. finetune.lr=0.0005\n");
}

int fb_zoo_main(const char *config_dir, int argc, char **argv)
{
    zoo_opts z = {.t0 = now(), .tty = isatty(1)};
    const char *zoo_name = "mixed8";
    int force = 0, rc = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            zoo_usage();
            return 0;
        }
        if (!strcmp(argv[i], "--force")) force = 1;
        else if (!strncmp(argv[i], "zoo=", 4)) zoo_name = argv[i] + 4;
        else if (argv[i][0] == '-' || !strchr(argv[i], '=')) {
            fprintf(stderr, "fusion_bench zoo: error: unexpected argument '%s' (see --help)\n", argv[i]);
            return 2;
        }
    }
    if (load_named(config_dir, "zoo", zoo_name, &z.cfg)) {
        fprintf(stderr, "fusion_bench zoo: error: %s\n", fb_last_error());
        return 2;
    }
    for (int i = 0; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (argv[i][0] == '-' || !strncmp(argv[i], "zoo=", 4) || !eq) continue;
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(eq - argv[i]), argv[i]);
        if (fb_cfg_override(z.cfg, key, eq + 1)) {
            fprintf(stderr, "fusion_bench zoo: error: %s\n", fb_last_error());
            fb_config_free(z.cfg);
            return 2;
        }
    }
    const char *tp_name = NULL;
    const fb_config *n;
    if (!(n = fb_cfg_map_get(z.cfg, "taskpool")) || fb_cfg_string(n, "taskpool", &tp_name) ||
        load_named(config_dir, "taskpool", tp_name, &z.taskpool) ||
        !(n = fb_cfg_map_get(z.cfg, "output_dir")) || fb_cfg_string(n, "output_dir", &z.out_dir) ||
        read_opts(&z)) {
        fprintf(stderr, "fusion_bench zoo: error: %s\n",
                tp_name ? fb_last_error() : "the zoo config needs taskpool and output_dir");
        rc = 2;
        goto out;
    }
    uint64_t fp = fingerprint(&z);
    if (!force && up_to_date(&z, fp)) {
        printf("zoo: %s is up to date (delete it or pass --force to rebuild)\n", z.out_dir);
        goto out;
    }
    char cmd_dir[4096];
    snprintf(cmd_dir, sizeof cmd_dir, "%s", z.out_dir);
    for (char *p = cmd_dir + 1; *p; p++) /* mkdir -p */
        if (*p == '/') {
            *p = '\0';
            mkdir(cmd_dir, 0755);
            *p = '/';
        }
    if (mkdir(cmd_dir, 0755) && access(cmd_dir, W_OK)) {
        fprintf(stderr, "fusion_bench zoo: error: %s: cannot create the output folder\n", z.out_dir);
        rc = 1;
        goto out;
    }
    /* a stale stamp must not survive a rebuild that fails halfway */
    char stamp[4200];
    snprintf(stamp, sizeof stamp, "%s/zoo.json", z.out_dir);
    unlink(stamp);
    say(&z, "building %s into %s (%lld-layer, %lld-wide CLIP vision tower, %d threads)", zoo_name,
        z.out_dir, (long long)z.model.layers, (long long)z.model.hidden, fb_get_num_threads());
    if (build(&z, fp)) {
        fprintf(stderr, "fusion_bench zoo: error: %s\n", fb_last_error());
        rc = 1;
        goto out;
    }
    say(&z, "done: %s/modelpool.yaml and %s/taskpool.yaml", z.out_dir, z.out_dir);
out:
    fb_config_free(z.cfg);
    fb_config_free(z.taskpool);
    return rc;
}
