/*
 * fisher_merging.h: the pieces of Fisher merging (see fisher_merging.c) that the reference
 * tests check against PyTorch.
 */
#ifndef FB_METHOD_FISHER_MERGING_H
#define FB_METHOD_FISHER_MERGING_H
#include "nn/clip_vit.h"

/* The diagonal Fisher of net's parameters (out: fb_clip_num_params floats) on n images,
 * as FusionBench estimates it: per batch of `batch` images, the squared gradient of
 * sum_x sum_c sqrt(p_c) log p_c (p = softmax(logit_scale cos(features, head rows)), the sqrt
 * held constant), summed over batches and divided by n. */
fb_status fb_fisher_diagonal(fb_clip *net, const float *head, int64_t K, float logit_scale,
                             const float *images, int64_t n, int64_t batch, float *out);

/* The per-model weights w[K] of the merge: coef[k] (NULL: 1/K), times, when normalize, the
 * model's inverse Fisher norm (over the element ranges [merged[2r], merged[2r+1])) divided
 * by the sum of those inverses. */
void fb_fisher_model_weights(const float *const *fisher, const int64_t *merged, int64_t nranges,
                             int K, int normalize, double eps, const double *coef, double *w);

/* out[j] = sum_k w_k (F_k[j] + eps) models_k[j] / sum_k w_k (F_k[j] + eps), in double;
 * fisher NULL: sum_k w_k models_k[j] / sum_k w_k. */
void fb_fisher_combine(float *out, const float *const *models, const float *const *fisher,
                       const double *w, double eps, int K, int64_t n);

#endif
