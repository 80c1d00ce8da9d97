/*
 * regmean.h: the pieces of RegMean (see regmean.c) that the reference tests check against
 * PyTorch.
 */
#ifndef FB_METHOD_REGMEAN_H
#define FB_METHOD_REGMEAN_H
#include "nn/clip_vit.h"

/* The Gram matrices of the inputs of the named linear layers over n images, in forward
 * passes of `batch`: grams[l] (in_l x in_l) = (1/n) sum over images and tokens of x x^T. */
fb_status fb_regmean_grams(fb_clip *net, const float *images, int64_t n, int64_t batch,
                           int64_t nlin, const char *const *names, float *const *grams);

/* merged (out_dim x in_dim) = ((sum_k G~_k)^-1 sum_k G~_k W_k^T)^T, G~_k: G[k] with
 * off-diagonal entries times alpha; in double, solved with LAPACK. */
fb_status fb_regmean_solve(int K, const float *const *W, const float *const *G, int64_t out_dim,
                           int64_t in_dim, double alpha, float *merged, const char *what);

/* The merged linear weights of K models (parameters under the tower's names) from each
 * model's images (xs[k]: ns[k] of them, forward passes of `batch`): merged[l] for the nlin
 * linear weights names[l]. plusplus: RegMean++, layer by layer, each model's layer fed by the
 * merged layers before it (the models' mean where nothing is solved yet), then the final layer
 * norm and projection; else every layer from the model's own forward pass. Parameters a model
 * lacks come from fallback (NULL: none; the base of a pool that merges a selection). */
fb_status fb_regmean_fit(fb_clip *net, int K, const fb_model *const *models,
                         const fb_model *fallback, const float *const *xs, const int64_t *ns,
                         int64_t batch, double alpha, int plusplus, int64_t nlin,
                         const char *const *names, float *const *merged);

#endif
