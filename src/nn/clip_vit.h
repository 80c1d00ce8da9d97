/*
 * clip_vit.h: the CLIP vision tower (Radford et al. 2021) exactly as Hugging Face's
 * CLIPVisionModelWithProjection names and computes it, with forward and backward passes, and
 * a cosine-similarity classification head (FusionBench's zero-shot heads).
 *
 * A network is a state dict: every parameter is a view into one f32 buffer under its Hugging
 * Face name (vision_model.embeddings.patch_embedding.weight, ...), gradients share the layout,
 * and activations live in one arena sized for a batch. Merged weights can be swapped in with
 * fb_clip_set_params without rebuilding anything.
 */
#ifndef FB_NN_CLIP_VIT_H
#define FB_NN_CLIP_VIT_H

#include "core/model.h"

typedef struct fb_clip_config {
    int64_t hidden;       /* hidden_size */
    int64_t intermediate; /* intermediate_size */
    int64_t heads;        /* num_attention_heads */
    int64_t layers;       /* num_hidden_layers */
    int64_t image_size, patch_size, channels;
    int64_t projection; /* projection_dim; 0: no visual_projection */
    int quick_gelu;     /* hidden_act: quick_gelu (1) or gelu (0) */
    float eps;          /* layer_norm_eps */
} fb_clip_config;

/* Reads a Hugging Face config.json (a CLIPVisionConfig, or a CLIPConfig's vision_config with
 * its projection_dim). Missing or inconsistent fields are errors naming the field. */
fb_status fb_clip_config_load(const char *path, fb_clip_config *out);
fb_status fb_clip_config_check(const fb_clip_config *c, const char *where);

/* A config.json read and parsed (at most 16 MB, a JSON object; errors name the file): free
 * with cJSON_Delete. An integer field of o: absent -> def (def < 0: an error naming `where`
 * and the key); a value that is not a non-negative integer is an error. */
struct cJSON;
fb_status fb_clip_json_load(const char *path, struct cJSON **out);
fb_status fb_clip_json_int(const char *where, const struct cJSON *o, const char *key, int64_t def,
                           int64_t *out);
/* o's hidden_act: quick_gelu (the default) or gelu; another is an error naming `where`,
 * prefix and the value. */
fb_status fb_clip_json_act(const char *where, const char *prefix, const struct cJSON *o,
                           int *quick_gelu);

typedef struct fb_clip fb_clip;

/* A network for batches of up to max_batch images; parameters zeroed. */
fb_status fb_clip_create(const fb_clip_config *cfg, int64_t max_batch, fb_clip **out);
/* A network for forward passes only (evaluation): one layer's activations, reused by every
 * layer (about 1/layers of the memory); backward is refused and fb_clip_linear_input gives
 * only visual_projection's input. The same bytes out as fb_clip_create's. */
fb_status fb_clip_create_inference(const fb_clip_config *cfg, int64_t max_batch, fb_clip **out);
void fb_clip_free(fb_clip *net);

/* Parameters from a state dict (any float dtype; names and shapes checked), with the prefix
 * a checkpoint uses ("" when its names start at vision_model.). */
fb_status fb_clip_set_params(fb_clip *net, const fb_model *weights);
/* The same, with the parameters weights lacks taken from fallback (NULL: none): a vision-only
 * fine-tune (CLIPVisionModel) completed by the pretrained CLIPModel's visual_projection, as
 * FusionBench's classifier holds it. */
fb_status fb_clip_set_params_from(fb_clip *net, const fb_model *weights, const fb_model *fallback);

/* The SMILE experts of an upscaled model (src/method/smile_upscaling.c; its metadata
 * fusionbench_c.structure = smile_upscaling), added to the linear layers they upscale in every
 * later forward pass; a model without that metadata clears them. The layers' own weights come
 * from fb_clip_set_params (which reads <layer>.pretrained_model.weight). A missing or
 * misshapen router or expert tensor is an error naming it. Forward only (backward refuses). */
fb_status fb_clip_set_smile(fb_clip *net, const fb_model *weights);

/* The Weight-Ensembling MoE layers of an upscaled model (src/method/we_moe.c; metadata
 * fusionbench_c.structure = weight_ensembling_moe, FusionBench's WeightEnsemblingMoE names):
 * every encoder layer's MLP becomes  MLP(x; theta_0 + sum_i r_i tau_i)  with theta_0 the
 * layer's <mlp>.base_model.* (read by fb_clip_set_params), tau_i <mlp>.task_vectors.<i>.*, and
 * r the mean over tokens of the router <mlp>.gate.* applied to the MLP's input (Depth_0: r is
 * the gate's weight). Routing is per image unless batch_reduce averages r over the batch
 * (metadata wemoe.batch_reduce). A model without that metadata clears them. With these layers
 * backward computes the routers' gradients only: the rest of the tower is frozen, as in
 * FusionBench's test-time adaptation. The task vectors stored as f32 are borrowed, not
 * copied: keep `weights` alive and unchanged while the network uses them (other dtypes are
 * converted). Errors name a missing or misshapen tensor. */
fb_status fb_clip_set_wemoe(fb_clip *net, const fb_model *weights);
/* Routing over the whole batch (1) or per image (0) in later passes. */
void fb_clip_wemoe_batch_reduce(fb_clip *net, int on);
/* The routers' parameters and gradients (one buffer each, *n floats; NULL without WE-MoE
 * layers), in the order of fb_clip_wemoe_tensor_name's tensors (FusionBench's names). */
float *fb_clip_wemoe_router(fb_clip *net, int64_t *n);
float *fb_clip_wemoe_router_grad(fb_clip *net, int64_t *n);
int64_t fb_clip_wemoe_num_tensors(const fb_clip *net);
const char *fb_clip_wemoe_tensor_name(const fb_clip *net, int64_t i, int64_t *offset,
                                      int64_t *numel);
/* Layer l's routing weights in the last forward pass: *groups rows (1, or one per image) of
 * the experts' r_i. */
const float *fb_clip_wemoe_routing(const fb_clip *net, int64_t l, int64_t *groups);

fb_clip_config fb_clip_get_config(const fb_clip *net);
int64_t fb_clip_max_batch(const fb_clip *net);

/* Number and names of the parameters, in buffer order; the views. */
int64_t fb_clip_num_params(const fb_clip *net);
float *fb_clip_params(fb_clip *net);
float *fb_clip_grads(fb_clip *net);
/* The view of the named parameter and its element count; NULL if no such parameter. */
float *fb_clip_param(fb_clip *net, const char *name, int64_t *numel);
float *fb_clip_grad(fb_clip *net, const char *name, int64_t *numel);
int64_t fb_clip_num_tensors(const fb_clip *net);
const char *fb_clip_tensor_name(const fb_clip *net, int64_t i, int64_t *numel);

/* The parameters as a state dict under transformers' names and shapes; its tensors borrow the
 * network's buffer (valid while net lives, and showing later updates). Free with fb_model_free. */
fb_status fb_clip_to_model(fb_clip *net, fb_model **out);
/* The input the named linear layer's weight saw in the last forward pass (RegMean's
 * activations): *rows x *cols floats, rows = batch x tokens (batch for visual_projection),
 * cols = the weight's input size. NULL if the name is not a linear weight of the tower. */
const float *fb_clip_linear_input(const fb_clip *net, const char *weight_name, int64_t *rows,
                                  int64_t *cols);
/* images [B, channels, image_size, image_size] -> features [B, projection or hidden]. */
fb_status fb_clip_forward(fb_clip *net, const float *images, int64_t B, const float **features);
/* Accumulates parameter gradients from dfeatures (after fb_clip_zero_grad). */
fb_status fb_clip_backward(fb_clip *net, const float *dfeatures);
void fb_clip_zero_grad(fb_clip *net);

/* FusionBench's test-time adaptation loss for one batch: the images' features, the cosine
 * head's logits (logit_scale), their mean prediction entropy (+1e-8 inside the log), then
 * backward to the parameters (gradients accumulate; zero them first). *loss gets the entropy.
 * scratch holds fb_clip_entropy_scratch(B, K) floats for this network. */
int64_t fb_clip_entropy_scratch(const fb_clip *net, int64_t B, int64_t K);
fb_status fb_clip_entropy_backward(fb_clip *net, const float *images, int64_t B,
                                   const float *head, int64_t K, float logit_scale,
                                   float *scratch, double *loss);

/* Cosine head: logits[B, K] = scale * normalize(f) normalize(W)^T ... W[K, F] is used as is
 * (FusionBench's zero-shot heads are already normalised text embeddings). Saves what backward
 * needs in `normed` [B, F] and `norms` [B]. */
void fb_head_forward(float *logits, float *normed, float *norms, const float *features,
                     const float *W, float scale, int64_t B, int64_t F, int64_t K);
/* scratch: F floats. */
void fb_head_backward(float *dfeatures, float *scratch, const float *dlogits, const float *normed,
                      const float *norms, const float *W, float scale, int64_t B, int64_t F,
                      int64_t K);

#endif
