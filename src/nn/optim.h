/*
 * optim.h: optimisers over a flat parameter buffer and its gradient buffer, with PyTorch's
 * update rules and defaults, so a training run here follows torch.optim step for step.
 */
#ifndef FB_NN_OPTIM_H
#define FB_NN_OPTIM_H

#include <stdint.h>

#include "fusionbench.h"

typedef struct fb_sgd {
    float lr, momentum, weight_decay;
    float *buf; /* momentum buffer; NULL until the first step */
    int64_t n;
} fb_sgd;

typedef struct fb_adamw {
    float lr, beta1, beta2, eps, weight_decay; /* torch: 1e-3, 0.9, 0.999, 1e-8, 1e-2 */
    float *m, *v;
    int64_t n, t;
} fb_adamw;

/* torch.optim.SGD: g += wd p; buf = momentum buf + g (buf = g at the first step); p -= lr buf. */
fb_status fb_sgd_init(fb_sgd *o, int64_t n, float lr, float momentum, float weight_decay);
void fb_sgd_step(fb_sgd *o, float *params, const float *grads);
void fb_sgd_free(fb_sgd *o);

/* torch.optim.AdamW: p -= lr wd p; m, v moments; p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps). */
fb_status fb_adamw_init(fb_adamw *o, int64_t n, float lr, float weight_decay);
void fb_adamw_step(fb_adamw *o, float *params, const float *grads);
void fb_adamw_free(fb_adamw *o);

/* The tutorial's MLP, nn.Sequential(Linear(I, H), ReLU(), Linear(H, O)) with state-dict names
 * 0.weight [H, I], 0.bias, 2.weight [O, H], 2.bias. Activations: h, a [N, H]; out [N, O]. */
void fb_mlp_forward(float *out, float *h, float *a, const float *x, const float *w0,
                    const float *b0, const float *w2, const float *b2, int64_t N, int64_t I,
                    int64_t H, int64_t O);
/* Gradients accumulate; da, dh are scratch [N, H]; dx may be NULL. */
void fb_mlp_backward(float *dx, float *dw0, float *db0, float *dw2, float *db2, float *da,
                     float *dh, const float *dout, const float *x, const float *h,
                     const float *a, const float *w0, const float *w2, int64_t N, int64_t I,
                     int64_t H, int64_t O);

#endif
