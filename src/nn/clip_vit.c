/*
 * clip_vit.c: the CLIP vision tower, forward and backward (see clip_vit.h).
 *
 *   x = [class; patches W_pe] + pos          embeddings ([B, T, E], T = patches + 1)
 *   x = pre_layrnorm(x)
 *   per layer:  x = x + out_proj(attn(layer_norm1(x)))
 *               x = x + fc2(act(fc1(layer_norm2(x))))
 *   f = visual_projection(post_layernorm(x[:, 0]))
 *
 * as transformers' CLIPVisionModelWithProjection: attention scores scaled by 1/sqrt(head_dim),
 * hidden_act quick_gelu (OpenAI's checkpoints) or gelu. Every activation backward needs is
 * kept in one arena; gradients accumulate in a buffer laid out like the parameters.
 */
#include "clip_vit.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "kernels.h"

enum { MAX_LAYERS = 256 };

typedef struct layer_params {
    float *k_w, *k_b, *v_w, *v_b, *q_w, *q_b, *o_w, *o_b;
    float *ln1_w, *ln1_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b, *ln2_w, *ln2_b;
} layer_params;

typedef struct layer_acts {
    float *in, *ln1, *mean1, *rstd1, *q, *k, *v, *att, *a, *x1, *ln2, *mean2, *rstd2, *h, *g, *out;
} layer_acts;

typedef struct view {
    char name[160];
    int64_t offset, numel;
    int ndim;
    int64_t shape[4]; /* as transformers stores the tensor */
} view;

/* A linear layer upscaled by SMILE (src/method/smile_upscaling.c): E low-rank experts and the
 * router's projections, added to the layer's own output. */
typedef struct smile_linear {
    int64_t E, k, gk;
    float *gate;           /* [E * gk, in] */
    float *u, *svh, *bias; /* E x [out, k], E x [k, in], E x [out] or NULL */
} smile_linear;

enum { SL_Q, SL_K, SL_V, SL_O, SL_FC1, SL_FC2, SL_PER_LAYER };

/* The Weight-Ensembling MoE state (fb_clip_set_wemoe): per layer the experts' task vectors of
 * the MLP (fc1.weight, fc1.bias, fc2.weight, fc2.bias: the layout of the tower's own MLP
 * parameters, M floats) and the router's parameters, activations and routing weights. */
typedef struct wemoe_layer {
    const float **tv;       /* E x 4: each expert's task vector of fc1.weight ... fc2.bias */
    float *own;             /* those converted from another dtype (else borrowed) */
    float *gate, *dgate;    /* within wemoe.params / .grads */
    float *gin;             /* router input [BT, Din]: the layer's position encoding and x */
    float *u, *h1, *z;      /* router: fc1 output, its relu [BT, Din]; logits [BT, E] */
    float pe[64];           /* the layer's position encoding (P values) */
    float *r;               /* routing weights [groups, E] of the last pass */
    int64_t groups;
} wemoe_layer;

typedef struct wemoe {
    int64_t E, M, depth;   /* experts, MLP parameters per layer, router_hidden_layers */
    int64_t part_off[4], part_n[4], part_blocks[5]; /* the MLP's tensors; WM_BLOCK blocks */
    int64_t chunk;         /* routings merged together (merged holds chunk x M) */
    double *partials;      /* blocks x E */
    int batch_reduce, shared; /* shared: one router for every layer */
    int64_t P, Din;           /* position encoding size; router input size D + P */
    float *params, *grads; /* every layer's router, FusionBench's state-dict order */
    int64_t num_params;
    view *views;
    int64_t num_views;
    float *merged, *dmerged, *dz, *dh1, *dgin, *acts, *rs;
    wemoe_layer L[MAX_LAYERS];
} wemoe;

struct fb_clip {
    fb_clip_config c;
    wemoe *wm; /* NULL: plain MLPs */
    smile_linear *smile; /* layers x SL_PER_LAYER + 1 (visual_projection), or NULL */
    int64_t smile_top_k;
    int inference; /* activations of one layer only: forward passes, no backward */
    int64_t max_batch, batch, T, NP;
    float *params, *grads;
    int64_t num_params;
    view *views;
    int64_t num_views;
    /* parameter pointers: the same storage, by role (grads: same offsets) */
    float *cls, *pe_w, *pos, *pre_w, *pre_b, *post_w, *post_b, *proj_w;
    layer_params L[MAX_LAYERS];
    /* activations */
    float *arena;
    float *cols, *pe, *emb, *x0, *mean0, *rstd0, *pooled_in, *pooled, *meanp, *rstdp, *features;
    layer_acts A[MAX_LAYERS];
    /* backward scratch */
    float *dx, *dx1, *dln, *dq, *dk, *dv, *da, *dh, *dg, *datt, *demb, *dpe, *dpooled, *dpooled_in;
};

/* ---------------------------------------------------------------- config.json -- */

fb_status fb_clip_json_int(const char *where, const cJSON *o, const char *key, int64_t def,
                           int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        if (def < 0) return fb_set_error(FB_ERR_FORMAT, "%s: missing field '%s'", where, key);
        *out = def;
        return FB_OK;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 0x1p62) ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return fb_set_error(FB_ERR_FORMAT, "%s: field '%s' must be a non-negative integer", where,
                            key);
    *out = (int64_t)v->valuedouble;
    return FB_OK;
}

fb_status fb_clip_json_act(const char *where, const char *prefix, const cJSON *o, int *quick_gelu)
{
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
    const char *a = cJSON_IsString(act) ? act->valuestring : "quick_gelu";
    if (!strcmp(a, "quick_gelu") || !strcmp(a, "gelu")) {
        *quick_gelu = !strcmp(a, "quick_gelu");
        return FB_OK;
    }
    return fb_set_error(FB_ERR_FORMAT, "%s: %shidden_act '%s' is not quick_gelu or gelu", where,
                        prefix, a);
}

fb_status fb_clip_json_load(const char *path, cJSON **out)
{
    *out = NULL;
    fb_source *src;
    fb_status st = fb_source_open(path, &src);
    if (st) return st;
    char *text = src->size < (1u << 24) ? fb_malloc((size_t)src->size + 1) : NULL;
    if (!text) {
        fb_source_unref(src);
        return fb_set_error(FB_ERR_FORMAT, "%s: too large for a config.json", path);
    }
    st = fb_source_pread(src, 0, (size_t)src->size, text);
    text[src->size] = '\0';
    fb_source_unref(src);
    cJSON *root = st ? NULL : cJSON_Parse(text);
    fb_free(text);
    if (st) return st;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fb_set_error(FB_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = root;
    return FB_OK;
}

fb_status fb_clip_config_check(const fb_clip_config *c, const char *where)
{
    if (c->hidden <= 0 || c->intermediate <= 0 || c->heads <= 0 || c->layers <= 0 ||
        c->image_size <= 0 || c->patch_size <= 0 || c->channels <= 0)
        return fb_set_error(FB_ERR_FORMAT, "%s: sizes must be positive", where);
    /* bounds far beyond any real vision tower that keep every size product below 2^62 */
    const struct {
        const char *name;
        int64_t value, max;
    } lim[] = {
        {"hidden_size", c->hidden, 1 << 16},        {"intermediate_size", c->intermediate, 1 << 18},
        {"num_attention_heads", c->heads, 1 << 10}, {"image_size", c->image_size, 1 << 14},
        {"patch_size", c->patch_size, 1 << 14},     {"num_channels", c->channels, 1 << 10},
        {"projection_dim", c->projection, 1 << 16},
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
        if (lim[i].value > lim[i].max)
            return fb_set_error(FB_ERR_FORMAT, "%s: %s %lld exceeds %lld", where, lim[i].name,
                                (long long)lim[i].value, (long long)lim[i].max);
    if (c->hidden % c->heads)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: hidden_size %lld is not a multiple of "
                            "num_attention_heads %lld",
                            where, (long long)c->hidden, (long long)c->heads);
    if (c->image_size % c->patch_size)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: image_size %lld is not a multiple of patch_size %lld", where,
                            (long long)c->image_size, (long long)c->patch_size);
    if (c->layers > MAX_LAYERS)
        return fb_set_error(FB_ERR_FORMAT, "%s: num_hidden_layers %lld exceeds %d", where,
                            (long long)c->layers, MAX_LAYERS);
    const int64_t grid = c->image_size / c->patch_size;
    if (grid > 1024)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: image_size / patch_size is %lld; at most 1024 "
                            "patches a side",
                            where, (long long)grid);
    if (!(c->eps > 0))
        return fb_set_error(FB_ERR_FORMAT, "%s: layer_norm_eps must be positive", where);
    return FB_OK;
}

fb_status fb_clip_config_load(const char *path, fb_clip_config *out)
{
    cJSON *root;
    fb_status st = fb_clip_json_load(path, &root);
    if (st) return st;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    const cJSON *o = cJSON_IsObject(v) ? v : root;
    fb_clip_config c = {0};
    st = fb_clip_json_int(path, o, "hidden_size", -1, &c.hidden);
    if (!st) st = fb_clip_json_int(path, o, "intermediate_size", -1, &c.intermediate);
    if (!st) st = fb_clip_json_int(path, o, "num_attention_heads", -1, &c.heads);
    if (!st) st = fb_clip_json_int(path, o, "num_hidden_layers", -1, &c.layers);
    if (!st) st = fb_clip_json_int(path, o, "image_size", -1, &c.image_size);
    if (!st) st = fb_clip_json_int(path, o, "patch_size", -1, &c.patch_size);
    if (!st) st = fb_clip_json_int(path, o, "num_channels", 3, &c.channels);
    if (!st) {
        int64_t proj = 0;
        const cJSON *po = cJSON_GetObjectItemCaseSensitive(o, "projection_dim") ? o : root;
        st = fb_clip_json_int(path, po, "projection_dim", 0, &proj);
        c.projection = proj;
    }
    if (!st) st = fb_clip_json_act(path, "", o, &c.quick_gelu);
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(o, "layer_norm_eps");
    c.eps = cJSON_IsNumber(eps) ? (float)eps->valuedouble : 1e-5f;
    cJSON_Delete(root);
    if (!st) st = fb_clip_config_check(&c, path);
    if (!st) *out = c;
    return st;
}

/* ------------------------------------------------------------------ building -- */

/* A parameter of shape [d0, d1, d2, d3] (trailing zeros: fewer dimensions). */
static float *add_view(fb_clip *n, const char *name, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    view *v = &n->views[n->num_views++];
    snprintf(v->name, sizeof v->name, "%s", name);
    const int64_t d[4] = {d0, d1, d2, d3};
    int64_t numel = 1;
    v->ndim = 0;
    while (v->ndim < 4 && d[v->ndim])
        v->shape[v->ndim] = d[v->ndim], numel *= d[v->ndim++];
    v->offset = n->num_params;
    v->numel = numel;
    n->num_params += numel;
    return (float *)(uintptr_t)v->offset; /* an offset until the buffer exists */
}

#define AT(n, p) ((n)->params + (int64_t)(uintptr_t)(p))

static fb_status create(const fb_clip_config *cfg, int64_t max_batch, int inference, fb_clip **out);

fb_status fb_clip_create(const fb_clip_config *cfg, int64_t max_batch, fb_clip **out)
{
    return create(cfg, max_batch, 0, out);
}

fb_status fb_clip_create_inference(const fb_clip_config *cfg, int64_t max_batch, fb_clip **out)
{
    return create(cfg, max_batch, 1, out);
}

static fb_status create(const fb_clip_config *cfg, int64_t max_batch, int inference, fb_clip **out)
{
    *out = NULL;
    fb_status st = fb_clip_config_check(cfg, "clip config");
    if (st) return st;
    if (max_batch <= 0)
        return fb_set_error(FB_ERR_ARG, "batch size %lld must be positive", (long long)max_batch);
    { /* the largest buffer, attention weights (batch x heads x tokens^2), within int64 */
        double T = (double)(cfg->image_size / cfg->patch_size);
        T = T * T + 1;
        if ((double)max_batch * (double)cfg->heads * T * T > 0x1p60)
            return fb_set_error(FB_ERR_ARG, "batch size %lld is too large for this model",
                                (long long)max_batch);
    }
    fb_clip *n = fb_calloc(1, sizeof *n);
    if (!n) return FB_ERR_NOMEM;
    n->c = *cfg;
    n->max_batch = max_batch;
    const int64_t E = cfg->hidden, I = cfg->intermediate, G = cfg->image_size / cfg->patch_size;
    n->NP = G * G;
    n->T = n->NP + 1;
    n->views = fb_calloc((size_t)(16 * cfg->layers + 16), sizeof *n->views);
    if (!n->views) {
        fb_free(n);
        return FB_ERR_NOMEM;
    }
    /* parameters in the order of transformers' state dict */
    char name[160];
    const char *vm = "vision_model";
    snprintf(name, sizeof name, "%s.embeddings.class_embedding", vm);
    n->cls = add_view(n, name, E, 0, 0, 0);
    snprintf(name, sizeof name, "%s.embeddings.patch_embedding.weight", vm);
    n->pe_w = add_view(n, name, E, cfg->channels, cfg->patch_size, cfg->patch_size);
    snprintf(name, sizeof name, "%s.embeddings.position_embedding.weight", vm);
    n->pos = add_view(n, name, n->T, E, 0, 0);
    snprintf(name, sizeof name, "%s.pre_layrnorm.weight", vm);
    n->pre_w = add_view(n, name, E, 0, 0, 0);
    snprintf(name, sizeof name, "%s.pre_layrnorm.bias", vm);
    n->pre_b = add_view(n, name, E, 0, 0, 0);
    for (int64_t l = 0; l < cfg->layers; l++) {
        layer_params *p = &n->L[l];
        struct {
            const char *suffix;
            float **slot;
            int64_t rows, cols; /* cols 0: a vector */
        } items[] = {
            {"self_attn.k_proj.weight", &p->k_w, E, E},
            {"self_attn.k_proj.bias", &p->k_b, E, 0},
            {"self_attn.v_proj.weight", &p->v_w, E, E},
            {"self_attn.v_proj.bias", &p->v_b, E, 0},
            {"self_attn.q_proj.weight", &p->q_w, E, E},
            {"self_attn.q_proj.bias", &p->q_b, E, 0},
            {"self_attn.out_proj.weight", &p->o_w, E, E},
            {"self_attn.out_proj.bias", &p->o_b, E, 0},
            {"layer_norm1.weight", &p->ln1_w, E, 0},
            {"layer_norm1.bias", &p->ln1_b, E, 0},
            {"mlp.fc1.weight", &p->fc1_w, I, E},
            {"mlp.fc1.bias", &p->fc1_b, I, 0},
            {"mlp.fc2.weight", &p->fc2_w, E, I},
            {"mlp.fc2.bias", &p->fc2_b, E, 0},
            {"layer_norm2.weight", &p->ln2_w, E, 0},
            {"layer_norm2.bias", &p->ln2_b, E, 0},
        };
        for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
            snprintf(name, sizeof name, "%s.encoder.layers.%lld.%s", vm, (long long)l,
                     items[i].suffix);
            *items[i].slot = add_view(n, name, items[i].rows, items[i].cols, 0, 0);
        }
    }
    snprintf(name, sizeof name, "%s.post_layernorm.weight", vm);
    n->post_w = add_view(n, name, E, 0, 0, 0);
    snprintf(name, sizeof name, "%s.post_layernorm.bias", vm);
    n->post_b = add_view(n, name, E, 0, 0, 0);
    if (cfg->projection)
        n->proj_w = add_view(n, "visual_projection.weight", cfg->projection, E, 0, 0);

    n->params = fb_calloc((size_t)n->num_params, sizeof(float));
    n->grads = inference ? NULL : fb_calloc((size_t)n->num_params, sizeof(float));
    n->inference = inference;
    /* activations and backward scratch, sized for max_batch */
    const int64_t Bm = max_batch, T = n->T, H = cfg->heads,
                  K = cfg->channels * cfg->patch_size * cfg->patch_size;
    const int64_t BTE = Bm * T * E, BTI = Bm * T * I, BHTT = Bm * H * T * T;
    const int64_t F = cfg->projection ? cfg->projection : E;
    /* inference: one layer's activations, shared by every layer, and two outputs used in
     * turn (a layer reads the previous one's); no backward scratch */
    const int64_t stored = inference ? 1 : cfg->layers;
    int64_t total = Bm * n->NP * K + Bm * n->NP * E + 2 * BTE +
                    2 * Bm * T                                         /* cols pe emb x0 stats */
                    + stored * (8 * BTE + 4 * Bm * T + BHTT + 2 * BTI) /* per layer */
                    + (inference ? BTE : 0)                            /* second out */
                    + 2 * Bm * E + 2 * Bm + Bm * F                     /* pooled, features */
                    + (inference ? 0 : 8 * BTE + 2 * BTI + BHTT + Bm * n->NP * E + 2 * Bm * E);
    n->arena = fb_malloc((size_t)total * sizeof(float));
    if (!n->params || (!n->grads && !inference) || !n->arena) {
        fb_clip_free(n);
        return FB_ERR_NOMEM;
    }
    /* turn the stored offsets into pointers */
    n->cls = AT(n, n->cls);
    n->pe_w = AT(n, n->pe_w);
    n->pos = AT(n, n->pos);
    n->pre_w = AT(n, n->pre_w);
    n->pre_b = AT(n, n->pre_b);
    n->post_w = AT(n, n->post_w);
    n->post_b = AT(n, n->post_b);
    if (n->proj_w) n->proj_w = AT(n, n->proj_w);
    for (int64_t l = 0; l < cfg->layers; l++) {
        float **f = (float **)&n->L[l];
        for (size_t i = 0; i < sizeof(layer_params) / sizeof(float *); i++)
            f[i] = AT(n, f[i]);
    }
    float *a = n->arena;
#define TAKE(ptr, count) ((ptr) = a, a += (count))
    TAKE(n->cols, Bm * n->NP * K);
    TAKE(n->pe, Bm * n->NP * E);
    TAKE(n->emb, BTE);
    TAKE(n->x0, BTE);
    TAKE(n->mean0, Bm * T);
    TAKE(n->rstd0, Bm * T);
    for (int64_t l = 0; l < cfg->layers; l++) {
        layer_acts *A = &n->A[l];
        A->in = l ? n->A[l - 1].out : n->x0;
        TAKE(A->ln1, BTE);
        TAKE(A->mean1, Bm * T);
        TAKE(A->rstd1, Bm * T);
        TAKE(A->q, BTE);
        TAKE(A->k, BTE);
        TAKE(A->v, BTE);
        TAKE(A->att, BHTT);
        TAKE(A->a, BTE);
        TAKE(A->x1, BTE);
        TAKE(A->ln2, BTE);
        TAKE(A->mean2, Bm * T);
        TAKE(A->rstd2, Bm * T);
        TAKE(A->h, BTI);
        TAKE(A->g, BTI);
        TAKE(A->out, BTE);
        if (inference) { /* the rest share layer 0's buffers; outputs alternate */
            float *other;
            TAKE(other, BTE);
            for (int64_t m = 1; m < cfg->layers; m++) {
                n->A[m] = *A;
                n->A[m].in = n->A[m - 1].out;
                n->A[m].out = m % 2 ? other : A->out;
            }
            break;
        }
    }
    TAKE(n->pooled_in, Bm * E);
    TAKE(n->pooled, Bm * E);
    TAKE(n->meanp, Bm);
    TAKE(n->rstdp, Bm);
    TAKE(n->features, Bm * F);
    if (inference) {
#undef TAKE
        *out = n;
        return FB_OK;
    }
#define TAKE(ptr, count) ((ptr) = a, a += (count))
    TAKE(n->dx, BTE);
    TAKE(n->dx1, BTE);
    TAKE(n->dln, BTE);
    TAKE(n->dq, BTE);
    TAKE(n->dk, BTE);
    TAKE(n->dv, BTE);
    TAKE(n->da, BTE);
    TAKE(n->demb, BTE);
    TAKE(n->dh, BTI);
    TAKE(n->dg, BTI);
    TAKE(n->datt, BHTT);
    TAKE(n->dpe, Bm * n->NP * E);
    TAKE(n->dpooled, Bm * E);
    TAKE(n->dpooled_in, Bm * E);
#undef TAKE
    *out = n;
    return FB_OK;
}

static void smile_free(fb_clip *n)
{
    if (!n->smile) return;
    for (int64_t i = 0; i < n->c.layers * SL_PER_LAYER + 1; i++) {
        fb_free(n->smile[i].gate);
        fb_free(n->smile[i].u);
        fb_free(n->smile[i].svh);
        fb_free(n->smile[i].bias);
    }
    fb_free(n->smile);
    n->smile = NULL;
}

static void wemoe_free(fb_clip *n);

void fb_clip_free(fb_clip *n)
{
    if (!n) return;
    smile_free(n);
    wemoe_free(n);
    fb_free(n->params);
    fb_free(n->grads);
    fb_free(n->arena);
    fb_free(n->views);
    fb_free(n);
}

int64_t fb_clip_num_params(const fb_clip *n)
{
    return n->num_params;
}
fb_clip_config fb_clip_get_config(const fb_clip *n)
{
    return n->c;
}
int64_t fb_clip_max_batch(const fb_clip *n)
{
    return n->max_batch;
}
float *fb_clip_params(fb_clip *n)
{
    return n->params;
}
float *fb_clip_grads(fb_clip *n)
{
    return n->grads;
}
int64_t fb_clip_num_tensors(const fb_clip *n)
{
    return n->num_views;
}

const char *fb_clip_tensor_name(const fb_clip *n, int64_t i, int64_t *numel)
{
    if (numel) *numel = n->views[i].numel;
    return n->views[i].name;
}

fb_status fb_clip_to_model(fb_clip *n, fb_model **out)
{
    fb_model *m;
    fb_status st = fb_model_create(&m);
    for (int64_t i = 0; i < n->num_views && !st; i++) {
        const view *v = &n->views[i];
        st = fb_model_add_tensor_borrowed(m, v->name, FB_F32, v->ndim, v->shape,
                                          n->params + v->offset);
    }
    if (st) {
        fb_model_free(m);
        return st;
    }
    *out = m;
    return FB_OK;
}

const float *fb_clip_linear_input(const fb_clip *n, const char *weight, int64_t *rows,
                                  int64_t *cols)
{
    const int64_t E = n->c.hidden, BT = n->batch * n->T;
    if (!strcmp(weight, "visual_projection.weight") && n->proj_w) {
        *rows = n->batch;
        *cols = E;
        return n->pooled;
    }
    if (n->inference) return NULL; /* the layers' inputs are not kept */
    long long l;
    char rest[64];
    if (sscanf(weight, "vision_model.encoder.layers.%lld.%63s", &l, rest) != 2 || l < 0 ||
        l >= n->c.layers)
        return NULL;
    const layer_acts *A = &n->A[l];
    *rows = BT;
    *cols = E;
    if (!strcmp(rest, "self_attn.q_proj.weight") || !strcmp(rest, "self_attn.k_proj.weight") ||
        !strcmp(rest, "self_attn.v_proj.weight"))
        return A->ln1;
    if (!strcmp(rest, "self_attn.out_proj.weight")) return A->a;
    if (!strcmp(rest, "mlp.fc1.weight")) return A->ln2;
    if (!strcmp(rest, "mlp.fc2.weight")) {
        *cols = n->c.intermediate;
        return A->g;
    }
    return NULL;
}

static const view *find_view(const fb_clip *n, const char *name)
{
    for (int64_t i = 0; i < n->num_views; i++)
        if (!strcmp(n->views[i].name, name)) return &n->views[i];
    return NULL;
}

float *fb_clip_param(fb_clip *n, const char *name, int64_t *numel)
{
    const view *v = find_view(n, name);
    if (!v) return NULL;
    if (numel) *numel = v->numel;
    return n->params + v->offset;
}

float *fb_clip_grad(fb_clip *n, const char *name, int64_t *numel)
{
    const view *v = find_view(n, name);
    if (!v) return NULL;
    if (numel) *numel = v->numel;
    return n->grads + v->offset;
}

fb_status fb_clip_set_params(fb_clip *n, const fb_model *w)
{
    return fb_clip_set_params_from(n, w, NULL);
}

fb_status fb_clip_set_params_from(fb_clip *n, const fb_model *w, const fb_model *fallback)
{
    for (int64_t i = 0; i < n->num_views; i++) {
        const view *v = &n->views[i];
        const fb_tensor *t = fb_model_find(w, v->name);
        const char *dot = strrchr(v->name, '.');
        if (!t && dot) { /* a SMILE layer keeps its own weights as <layer>.pretrained_model.* */
            char alt[200];
            snprintf(alt, sizeof alt, "%.*s.pretrained_model%s", (int)(dot - v->name), v->name,
                     dot);
            t = fb_model_find(w, alt);
        }
        if (!t && dot) { /* a WE-MoE MLP keeps its own as <mlp>.base_model.fc1.weight */
            const char *d2 = dot;
            while (d2 > v->name && d2[-1] != '.')
                d2--;
            if (d2 > v->name) {
                char alt[200];
                snprintf(alt, sizeof alt, "%.*sbase_model.%s", (int)(d2 - v->name), v->name, d2);
                t = fb_model_find(w, alt);
            }
        }
        if (!t && fallback) t = fb_model_find(fallback, v->name);
        if (!t)
            return fb_set_error(FB_ERR_NOT_FOUND, "%s: checkpoint lacks parameter '%s'",
                                fb_model_label(w), v->name);
        if (fb_tensor_numel(t) != v->numel || !fb_dtype_is_float(fb_tensor_dtype(t)))
            return fb_set_error(FB_ERR_MISMATCH,
                                "%s: parameter '%s' has %lld %s elements, the config needs %lld",
                                fb_model_label(w), v->name, (long long)fb_tensor_numel(t),
                                fb_dtype_name(fb_tensor_dtype(t)), (long long)v->numel);
        fb_status st = fb_tensor_to_f32(t, n->params + v->offset);
        if (st) return st;
    }
    return FB_OK;
}

void fb_clip_zero_grad(fb_clip *n)
{
    memset(n->grads, 0, (size_t)n->num_params * sizeof(float));
    if (n->wm) memset(n->wm->grads, 0, (size_t)n->wm->num_params * sizeof(float));
}

/* the gradient view of a parameter; NULL (not computed) when WE-MoE layers freeze the tower */
#define G(n, p) ((n)->wm ? NULL : (n)->grads + ((p) - (n)->params))

/* ------------------------------------------------------------------- SMILE -- */

/* Adds SMILE's experts to y [N, out], the layer's own output for x [N, in], as FusionBench's
 * SmileMoELinear: router logits ||gate_i x|| per expert, softmax, the top_k kept (ties to the
 * lower index) and renormalised; the selected experts' u (svh x) + bias, weighted, summed in
 * expert order into a zeroed buffer, which is then added to y. Returns nonzero when out of
 * memory. Rows are independent and every GEMM's blocks follow from its row count: the same
 * bytes for any thread count. */
static int smile_apply(const fb_clip *n, int64_t layer, int slot, const float *x, float *y,
                       int64_t N, int64_t in, int64_t out)
{
    if (!n->smile) return 0;
    const smile_linear *sl = &n->smile[layer * SL_PER_LAYER + slot];
    if (!sl->E) return 0;
    const int64_t E = sl->E, gk = sl->gk, k = sl->k, K = n->smile_top_k;
    float *G = fb_malloc((size_t)(N * E * gk) * sizeof *G);
    float *w = fb_malloc((size_t)(N * K) * sizeof *w);
    int32_t *sel = fb_malloc((size_t)(N * K) * sizeof *sel);
    int64_t *rows = fb_malloc((size_t)N * sizeof *rows);
    float *X = fb_malloc((size_t)(N * in) * sizeof *X),
          *Tm = fb_malloc((size_t)(N * k) * sizeof *Tm);
    float *Y = fb_malloc((size_t)(N * out) * sizeof *Y),
          *acc = fb_calloc((size_t)(N * out), sizeof *acc);
    int fail = !G || !w || !sel || !rows || !X || !Tm || !Y || !acc;
    if (!fail) {
        fb_linear_forward(G, x, sl->gate, NULL, N, in, E * gk);
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < N; r++) {
            float p[256];
            const float *g = G + r * E * gk;
            float mx = -INFINITY, sum = 0.0f;
            for (int64_t i = 0; i < E; i++) {
                float s2 = 0.0f;
                for (int64_t j = 0; j < gk; j++)
                    s2 += g[i * gk + j] * g[i * gk + j];
                p[i] = E == 1 ? 1.0f : sqrtf(s2); /* FusionBench's one-expert gate gives 1 */
                mx = p[i] > mx ? p[i] : mx;
            }
            for (int64_t i = 0; i < E; i++)
                sum += p[i] = expf(p[i] - mx);
            for (int64_t i = 0; i < E; i++)
                p[i] /= sum;
            float tot = 0.0f;
            for (int64_t j = 0; j < K; j++) { /* the j-th largest, lowest index on ties */
                int64_t best = -1;
                for (int64_t i = 0; i < E; i++) {
                    int taken = 0;
                    for (int64_t m = 0; m < j; m++)
                        taken |= sel[r * K + m] == i;
                    if (!taken && (best < 0 || p[i] > p[best])) best = i;
                }
                sel[r * K + j] = (int32_t)best;
                w[r * K + j] = p[best];
                tot += p[best];
            }
            for (int64_t j = 0; j < K; j++)
                w[r * K + j] /= tot;
        }
        for (int64_t i = 0; i < E; i++) {
            int64_t cnt = 0;
            for (int64_t r = 0; r < N; r++)
                for (int64_t j = 0; j < K; j++)
                    if (sel[r * K + j] == i) rows[cnt++] = r * K + j;
            if (!cnt) continue;
#pragma omp parallel for schedule(static)
            for (int64_t c = 0; c < cnt; c++)
                memcpy(X + c * in, x + (rows[c] / K) * in, (size_t)in * sizeof *X);
            fb_linear_forward(Tm, X, sl->svh + i * k * in, NULL, cnt, in, k);
            fb_linear_forward(Y, Tm, sl->u + i * out * k, sl->bias ? sl->bias + i * out : NULL, cnt,
                              k, out);
#pragma omp parallel for schedule(static)
            for (int64_t c = 0; c < cnt; c++) {
                const float wc = w[rows[c]];
                float *a = acc + (rows[c] / K) * out;
                for (int64_t o = 0; o < out; o++)
                    a[o] += Y[c * out + o] * wc;
            }
        }
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < N; r++)
            for (int64_t o = 0; o < out; o++)
                y[r * out + o] += acc[r * out + o];
    }
    fb_free(G);
    fb_free(w);
    fb_free(sel);
    fb_free(rows);
    fb_free(X);
    fb_free(Tm);
    fb_free(Y);
    fb_free(acc);
    return fail;
}

/* one expert tensor of a SMILE layer into dst (n floats), checked */
static fb_status smile_tensor(const fb_model *m, const char *name, int64_t n, float *dst)
{
    const fb_tensor *t = fb_model_find(m, name);
    if (!t)
        return fb_set_error(FB_ERR_NOT_FOUND, "%s: SMILE model lacks tensor '%s'",
                            fb_model_label(m), name);
    if (fb_tensor_numel(t) != n || !fb_dtype_is_float(fb_tensor_dtype(t)))
        return fb_set_error(FB_ERR_MISMATCH,
                            "%s: SMILE tensor '%s' has %lld elements, the layer "
                            "needs %lld",
                            fb_model_label(m), name, (long long)fb_tensor_numel(t), (long long)n);
    return fb_tensor_to_f32(t, dst);
}

static fb_status smile_load(fb_clip *n, const fb_model *m, const char *prefix, int64_t E,
                            int64_t in, int64_t out, int has_bias, smile_linear *sl)
{
    char name[256];
    snprintf(name, sizeof name, "%s.gate.weights", prefix);
    const fb_tensor *g = fb_model_find(m, name);
    char uname[256];
    snprintf(uname, sizeof uname, "%s.experts.0.u", prefix);
    const fb_tensor *u0 = fb_model_find(m, uname);
    if (!g && u0)
        return fb_set_error(FB_ERR_FORMAT, "%s: SMILE model lacks router tensor '%s'",
                            fb_model_label(m), name);
    if (!g) return FB_OK; /* a plain layer: no fine-tune changed it */
    snprintf(name, sizeof name, "%s", uname);
    if (!u0 || fb_tensor_ndim(u0) != 2 || fb_tensor_shape(u0)[0] != out)
        return fb_set_error(FB_ERR_NOT_FOUND, "%s: SMILE model lacks tensor '%s' [%lld, k]",
                            fb_model_label(m), name, (long long)out);
    const int64_t k = fb_tensor_shape(u0)[1], rows = fb_tensor_shape(g)[0];
    if (fb_tensor_ndim(g) != 2 || fb_tensor_shape(g)[1] != in || rows % E || k <= 0)
        return fb_set_error(FB_ERR_MISMATCH,
                            "%s: SMILE router '%s.gate.weights' must be "
                            "[%lld x gate_k, %lld]",
                            fb_model_label(m), prefix, (long long)E, (long long)in);
    (void)n;
    sl->E = E;
    sl->k = k;
    sl->gk = rows / E;
    sl->gate = fb_malloc((size_t)(rows * in) * sizeof *sl->gate);
    sl->u = fb_malloc((size_t)(E * out * k) * sizeof *sl->u);
    sl->svh = fb_malloc((size_t)(E * k * in) * sizeof *sl->svh);
    sl->bias = has_bias ? fb_malloc((size_t)(E * out) * sizeof *sl->bias) : NULL;
    if (!sl->gate || !sl->u || !sl->svh || (has_bias && !sl->bias)) return FB_ERR_NOMEM;
    fb_status st = fb_tensor_to_f32(g, sl->gate);
    for (int64_t i = 0; i < E && !st; i++) {
        snprintf(name, sizeof name, "%s.experts.%lld.u", prefix, (long long)i);
        st = smile_tensor(m, name, out * k, sl->u + i * out * k);
        snprintf(name, sizeof name, "%s.experts.%lld.svh", prefix, (long long)i);
        if (!st) st = smile_tensor(m, name, k * in, sl->svh + i * k * in);
        snprintf(name, sizeof name, "%s.experts.%lld.bias", prefix, (long long)i);
        if (!st && has_bias) st = smile_tensor(m, name, out, sl->bias + i * out);
    }
    return st;
}

fb_status fb_clip_set_smile(fb_clip *n, const fb_model *m)
{
    smile_free(n);
    const char *kind = fb_model_get_metadata(m, "fusionbench_c.structure");
    if (!kind || strcmp(kind, "smile_upscaling")) return FB_OK;
    const char *ne = fb_model_get_metadata(m, "smile.num_experts");
    const char *tk = fb_model_get_metadata(m, "smile.top_k");
    const long long E = ne ? atoll(ne) : 0, K = tk ? atoll(tk) : 0;
    if (E < 1 || E > 256 || K < 1 || K > E)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: SMILE metadata smile.num_experts '%s' and "
                            "smile.top_k '%s' must be 1 <= top_k <= experts <= 256",
                            fb_model_label(m), ne ? ne : "", tk ? tk : "");
    const fb_clip_config *c = &n->c;
    const int64_t slots = c->layers * SL_PER_LAYER + 1;
    if (!(n->smile = fb_calloc((size_t)slots, sizeof *n->smile))) return FB_ERR_NOMEM;
    n->smile_top_k = K;
    static const char *const names[SL_PER_LAYER] = {"self_attn.q_proj", "self_attn.k_proj",
                                                    "self_attn.v_proj", "self_attn.out_proj",
                                                    "mlp.fc1",          "mlp.fc2"};
    fb_status st = FB_OK;
    int any = 0;
    for (int64_t l = 0; l < c->layers && !st; l++)
        for (int s = 0; s < SL_PER_LAYER && !st; s++) {
            char prefix[160];
            snprintf(prefix, sizeof prefix, "vision_model.encoder.layers.%lld.%s", (long long)l,
                     names[s]);
            const int64_t in = s == SL_FC2 ? c->intermediate : c->hidden;
            const int64_t out = s == SL_FC1 ? c->intermediate : c->hidden;
            smile_linear *sl = &n->smile[l * SL_PER_LAYER + s];
            st = smile_load(n, m, prefix, E, in, out, 1, sl);
            any |= sl->E > 0;
        }
    if (!st && c->projection) {
        st = smile_load(n, m, "visual_projection", E, c->hidden, c->projection, 0,
                        &n->smile[c->layers * SL_PER_LAYER]);
        any |= n->smile[c->layers * SL_PER_LAYER].E > 0;
    }
    if (!st && !any)
        st = fb_set_error(FB_ERR_FORMAT,
                          "%s: a SMILE model without any upscaled layer of the "
                          "vision tower",
                          fb_model_label(m));
    if (st) smile_free(n);
    return st;
}

/* ------------------------------------------------------- weight-ensembling MoE -- */

enum { WM_BLOCK = 16384 }; /* elements per block of the merge and of the dot products */

/* The MLP's parameters in the tower's layout (fc1.weight, fc1.bias, fc2.weight, fc2.bias are
 * adjacent views) and a router's tensors by depth, in FusionBench's state-dict order. */
static const char *const mlp_parts[4] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
static const char *const gate_parts[3][4] = {
    {"weight"},
    {"fc.weight", "fc.bias"},
    {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"},
};

static void wemoe_free(fb_clip *n)
{
    wemoe *w = n->wm;
    if (!w) return;
    for (int64_t l = 0; l < n->c.layers; l++)
        fb_free((void *)w->L[l].tv), fb_free(w->L[l].own);
    fb_free(w->params);
    fb_free(w->grads);
    fb_free(w->views);
    fb_free(w->merged);
    fb_free(w->dmerged);
    fb_free(w->dz);
    fb_free(w->dh1);
    fb_free(w->dgin);
    fb_free(w->acts);
    fb_free(w->rs);
    fb_free(w->partials);
    fb_free(w);
    n->wm = NULL;
}

/* one WE-MoE tensor, checked: into dst (numel floats), or (dst NULL, *view not NULL) its own
 * f32 bytes when it is stored as f32 (*view NULL otherwise) */
static fb_status wemoe_tensor(const fb_model *m, const char *name, int64_t numel, float *dst,
                              const float **view)
{
    const fb_tensor *t = fb_model_find(m, name);
    if (!t)
        return fb_set_error(FB_ERR_NOT_FOUND, "%s: weight-ensembling MoE model lacks '%s'",
                            fb_model_label(m), name);
    if (fb_tensor_numel(t) != numel || !fb_dtype_is_float(fb_tensor_dtype(t)))
        return fb_set_error(FB_ERR_MISMATCH,
                            "%s: '%s' has %lld %s elements, the model needs %lld floats",
                            fb_model_label(m), name, (long long)fb_tensor_numel(t),
                            fb_dtype_name(fb_tensor_dtype(t)), (long long)numel);
    if (!dst) {
        const void *d = NULL;
        *view = NULL;
        if (fb_tensor_dtype(t) == FB_F32 && !fb_tensor_data(t, &d)) *view = d;
        return FB_OK;
    }
    return fb_tensor_to_f32(t, dst);
}

static fb_status wemoe_meta_int(const fb_model *m, const char *key, int64_t lo, int64_t hi,
                                int64_t *out)
{
    const char *v = fb_model_get_metadata(m, key);
    char *end = NULL;
    long long x = v ? strtoll(v, &end, 10) : 0;
    if (!v || end == v || *end || x < lo || x > hi)
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: weight-ensembling MoE metadata %s is '%s', expected %lld to %lld",
                            fb_model_label(m), key, v ? v : "(absent)", (long long)lo,
                            (long long)hi);
    *out = x;
    return FB_OK;
}

fb_status fb_clip_set_wemoe(fb_clip *n, const fb_model *m)
{
    wemoe_free(n);
    const char *kind = fb_model_get_metadata(m, "fusionbench_c.structure");
    if (!kind || strcmp(kind, "weight_ensembling_moe")) return FB_OK;
    const fb_clip_config *c = &n->c;
    const int64_t D = c->hidden, I = c->intermediate, NL = c->layers;
    const int64_t BT = n->max_batch * n->T;
    int64_t E = 0, depth = 0;
    fb_status st = wemoe_meta_int(m, "wemoe.num_experts", 1, 256, &E);
    if (!st) st = wemoe_meta_int(m, "wemoe.router_hidden_layers", 0, 2, &depth);
    const char *br = fb_model_get_metadata(m, "wemoe.batch_reduce");
    const char *sg = fb_model_get_metadata(m, "wemoe.shared_gate");
    if (!st && br && strcmp(br, "true") && strcmp(br, "false"))
        st = fb_set_error(FB_ERR_FORMAT,
                          "%s: weight-ensembling MoE metadata wemoe.batch_reduce is '%s', "
                          "expected true or false",
                          fb_model_label(m), br);
    if (!st && sg && strcmp(sg, "true") && strcmp(sg, "false"))
        st = fb_set_error(FB_ERR_FORMAT,
                          "%s: weight-ensembling MoE metadata wemoe.shared_gate is '%s', "
                          "expected true or false",
                          fb_model_label(m), sg);
    int64_t P = 0;
    if (!st && fb_model_get_metadata(m, "wemoe.position_encoding_dim"))
        st = wemoe_meta_int(m, "wemoe.position_encoding_dim", 0, 64, &P);
    if (!st && (P % 2 || (P && depth == 0)))
        st = fb_set_error(FB_ERR_FORMAT,
                          "%s: weight-ensembling MoE metadata wemoe.position_encoding_dim %lld "
                          "must be even, and 0 for a Depth_0 router",
                          fb_model_label(m), (long long)P);
    if (st) return st;
    const int64_t Din = D + P;
    wemoe *w = fb_calloc(1, sizeof *w);
    if (!w) return FB_ERR_NOMEM;
    n->wm = w;
    w->E = E;
    w->depth = depth;
    w->M = 2 * D * I + I + D;
    const int64_t pn[4] = {I * D, I, D * I, D};
    for (int j = 0; j < 4; j++) {
        w->part_n[j] = pn[j];
        w->part_off[j] = j ? w->part_off[j - 1] + pn[j - 1] : 0;
        w->part_blocks[j + 1] = w->part_blocks[j] + (pn[j] + WM_BLOCK - 1) / WM_BLOCK;
    }
    w->batch_reduce = br && !strcmp(br, "true");
    w->shared = sg && !strcmp(sg, "true");
    w->P = P;
    w->Din = Din;
    const int64_t shapes[3][4][2] = {
        {{E, 0}},
        {{E, Din}, {E, 0}},
        {{Din, Din}, {Din, 0}, {E, Din}, {E, 0}},
    };
    const int parts = depth == 0 ? 1 : depth == 1 ? 2 : 4;
    w->views = fb_calloc((size_t)(NL * parts), sizeof *w->views);
    if (!w->views) st = FB_ERR_NOMEM;
    for (int64_t l = 0; l < NL && !st; l++)
        for (int j = 0; j < parts; j++) {
            view *v = &w->views[w->num_views++];
            snprintf(v->name, sizeof v->name, "vision_model.encoder.layers.%lld.mlp.gate.%s",
                     (long long)l, gate_parts[depth][j]);
            v->ndim = shapes[depth][j][1] ? 2 : 1;
            v->shape[0] = shapes[depth][j][0];
            v->shape[1] = shapes[depth][j][1];
            v->numel = v->shape[0] * (v->ndim == 2 ? v->shape[1] : 1);
            if (w->shared && l) { /* every layer's names, one set of parameters */
                v->offset = w->views[j].offset;
                continue;
            }
            v->offset = w->num_params;
            w->num_params += v->numel;
        }
    const int64_t stored = n->inference ? 1 : NL; /* router activations kept for backward */
    const int64_t per = (depth == 2 ? 2 * BT * Din : 0) + (depth ? BT * E : 0) + (P ? BT * Din : 0);
    if (!st) {
        w->params = fb_malloc((size_t)w->num_params * sizeof(float));
        w->grads = fb_calloc((size_t)w->num_params, sizeof(float));
        /* merged MLPs made together: as many as 256 MB hold (one at least) */
        w->chunk = (int64_t)((256 << 20) / (w->M * (int64_t)sizeof(float)));
        w->chunk = w->chunk < 1 ? 1 : w->chunk > n->max_batch ? n->max_batch : w->chunk;
        w->merged = fb_malloc((size_t)(w->chunk * w->M) * sizeof(float));
        w->acts = fb_malloc((size_t)(stored * per + 1) * sizeof(float));
        w->rs = fb_malloc((size_t)(NL * n->max_batch * E) * sizeof(float));
        w->partials = fb_malloc((size_t)(w->part_blocks[4] * E) * sizeof(double));
        if (!n->inference) {
            w->dmerged = fb_malloc((size_t)w->M * sizeof(float));
            w->dz = fb_malloc((size_t)(BT * E) * sizeof(float));
            w->dh1 = fb_malloc((size_t)(BT * Din) * sizeof(float));
            w->dgin = fb_malloc((size_t)(BT * Din) * sizeof(float));
        }
        if (!w->params || !w->grads || !w->merged || !w->acts || !w->rs || !w->partials ||
            (!n->inference && (!w->dmerged || !w->dz || !w->dh1 || !w->dgin)))
            st = FB_ERR_NOMEM;
    }
    for (int64_t i = 0; i < w->num_views && !st; i++) {
        const view *v = &w->views[i];
        if (!w->shared || i < parts) {
            st = wemoe_tensor(m, v->name, v->numel, w->params + v->offset, NULL);
            continue;
        }
        /* a shared router appears under every layer's names: the same values */
        float *tmp = fb_malloc((size_t)v->numel * sizeof *tmp);
        if (!tmp) st = FB_ERR_NOMEM;
        if (!st) st = wemoe_tensor(m, v->name, v->numel, tmp, NULL);
        if (!st && memcmp(tmp, w->params + v->offset, (size_t)v->numel * sizeof *tmp))
            st = fb_set_error(FB_ERR_FORMAT,
                              "%s: '%s' differs from layer 0's, but the router is shared "
                              "(wemoe.shared_gate)",
                              fb_model_label(m), v->name);
        fb_free(tmp);
    }
    const int64_t *part_n = w->part_n;
    for (int64_t l = 0; l < NL && !st; l++) {
        wemoe_layer *W = &w->L[l];
        W->gate = w->params + w->views[l * parts].offset;
        W->dgate = w->grads + w->views[l * parts].offset;
        float *a = w->acts + (n->inference ? 0 : l) * per;
        if (depth == 2) W->u = a, W->h1 = a + BT * Din, W->z = a + 2 * BT * Din;
        if (depth == 1) W->z = a;
        if (P) W->gin = a + (depth == 2 ? 2 * BT * Din : 0) + BT * E;
        for (int64_t i = 0; i < P / 2; i++) { /* sin(l w_i), then cos(l w_i) */
            const double rate = 1.0 / pow(10000.0, (double)(2 * i) / (double)P);
            W->pe[i] = (float)sin((double)l * rate);
            W->pe[P / 2 + i] = (float)cos((double)l * rate);
        }
        W->r = w->rs + l * n->max_batch * E;
        if (!(W->tv = fb_calloc((size_t)(E * 4), sizeof *W->tv))) {
            st = FB_ERR_NOMEM;
            break;
        }
        /* f32 tensors are borrowed; the others converted into one buffer */
        int64_t own = 0;
        for (int pass = 0; pass < 2 && !st; pass++) {
            for (int64_t i = 0; i < E && !st; i++)
                for (int j = 0; j < 4 && !st; j++) {
                    char name[200];
                    snprintf(name, sizeof name,
                             "vision_model.encoder.layers.%lld.mlp.task_vectors.%lld.%s",
                             (long long)l, (long long)i, mlp_parts[j]);
                    if (!pass) {
                        st = wemoe_tensor(m, name, part_n[j], NULL, &W->tv[i * 4 + j]);
                        own += W->tv[i * 4 + j] ? 0 : part_n[j];
                    } else if (!W->tv[i * 4 + j]) {
                        float *dst = W->own + own;
                        st = wemoe_tensor(m, name, part_n[j], dst, NULL);
                        own += part_n[j];
                        W->tv[i * 4 + j] = dst;
                    }
                }
            if (!pass && own && !(W->own = fb_malloc((size_t)own * sizeof(float))))
                st = FB_ERR_NOMEM;
            if (!pass && !W->own) break;
            own = 0;
        }
    }
    if (st) wemoe_free(n);
    return st;
}

void fb_clip_wemoe_batch_reduce(fb_clip *n, int on)
{
    if (n->wm) n->wm->batch_reduce = on != 0;
}

float *fb_clip_wemoe_router(fb_clip *n, int64_t *count)
{
    if (count) *count = n->wm ? n->wm->num_params : 0;
    return n->wm ? n->wm->params : NULL;
}

float *fb_clip_wemoe_router_grad(fb_clip *n, int64_t *count)
{
    if (count) *count = n->wm ? n->wm->num_params : 0;
    return n->wm ? n->wm->grads : NULL;
}

int64_t fb_clip_wemoe_num_tensors(const fb_clip *n)
{
    return n->wm ? n->wm->num_views : 0;
}

const char *fb_clip_wemoe_tensor_name(const fb_clip *n, int64_t i, int64_t *offset,
                                      int64_t *numel)
{
    if (!n->wm || i < 0 || i >= n->wm->num_views) return NULL;
    if (offset) *offset = n->wm->views[i].offset;
    if (numel) *numel = n->wm->views[i].numel;
    return n->wm->views[i].name;
}

const float *fb_clip_wemoe_routing(const fb_clip *n, int64_t l, int64_t *groups)
{
    if (!n->wm || l < 0 || l >= n->c.layers) return NULL;
    if (groups) *groups = n->wm->L[l].groups;
    return n->wm->L[l].r;
}

/* The router's r for the B images of x [B*T, D]: the mean over each group's rows (all rows
 * with batch_reduce, else an image's tokens) of the router's logits, summed in row order in
 * double; Depth_0: the gate's weight, one group. */
static void wemoe_route(fb_clip *n, int64_t l, const float *x, int64_t B)
{
    wemoe *w = n->wm;
    wemoe_layer *W = &w->L[l];
    const int64_t D = n->c.hidden, E = w->E, BT = B * n->T, P = w->P, Din = w->Din;
    const float *g = W->gate;
    if (w->depth == 0) {
        W->groups = 1;
        memcpy(W->r, g, (size_t)E * sizeof(float));
        return;
    }
    if (P) { /* the router sees [position encoding, x] */
        for (int64_t i = 0; i < BT; i++) {
            memcpy(W->gin + i * Din, W->pe, (size_t)P * sizeof(float));
            memcpy(W->gin + i * Din + P, x + i * D, (size_t)D * sizeof(float));
        }
        x = W->gin;
    }
    if (w->depth == 1) {
        fb_linear_forward(W->z, x, g, g + E * Din, BT, Din, E);
    } else {
        fb_linear_forward(W->u, x, g, g + Din * Din, BT, Din, Din);
        fb_relu_forward(W->h1, W->u, BT * Din);
        fb_linear_forward(W->z, W->h1, g + Din * Din + Din, g + Din * Din + Din + E * Din, BT,
                          Din, E);
    }
    W->groups = w->batch_reduce ? 1 : B;
    const int64_t R = BT / W->groups;
    for (int64_t q = 0; q < W->groups; q++)
        for (int64_t e = 0; e < E; e++) {
            double s = 0;
            for (int64_t i = q * R; i < (q + 1) * R; i++)
                s += W->z[i * E + e];
            W->r[q * E + e] = (float)(s / (double)R);
        }
}

/* Block b of the MLP's parameters (blocks of WM_BLOCK within each of the four tensors): its
 * tensor *j, offset *s within it and length. */
static int64_t wemoe_block(const wemoe *w, int64_t b, int *j, int64_t *s)
{
    int k = 0;
    while (b >= w->part_blocks[k + 1])
        k++;
    *j = k;
    *s = (b - w->part_blocks[k]) * WM_BLOCK;
    return w->part_n[k] - *s < WM_BLOCK ? w->part_n[k] - *s : WM_BLOCK;
}

/* out_q = theta_0 + sum_i r_qi tau_i over the M MLP parameters for `count` routings r_q (rows
 * of E) into out (count x M), experts added in order; each block of the task vectors is read
 * once for all of them */
static void wemoe_merge(const fb_clip *n, const layer_params *p, const wemoe_layer *W,
                        const float *r, int64_t count, float *out)
{
    const wemoe *w = n->wm;
    const int64_t E = w->E, M = w->M, nb = w->part_blocks[4];
    const float *base = p->fc1_w;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int j;
        int64_t s;
        const int64_t len = wemoe_block(w, b, &j, &s), o = w->part_off[j] + s;
        for (int64_t q = 0; q < count; q++)
            memcpy(out + q * M + o, base + o, (size_t)len * sizeof *out);
        for (int64_t e = 0; e < E; e++) {
            const float *t = W->tv[e * 4 + j] + s;
            for (int64_t q = 0; q < count; q++) {
                const float ce = r[q * E + e];
                float *d = out + q * M + o;
                for (int64_t i = 0; i < len; i++)
                    d[i] += ce * t[i];
            }
        }
    }
}

/* dr[e] = <dm, tau_e>: each block's E sums in double, then the blocks in order */
static void wemoe_dots(const wemoe *w, const wemoe_layer *W, const float *dm, double *dr)
{
    const int64_t E = w->E, nb = w->part_blocks[4];
    double *part = w->partials;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int j;
        int64_t s;
        const int64_t len = wemoe_block(w, b, &j, &s);
        const float *d = dm + w->part_off[j] + s;
        for (int64_t e = 0; e < E; e++) {
            const float *t = W->tv[e * 4 + j] + s;
            double acc = 0;
            for (int64_t i = 0; i < len; i++)
                acc += (double)d[i] * t[i];
            part[b * E + e] = acc;
        }
    }
    for (int64_t e = 0; e < E; e++) {
        double acc = 0;
        for (int64_t b = 0; b < nb; b++)
            acc += part[b * E + e];
        dr[e] = acc;
    }
}

/* A->out = MLP(A->ln2) with each group's merged weights (the residual is added by the caller) */
static void wemoe_mlp_forward(fb_clip *n, int64_t l, const layer_params *p, layer_acts *A,
                              int64_t B)
{
    wemoe *w = n->wm;
    wemoe_layer *W = &w->L[l];
    const int64_t D = n->c.hidden, I = n->c.intermediate, BT = B * n->T;
    wemoe_route(n, l, A->ln2, B);
    const int64_t R = BT / W->groups;
    for (int64_t q0 = 0; q0 < W->groups; q0 += w->chunk) { /* w->chunk merges at a time */
        const int64_t cnt = W->groups - q0 < w->chunk ? W->groups - q0 : w->chunk;
        wemoe_merge(n, p, W, W->r + q0 * w->E, cnt, w->merged);
        if (W->groups == 1) { /* one routing: the engine's row-blocked GEMMs */
            const float *mw = w->merged;
            fb_linear_forward(A->h, A->ln2, mw, mw + I * D, R, D, I);
            if (n->c.quick_gelu)
                fb_quick_gelu_forward(A->g, A->h, R * I);
            else
                fb_gelu_forward(A->g, A->h, R * I);
            fb_linear_forward(A->out, A->g, mw + I * D + I, mw + 2 * I * D + I, R, I, D);
            continue;
        }
        /* an image's tokens are few: one image per thread, each product one sgemm call */
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t q = q0; q < q0 + cnt; q++) {
            const float *mw = w->merged + (q - q0) * w->M;
            float *h = A->h + q * R * I, *g = A->g + q * R * I;
            fb_linear_forward_serial(h, A->ln2 + q * R * D, mw, mw + I * D, R, D, I);
            if (n->c.quick_gelu)
                fb_quick_gelu_forward(g, h, R * I);
            else
                fb_gelu_forward(g, h, R * I);
            fb_linear_forward_serial(A->out + q * R * D, g, mw + I * D + I, mw + 2 * I * D + I, R,
                                     I, D);
        }
    }
}

/* n->dln = d ln2 from n->dx = d MLP output: through each group's merged MLP, and through the
 * router, whose gradients accumulate: dr_i = <d theta, tau_i> (blocks of WM_BLOCK summed in
 * double, then the blocks in order), d logits = dr / rows of the group. */
static void wemoe_mlp_backward(fb_clip *n, int64_t l, const layer_params *p, const layer_acts *A)
{
    wemoe *w = n->wm;
    wemoe_layer *W = &w->L[l];
    const int64_t D = n->c.hidden, I = n->c.intermediate, E = w->E, M = w->M;
    const int64_t BT = n->batch * n->T, R = BT / W->groups;
    const float *mw = w->merged;
    float *dm = w->dmerged;
    double dr[256];
    memset(n->dg, 0, (size_t)(BT * I) * sizeof(float));
    memset(n->dh, 0, (size_t)(BT * I) * sizeof(float));
    memset(n->dln, 0, (size_t)(BT * D) * sizeof(float));
    for (int64_t q = 0; q < W->groups; q++) {
        wemoe_merge(n, p, W, W->r + q * E, 1, w->merged);
        memset(dm, 0, (size_t)M * sizeof(float));
        const int64_t rI = q * R * I, rD = q * R * D;
        fb_linear_backward(n->dg + rI, dm + I * D + I, dm + 2 * I * D + I, n->dx + rD, A->g + rI,
                           mw + I * D + I, R, I, D);
        if (n->c.quick_gelu)
            fb_quick_gelu_backward(n->dh + rI, A->h + rI, n->dg + rI, R * I);
        else
            fb_gelu_backward(n->dh + rI, A->h + rI, n->dg + rI, R * I);
        fb_linear_backward(n->dln + rD, dm, dm + I * D, n->dh + rI, A->ln2 + rD, mw, R, D, I);
        wemoe_dots(w, W, dm, dr);
        if (w->depth == 0) {
            for (int64_t e = 0; e < E; e++)
                W->dgate[e] += (float)dr[e];
        } else {
            for (int64_t i = q * R; i < (q + 1) * R; i++)
                for (int64_t e = 0; e < E; e++)
                    w->dz[i * E + e] = (float)(dr[e] / (double)R);
        }
    }
    if (w->depth == 0) return;
    const int64_t P = w->P, Din = w->Din;
    const float *g = W->gate, *x = P ? W->gin : A->ln2;
    float *dg = W->dgate, *dx = P ? w->dgin : n->dln;
    if (P) memset(w->dgin, 0, (size_t)(BT * Din) * sizeof(float));
    if (w->depth == 1) {
        fb_linear_backward(dx, dg, dg + E * Din, w->dz, x, g, BT, Din, E);
    } else {
        memset(w->dh1, 0, (size_t)(BT * Din) * sizeof(float));
        fb_linear_backward(w->dh1, dg + Din * Din + Din, dg + Din * Din + Din + E * Din, w->dz,
                           W->h1, g + Din * Din + Din, BT, Din, E);
        for (int64_t i = 0; i < BT * Din; i++) /* relu */
            w->dh1[i] = W->u[i] > 0.0f ? w->dh1[i] : 0.0f;
        fb_linear_backward(dx, dg, dg + Din * Din, w->dh1, x, g, BT, Din, Din);
    }
    if (P) /* the position encoding has no gradient to take; x's part goes to d ln2 */
        for (int64_t i = 0; i < BT; i++)
            for (int64_t j = 0; j < D; j++)
                n->dln[i * D + j] += w->dgin[i * Din + P + j];
}

/* ------------------------------------------------------------------- forward -- */

/* out = fc2(act(fc1(A->ln2))) over N rows (SMILE's experts added), through A->h and A->g;
 * returns SMILE's status as smile_apply does */
static int mlp_forward(fb_clip *n, int64_t l, const layer_params *p, layer_acts *A, float *out,
                       int64_t N)
{
    const int64_t E = n->c.hidden, I = n->c.intermediate;
    int smile_status = 0;
    fb_linear_forward(A->h, A->ln2, p->fc1_w, p->fc1_b, N, E, I);
    smile_status |= smile_apply(n, l, SL_FC1, A->ln2, A->h, N, E, I);
    if (n->c.quick_gelu)
        fb_quick_gelu_forward(A->g, A->h, N * I);
    else
        fb_gelu_forward(A->g, A->h, N * I);
    fb_linear_forward(out, A->g, p->fc2_w, p->fc2_b, N, I, E);
    smile_status |= smile_apply(n, l, SL_FC2, A->g, out, N, I, E);
    return smile_status;
}

/* The last layer of an inference pass: only each image's class token reaches the features,
 * so the keys and values are made for every token and the rest for the class tokens alone
 * (a quarter of the layer's work at 17 tokens), packed B rows deep, straight into pooled_in.
 * Every product and norm is per row, the full layer's computations; OpenBLAS may round a row
 * differently where it sits in a block, so the features agree to float rounding (tested).
 * Buffers: ln2 holds the class tokens' ln1 until their queries are made; the smaller ones
 * use the front of the layer's own. Returns SMILE's status as smile_apply does. */
static int last_layer_class_tokens(fb_clip *n, const layer_params *p, layer_acts *A, int64_t B)
{
    const fb_clip_config *c = &n->c;
    const int64_t E = c->hidden, H = c->heads, T = n->T, BT = B * T;
    const int64_t L = c->layers - 1;
    int smile_status = 0;
    fb_layernorm_forward(A->ln1, A->mean1, A->rstd1, A->in, p->ln1_w, p->ln1_b, BT, E, c->eps);
    fb_linear_forward(A->k, A->ln1, p->k_w, p->k_b, BT, E, E);
    fb_linear_forward(A->v, A->ln1, p->v_w, p->v_b, BT, E, E);
    smile_status |= smile_apply(n, L, SL_K, A->ln1, A->k, BT, E, E);
    smile_status |= smile_apply(n, L, SL_V, A->ln1, A->v, BT, E, E);
    for (int64_t b = 0; b < B; b++)
        memcpy(A->ln2 + b * E, A->ln1 + b * T * E, (size_t)E * sizeof(float));
    fb_linear_forward(A->q, A->ln2, p->q_w, p->q_b, B, E, E);
    smile_status |= smile_apply(n, L, SL_Q, A->ln2, A->q, B, E, E);
    fb_attention_forward_first(A->a, A->att, A->q, A->k, A->v, B, T, 1, H, E / H);
    fb_linear_forward(A->x1, A->a, p->o_w, p->o_b, B, E, E);
    smile_status |= smile_apply(n, L, SL_O, A->a, A->x1, B, E, E);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < E; j++)
            A->x1[b * E + j] += A->in[b * T * E + j];
    fb_layernorm_forward(A->ln2, A->mean2, A->rstd2, A->x1, p->ln2_w, p->ln2_b, B, E, c->eps);
    smile_status |= mlp_forward(n, L, p, A, n->pooled_in, B);
    for (int64_t j = 0; j < B * E; j++)
        n->pooled_in[j] += A->x1[j];
    return smile_status;
}

fb_status fb_clip_forward(fb_clip *n, const float *images, int64_t B, const float **features)
{
    if (B <= 0 || B > n->max_batch)
        return fb_set_error(FB_ERR_ARG, "batch of %lld images; this network takes 1 to %lld",
                            (long long)B, (long long)n->max_batch);
    const fb_clip_config *c = &n->c;
    const int64_t E = c->hidden, H = c->heads, T = n->T, NP = n->NP;
    n->batch = B;
    int smile_status = 0; /* a SMILE layer's scratch could not be allocated */
    fb_nn_blas_single(1);
    fb_patch_embed_forward(n->pe, n->cols, images, n->pe_w, B, c->channels, c->image_size,
                           c->patch_size, E);
    for (int64_t b = 0; b < B; b++) {
        float *e = n->emb + b * T * E;
        for (int64_t j = 0; j < E; j++)
            e[j] = n->cls[j] + n->pos[j];
        for (int64_t p = 0; p < NP; p++)
            for (int64_t j = 0; j < E; j++)
                e[(1 + p) * E + j] = n->pe[(b * NP + p) * E + j] + n->pos[(1 + p) * E + j];
    }
    fb_layernorm_forward(n->x0, n->mean0, n->rstd0, n->emb, n->pre_w, n->pre_b, B * T, E, c->eps);
    /* an inference pass of plain or SMILE MLPs needs only the class tokens of the last layer
     * (the Weight-Ensembling MoE routes each image by all of its tokens) */
    const int class_only = n->inference && !n->wm;
    for (int64_t l = 0; l < c->layers; l++) {
        const layer_params *p = &n->L[l];
        layer_acts *A = &n->A[l];
        const int64_t BT = B * T;
        if (class_only && l == c->layers - 1) {
            smile_status |= last_layer_class_tokens(n, p, A, B);
            break;
        }
        fb_layernorm_forward(A->ln1, A->mean1, A->rstd1, A->in, p->ln1_w, p->ln1_b, BT, E, c->eps);
        fb_linear_forward(A->q, A->ln1, p->q_w, p->q_b, BT, E, E);
        fb_linear_forward(A->k, A->ln1, p->k_w, p->k_b, BT, E, E);
        fb_linear_forward(A->v, A->ln1, p->v_w, p->v_b, BT, E, E);
        smile_status |= smile_apply(n, l, SL_Q, A->ln1, A->q, BT, E, E);
        smile_status |= smile_apply(n, l, SL_K, A->ln1, A->k, BT, E, E);
        smile_status |= smile_apply(n, l, SL_V, A->ln1, A->v, BT, E, E);
        fb_attention_forward(A->a, A->att, A->q, A->k, A->v, B, T, H, E / H, 0);
        fb_linear_forward(A->x1, A->a, p->o_w, p->o_b, BT, E, E);
        smile_status |= smile_apply(n, l, SL_O, A->a, A->x1, BT, E, E);
        for (int64_t j = 0; j < BT * E; j++)
            A->x1[j] += A->in[j];
        fb_layernorm_forward(A->ln2, A->mean2, A->rstd2, A->x1, p->ln2_w, p->ln2_b, BT, E, c->eps);
        if (n->wm) {
            wemoe_mlp_forward(n, l, p, A, B);
        } else {
            smile_status |= mlp_forward(n, l, p, A, A->out, BT);
        }
        for (int64_t j = 0; j < BT * E; j++)
            A->out[j] += A->x1[j];
    }
    const float *last = n->A[c->layers - 1].out;
    for (int64_t b = 0; b < B && !class_only; b++)
        memcpy(n->pooled_in + b * E, last + b * T * E, (size_t)E * sizeof(float));
    fb_layernorm_forward(n->pooled, n->meanp, n->rstdp, n->pooled_in, n->post_w, n->post_b, B, E,
                         c->eps);
    if (n->proj_w) {
        fb_linear_forward(n->features, n->pooled, n->proj_w, NULL, B, E, c->projection);
        smile_status |= smile_apply(n, c->layers, 0, n->pooled, n->features, B, E, c->projection);
    } else {
        memcpy(n->features, n->pooled, (size_t)(B * E) * sizeof(float));
    }
    *features = n->features;
    fb_nn_blas_single(0);
    return smile_status ? FB_ERR_NOMEM : FB_OK;
}

/* ------------------------------------------------------------------ backward -- */

fb_status fb_clip_backward(fb_clip *n, const float *dfeatures)
{
    const fb_clip_config *c = &n->c;
    const int64_t B = n->batch, E = c->hidden, I = c->intermediate, H = c->heads, T = n->T;
    const int64_t BT = B * T, NP = n->NP;
    if (B <= 0) return fb_set_error(FB_ERR_ARG, "backward before a forward pass");
    if (n->inference) return fb_set_error(FB_ERR_ARG, "backward through an inference network");
    if (n->smile) return fb_set_error(FB_ERR_ARG, "backward through SMILE experts");
    fb_nn_blas_single(1);
    memset(n->dpooled, 0, (size_t)(B * E) * sizeof(float));
    if (n->proj_w)
        fb_linear_backward(n->dpooled, G(n, n->proj_w), NULL, dfeatures, n->pooled, n->proj_w, B, E,
                           c->projection);
    else
        memcpy(n->dpooled, dfeatures, (size_t)(B * E) * sizeof(float));
    memset(n->dpooled_in, 0, (size_t)(B * E) * sizeof(float));
    fb_layernorm_backward(n->dpooled_in, G(n, n->post_w), G(n, n->post_b), n->dpooled, n->pooled_in,
                          n->post_w, n->meanp, n->rstdp, B, E);
    memset(n->dx, 0, (size_t)(BT * E) * sizeof(float));
    for (int64_t b = 0; b < B; b++)
        memcpy(n->dx + b * T * E, n->dpooled_in + b * E, (size_t)E * sizeof(float));
    for (int64_t l = c->layers - 1; l >= 0; l--) {
        const layer_params *p = &n->L[l];
        const layer_acts *A = &n->A[l];
        /* out = x1 + fc2(act(fc1(ln2(x1)))): dx is d out */
        memcpy(n->dx1, n->dx, (size_t)(BT * E) * sizeof(float));
        if (n->wm) {
            wemoe_mlp_backward(n, l, p, A);
        } else {
            memset(n->dg, 0, (size_t)(BT * I) * sizeof(float));
            fb_linear_backward(n->dg, G(n, p->fc2_w), G(n, p->fc2_b), n->dx, A->g, p->fc2_w, BT,
                               I, E);
            memset(n->dh, 0, (size_t)(BT * I) * sizeof(float));
            if (c->quick_gelu)
                fb_quick_gelu_backward(n->dh, A->h, n->dg, BT * I);
            else
                fb_gelu_backward(n->dh, A->h, n->dg, BT * I);
            memset(n->dln, 0, (size_t)(BT * E) * sizeof(float));
            fb_linear_backward(n->dln, G(n, p->fc1_w), G(n, p->fc1_b), n->dh, A->ln2, p->fc1_w,
                               BT, E, I);
        }
        fb_layernorm_backward(n->dx1, G(n, p->ln2_w), G(n, p->ln2_b), n->dln, A->x1, p->ln2_w,
                              A->mean2, A->rstd2, BT, E);
        /* x1 = in + out_proj(attn(ln1(in))): dx1 is d x1; dx becomes d in */
        memcpy(n->dx, n->dx1, (size_t)(BT * E) * sizeof(float));
        memset(n->da, 0, (size_t)(BT * E) * sizeof(float));
        fb_linear_backward(n->da, G(n, p->o_w), G(n, p->o_b), n->dx1, A->a, p->o_w, BT, E, E);
        memset(n->dq, 0, (size_t)(BT * E) * sizeof(float));
        memset(n->dk, 0, (size_t)(BT * E) * sizeof(float));
        memset(n->dv, 0, (size_t)(BT * E) * sizeof(float));
        fb_attention_backward(n->dq, n->dk, n->dv, n->datt, n->da, A->att, A->q, A->k, A->v, B, T,
                              H, E / H);
        memset(n->dln, 0, (size_t)(BT * E) * sizeof(float));
        fb_linear_backward(n->dln, G(n, p->q_w), G(n, p->q_b), n->dq, A->ln1, p->q_w, BT, E, E);
        fb_linear_backward(n->dln, G(n, p->k_w), G(n, p->k_b), n->dk, A->ln1, p->k_w, BT, E, E);
        fb_linear_backward(n->dln, G(n, p->v_w), G(n, p->v_b), n->dv, A->ln1, p->v_w, BT, E, E);
        fb_layernorm_backward(n->dx, G(n, p->ln1_w), G(n, p->ln1_b), n->dln, A->in, p->ln1_w,
                              A->mean1, A->rstd1, BT, E);
    }
    if (n->wm) { /* a frozen tower: nothing below the first layer has a gradient to take */
        fb_nn_blas_single(0);
        return FB_OK;
    }
    memset(n->demb, 0, (size_t)(BT * E) * sizeof(float));
    fb_layernorm_backward(n->demb, G(n, n->pre_w), G(n, n->pre_b), n->dx, n->emb, n->pre_w,
                          n->mean0, n->rstd0, BT, E);
    float *dcls = G(n, n->cls), *dpos = G(n, n->pos);
    for (int64_t b = 0; b < B; b++) { /* batch sums in order */
        const float *de = n->demb + b * T * E;
        for (int64_t j = 0; j < E; j++)
            dcls[j] += de[j];
        for (int64_t j = 0; j < T * E; j++)
            dpos[j] += de[j];
        for (int64_t q = 0; q < NP; q++)
            memcpy(n->dpe + (b * NP + q) * E, de + (1 + q) * E, (size_t)E * sizeof(float));
    }
    fb_patch_embed_backward(G(n, n->pe_w), n->dpe, n->cols, B, c->channels, c->image_size,
                            c->patch_size, E);
    fb_nn_blas_single(0);
    return FB_OK;
}

/* ------------------------------------------------------- entropy (adaptation) -- */

int64_t fb_clip_entropy_scratch(const fb_clip *n, int64_t B, int64_t K)
{
    const int64_t F = n->c.projection ? n->c.projection : n->c.hidden;
    return 3 * B * K + 2 * B * F + B + F;
}

fb_status fb_clip_entropy_backward(fb_clip *n, const float *images, int64_t B, const float *head,
                                   int64_t K, float logit_scale, float *scratch, double *loss)
{
    const int64_t F = n->c.projection ? n->c.projection : n->c.hidden;
    float *logits = scratch, *probs = logits + B * K, *dlogits = probs + B * K;
    float *normed = dlogits + B * K, *dfeat = normed + B * F, *norms = dfeat + B * F;
    float *tmp = norms + B;
    const float *feat;
    fb_status st = fb_clip_forward(n, images, B, &feat);
    if (st) return st;
    fb_head_forward(logits, normed, norms, feat, head, logit_scale, B, F, K);
    *loss = fb_entropy_forward(probs, logits, B, K);
    memset(dlogits, 0, (size_t)(B * K) * sizeof(float));
    memset(dfeat, 0, (size_t)(B * F) * sizeof(float));
    fb_entropy_backward(dlogits, probs, B, K, 1.0f);
    fb_head_backward(dfeat, tmp, dlogits, normed, norms, head, logit_scale, B, F, K);
    return fb_clip_backward(n, dfeat);
}

/* -------------------------------------------------------------- cosine head -- */

void fb_head_forward(float *logits, float *normed, float *norms, const float *features,
                     const float *W, float scale, int64_t B, int64_t F, int64_t K)
{
    for (int64_t b = 0; b < B; b++) {
        double s = 0.0;
        for (int64_t f = 0; f < F; f++)
            s += (double)features[b * F + f] * features[b * F + f];
        float r = (float)sqrt(s);
        norms[b] = r;
        for (int64_t f = 0; f < F; f++)
            normed[b * F + f] = r > 0 ? features[b * F + f] / r : 0.0f;
    }
    fb_linear_forward(logits, normed, W, NULL, B, F, K);
    for (int64_t i = 0; i < B * K; i++)
        logits[i] *= scale;
}

void fb_head_backward(float *dfeatures, float *scratch, const float *dlogits, const float *normed,
                      const float *norms, const float *W, float scale, int64_t B, int64_t F,
                      int64_t K)
{
    for (int64_t b = 0; b < B; b++) {
        /* d normed = scale * dlogits W;  d f = (d normed - normed <normed, d normed>) / |f| */
        float *d = scratch;
        for (int64_t f = 0; f < F; f++)
            d[f] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float g = scale * dlogits[b * K + k];
            for (int64_t f = 0; f < F; f++)
                d[f] += g * W[k * F + f];
        }
        float dot = 0.0f;
        for (int64_t f = 0; f < F; f++)
            dot += normed[b * F + f] * d[f];
        if (norms[b] > 0)
            for (int64_t f = 0; f < F; f++)
                dfeatures[b * F + f] += (d[f] - normed[b * F + f] * dot) / norms[b];
    }
}
