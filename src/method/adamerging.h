/*
 * adamerging.h: the loss and coefficient gradient of AdaMerging (see adamerging.c), exposed
 * for the reference test against PyTorch autograd.
 */
#ifndef FB_METHOD_ADAMERGING_H
#define FB_METHOD_ADAMERGING_H
#include "nn/clip_vit.h"

/* Sets net's parameters to theta0 + sum_k lambda_k tau_k, with lambda_k = lambda[k * L + l]
 * for parameter tensor l of the net (layer_wise; L = fb_clip_num_tensors) or lambda[k]
 * (task-wise). Then, for each of T batches (images[t]: counts[t] images; heads[t]:
 * [classes[t], features]), the mean Shannon entropy of softmax(logit_scale * cos(features,
 * head rows)); *loss is their sum and grad (K * L or K doubles) its gradient with respect to
 * lambda: dloss/dlambda_kl = <dloss/dtheta_l, tau_k,l>, summed in a fixed order. */
fb_status fb_adamerging_loss_grad(fb_clip *net, const float *theta0, const float *const *tau,
                                  int K, const float *lambda, int layer_wise, int T,
                                  const float *const *images, const int64_t *counts,
                                  const float *const *heads, const int64_t *classes,
                                  float logit_scale, double *loss, double *grad);

#endif
