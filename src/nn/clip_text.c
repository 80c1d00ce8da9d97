/*
 * clip_text.c: the CLIP text tower's forward pass (see clip_text.h). Activations for one call
 * live in one allocation; layers reuse the same buffers.
 */
#include "clip_text.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "clip_vit.h"
#include "core/alloc.h"
#include "core/status.h"
#include "kernels.h"

enum { MAX_LAYERS = 256 };

typedef struct text_layer {
    float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} text_layer;

struct fb_clip_text {
    fb_clip_text_config c;
    float *params; /* every parameter, f32, in the order below */
    float *tok, *pos, *fin_w, *fin_b, *proj;
    text_layer L[MAX_LAYERS];
};

/* ---------------------------------------------------------------- config.json -- */

fb_status fb_clip_text_config_load(const char *path, fb_clip_text_config *out)
{
    cJSON *root;
    fb_status st = fb_clip_json_load(path, &root);
    if (st) return st;
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(root);
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: no 'text_config' object: not a CLIPModel config "
                            "(a vision-only checkpoint has no text tower)",
                            path);
    }
    /* transformers' CLIPTextConfig defaults for the fields a config.json may leave out */
    fb_clip_text_config c = {0};
    st = fb_clip_json_int(path, o, "vocab_size", 49408, &c.vocab);
    if (!st) st = fb_clip_json_int(path, o, "hidden_size", 512, &c.hidden);
    if (!st) st = fb_clip_json_int(path, o, "intermediate_size", 2048, &c.intermediate);
    if (!st) st = fb_clip_json_int(path, o, "num_attention_heads", 8, &c.heads);
    if (!st) st = fb_clip_json_int(path, o, "num_hidden_layers", 12, &c.layers);
    if (!st) st = fb_clip_json_int(path, o, "max_position_embeddings", 77, &c.max_positions);
    if (!st) st = fb_clip_json_int(path, o, "eos_token_id", 49407, &c.eos_token_id);
    if (!st) st = fb_clip_json_int(path, root, "projection_dim", 512, &c.projection);
    if (!st) st = fb_clip_json_act(path, "text_config ", o, &c.quick_gelu);
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(o, "layer_norm_eps");
    c.eps = cJSON_IsNumber(eps) ? (float)eps->valuedouble : 1e-5f;
    cJSON_Delete(root);
    if (st) return st;
    if (!c.vocab || !c.hidden || !c.intermediate || !c.heads || !c.layers || !c.max_positions ||
        c.hidden % c.heads || c.layers > MAX_LAYERS || c.hidden > (1 << 16) ||
        c.intermediate > (1 << 18) || c.max_positions > 4096 || c.projection > (1 << 16) ||
        c.vocab > (1 << 24) || !(c.eps > 0))
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: text_config sizes are inconsistent (hidden %lld, "
                            "heads %lld, layers %lld, positions %lld)",
                            path, (long long)c.hidden, (long long)c.heads, (long long)c.layers,
                            (long long)c.max_positions);
    *out = c;
    return FB_OK;
}

/* ------------------------------------------------------------------ building -- */

typedef struct slot {
    char name[128];
    float **dst;
    int64_t d0, d1; /* d1 0: a vector */
} slot;

fb_status fb_clip_text_create(const fb_clip_text_config *cfg, const fb_model *w, fb_clip_text **out)
{
    *out = NULL;
    if (cfg->layers <= 0 || cfg->layers > MAX_LAYERS)
        return fb_set_error(FB_ERR_ARG, "text tower: %lld layers", (long long)cfg->layers);
    fb_clip_text *n = fb_calloc(1, sizeof *n);
    const int64_t E = cfg->hidden, I = cfg->intermediate;
    const int64_t ns = 16 * cfg->layers + 6;
    slot *s = fb_calloc((size_t)ns, sizeof *s);
    if (!n || !s) {
        fb_free(n);
        fb_free(s);
        return FB_ERR_NOMEM;
    }
    n->c = *cfg;
    int64_t k = 0;
#define ADD(ptr, d0_, d1_, ...)                                                                    \
    do {                                                                                           \
        snprintf(s[k].name, sizeof s[k].name, __VA_ARGS__);                                        \
        s[k].dst = &(ptr), s[k].d0 = (d0_), s[k].d1 = (d1_), k++;                                  \
    } while (0)
    ADD(n->tok, cfg->vocab, E, "text_model.embeddings.token_embedding.weight");
    ADD(n->pos, cfg->max_positions, E, "text_model.embeddings.position_embedding.weight");
    for (int64_t l = 0; l < cfg->layers; l++) {
        text_layer *p = &n->L[l];
        const char *pre = "text_model.encoder.layers";
        ADD(p->q_w, E, E, "%s.%lld.self_attn.q_proj.weight", pre, (long long)l);
        ADD(p->q_b, E, 0, "%s.%lld.self_attn.q_proj.bias", pre, (long long)l);
        ADD(p->k_w, E, E, "%s.%lld.self_attn.k_proj.weight", pre, (long long)l);
        ADD(p->k_b, E, 0, "%s.%lld.self_attn.k_proj.bias", pre, (long long)l);
        ADD(p->v_w, E, E, "%s.%lld.self_attn.v_proj.weight", pre, (long long)l);
        ADD(p->v_b, E, 0, "%s.%lld.self_attn.v_proj.bias", pre, (long long)l);
        ADD(p->o_w, E, E, "%s.%lld.self_attn.out_proj.weight", pre, (long long)l);
        ADD(p->o_b, E, 0, "%s.%lld.self_attn.out_proj.bias", pre, (long long)l);
        ADD(p->ln1_w, E, 0, "%s.%lld.layer_norm1.weight", pre, (long long)l);
        ADD(p->ln1_b, E, 0, "%s.%lld.layer_norm1.bias", pre, (long long)l);
        ADD(p->fc1_w, I, E, "%s.%lld.mlp.fc1.weight", pre, (long long)l);
        ADD(p->fc1_b, I, 0, "%s.%lld.mlp.fc1.bias", pre, (long long)l);
        ADD(p->fc2_w, E, I, "%s.%lld.mlp.fc2.weight", pre, (long long)l);
        ADD(p->fc2_b, E, 0, "%s.%lld.mlp.fc2.bias", pre, (long long)l);
        ADD(p->ln2_w, E, 0, "%s.%lld.layer_norm2.weight", pre, (long long)l);
        ADD(p->ln2_b, E, 0, "%s.%lld.layer_norm2.bias", pre, (long long)l);
    }
    ADD(n->fin_w, E, 0, "text_model.final_layer_norm.weight");
    ADD(n->fin_b, E, 0, "text_model.final_layer_norm.bias");
    if (cfg->projection) ADD(n->proj, cfg->projection, E, "text_projection.weight");
#undef ADD
    int64_t total = 0;
    for (int64_t i = 0; i < k; i++)
        total += s[i].d0 * (s[i].d1 ? s[i].d1 : 1);
    n->params = fb_malloc((size_t)total * sizeof(float));
    fb_status st = n->params ? FB_OK : FB_ERR_NOMEM;
    int64_t off = 0;
    for (int64_t i = 0; i < k && !st; i++) {
        const fb_tensor *t = fb_model_find(w, s[i].name);
        const int64_t numel = s[i].d0 * (s[i].d1 ? s[i].d1 : 1);
        if (!t) {
            st = fb_set_error(FB_ERR_NOT_FOUND, "%s: checkpoint lacks text tower tensor '%s'",
                              fb_model_label(w), s[i].name);
            break;
        }
        const int nd = fb_tensor_ndim(t);
        const int64_t *sh = fb_tensor_shape(t);
        if (nd != (s[i].d1 ? 2 : 1) || sh[0] != s[i].d0 || (s[i].d1 && sh[1] != s[i].d1) ||
            !fb_dtype_is_float(fb_tensor_dtype(t))) {
            char shape[48];
            if (s[i].d1)
                snprintf(shape, sizeof shape, "%lld, %lld", (long long)s[i].d0, (long long)s[i].d1);
            else
                snprintf(shape, sizeof shape, "%lld", (long long)s[i].d0);
            st = fb_set_error(FB_ERR_MISMATCH,
                              "%s: tensor '%s' is not a float [%s] as the "
                              "config.json's text_config says",
                              fb_model_label(w), s[i].name, shape);
            break;
        }
        *s[i].dst = n->params + off;
        st = fb_tensor_to_f32(t, n->params + off);
        off += numel;
    }
    fb_free(s);
    if (st) {
        fb_clip_text_free(n);
        return st;
    }
    *out = n;
    return FB_OK;
}

void fb_clip_text_free(fb_clip_text *n)
{
    if (!n) return;
    fb_free(n->params);
    fb_free(n);
}

fb_clip_text_config fb_clip_text_get_config(const fb_clip_text *n)
{
    return n->c;
}

/* ------------------------------------------------------------------- forward -- */

fb_status fb_clip_text_forward(fb_clip_text *n, const int32_t *ids, int64_t B, int64_t T,
                               float *features)
{
    const fb_clip_text_config *c = &n->c;
    if (B <= 0 || T <= 0 || T > c->max_positions)
        return fb_set_error(FB_ERR_ARG, "text tower: %lld sequences of %lld tokens (at most %lld)",
                            (long long)B, (long long)T, (long long)c->max_positions);
    for (int64_t i = 0; i < B * T; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return fb_set_error(FB_ERR_ARG, "token id %d is outside the vocabulary of %lld",
                                (int)ids[i], (long long)c->vocab);
    const int64_t E = c->hidden, I = c->intermediate, H = c->heads, BT = B * T;
    /* x, ln, q, k, v, a, (h, g: I wide), att, stats, pooled */
    const int64_t total = 6 * BT * E + 2 * BT * I + B * H * T * T + 2 * BT + 2 * B * E + 2 * B;
    float *arena = fb_malloc((size_t)total * sizeof(float));
    if (!arena) return FB_ERR_NOMEM;
    float *a = arena;
#define TAKE(count) (a += (count), a - (count))
    float *x = TAKE(BT * E), *ln = TAKE(BT * E), *q = TAKE(BT * E), *k = TAKE(BT * E);
    float *v = TAKE(BT * E), *att_out = TAKE(BT * E), *h = TAKE(BT * I), *g = TAKE(BT * I);
    float *att = TAKE(B * H * T * T), *mean = TAKE(BT), *rstd = TAKE(BT);
    float *pin = TAKE(B * E), *pooled = TAKE(B * E), *pmean = TAKE(B), *prstd = TAKE(B);
#undef TAKE
    fb_nn_blas_single(1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            const float *te = n->tok + (int64_t)ids[b * T + t] * E, *pe = n->pos + t * E;
            float *o = x + (b * T + t) * E;
            for (int64_t j = 0; j < E; j++)
                o[j] = te[j] + pe[j];
        }
    for (int64_t l = 0; l < c->layers; l++) {
        const text_layer *p = &n->L[l];
        fb_layernorm_forward(ln, mean, rstd, x, p->ln1_w, p->ln1_b, BT, E, c->eps);
        fb_linear_forward(q, ln, p->q_w, p->q_b, BT, E, E);
        fb_linear_forward(k, ln, p->k_w, p->k_b, BT, E, E);
        fb_linear_forward(v, ln, p->v_w, p->v_b, BT, E, E);
        fb_attention_forward(att_out, att, q, k, v, B, T, H, E / H, 1);
        fb_linear_forward(ln, att_out, p->o_w, p->o_b, BT, E, E);
        for (int64_t j = 0; j < BT * E; j++)
            x[j] += ln[j];
        fb_layernorm_forward(ln, mean, rstd, x, p->ln2_w, p->ln2_b, BT, E, c->eps);
        fb_linear_forward(h, ln, p->fc1_w, p->fc1_b, BT, E, I);
        if (c->quick_gelu)
            fb_quick_gelu_forward(g, h, BT * I);
        else
            fb_gelu_forward(g, h, BT * I);
        fb_linear_forward(ln, g, p->fc2_w, p->fc2_b, BT, I, E);
        for (int64_t j = 0; j < BT * E; j++)
            x[j] += ln[j];
    }
    /* the eos position of each sequence; only its row goes through the final layer norm (a
     * row-wise operation, so the same as normalising every row and picking one) */
    for (int64_t b = 0; b < B; b++) {
        const int32_t *row = ids + b * T;
        int64_t at = 0;
        if (c->eos_token_id == 2) {
            for (int64_t t = 1; t < T; t++)
                if (row[t] > row[at]) at = t;
        } else {
            for (int64_t t = 0; t < T; t++)
                if (row[t] == c->eos_token_id) {
                    at = t;
                    break;
                }
        }
        memcpy(pin + b * E, x + (b * T + at) * E, (size_t)E * sizeof(float));
    }
    fb_layernorm_forward(pooled, pmean, prstd, pin, n->fin_w, n->fin_b, B, E, c->eps);
    if (n->proj)
        fb_linear_forward(features, pooled, n->proj, NULL, B, E, c->projection);
    else
        memcpy(features, pooled, (size_t)(B * E) * sizeof(float));
    fb_nn_blas_single(0);
    fb_free(arena);
    return FB_OK;
}
