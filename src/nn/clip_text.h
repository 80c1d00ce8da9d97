/*
 * clip_text.h: the CLIP text tower (Radford et al. 2021) as transformers' CLIPTextModel
 * computes it, forward only, with the text projection: what zero-shot classification heads are
 * made from (FusionBench's HFCLIPClassifier.set_classification_task).
 *
 *   x = token_embedding[ids] + position_embedding[0..T)
 *   per layer:  x = x + out_proj(causal attn(layer_norm1(x)));  x = x +
 * fc2(act(fc1(layer_norm2(x)))) f = text_projection(final_layer_norm(x)[eos position])
 *
 * The eos position is transformers' rule: with the legacy eos_token_id 2 the position of the
 * largest id (the first when several), otherwise the first position holding eos_token_id
 * (position 0 when none does). Parameters are transformers' names (text_model.*,
 * text_projection.weight) in a CLIPModel checkpoint.
 */
#ifndef FB_NN_CLIP_TEXT_H
#define FB_NN_CLIP_TEXT_H

#include "core/model.h"

typedef struct fb_clip_text_config {
    int64_t vocab, hidden, intermediate, heads, layers, max_positions;
    int64_t projection;   /* projection_dim: text_projection's output; 0: no projection */
    int64_t eos_token_id; /* text_config.eos_token_id (2 in older configs) */
    int quick_gelu;
    float eps;
} fb_clip_text_config;

/* A CLIPConfig's text_config (and its projection_dim) from config.json; missing or
 * inconsistent fields are errors naming the file and field. */
fb_status fb_clip_text_config_load(const char *path, fb_clip_text_config *out);

typedef struct fb_clip_text fb_clip_text;

/* The tower with its parameters converted to f32 from weights (names and shapes checked;
 * tensors beyond the text tower's are ignored). */
fb_status fb_clip_text_create(const fb_clip_text_config *cfg, const fb_model *weights,
                              fb_clip_text **out);
void fb_clip_text_free(fb_clip_text *net);
fb_clip_text_config fb_clip_text_get_config(const fb_clip_text *net);

/* ids [B, T] (0 <= id < vocab, T <= max_positions) -> features [B, projection or hidden]. */
fb_status fb_clip_text_forward(fb_clip_text *net, const int32_t *ids, int64_t B, int64_t T,
                               float *features);

#endif
