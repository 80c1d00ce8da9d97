/*
 * optim.c: SGD with momentum and AdamW as torch.optim defines them, and the tutorial MLP
 * (see optim.h). Updates are element-wise, so they do not depend on the thread count.
 */
#include "optim.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "kernels.h"

fb_status fb_sgd_init(fb_sgd *o, int64_t n, float lr, float momentum, float weight_decay)
{
    memset(o, 0, sizeof *o);
    o->lr = lr;
    o->momentum = momentum;
    o->weight_decay = weight_decay;
    o->n = n;
    return FB_OK;
}

void fb_sgd_step(fb_sgd *o, float *p, const float *g)
{
    int first = 0;
    if (o->momentum != 0.0f && !o->buf) {
        o->buf = fb_malloc((size_t)(o->n ? o->n : 1) * sizeof(float));
        if (!o->buf) o->momentum = 0.0f; /* out of memory: plain SGD rather than a crash */
        first = 1;
    }
#pragma omp parallel for
    for (int64_t i = 0; i < o->n; i++) {
        float d = g[i] + o->weight_decay * p[i];
        if (o->momentum != 0.0f) {
            o->buf[i] = first ? d : o->momentum * o->buf[i] + d;
            d = o->buf[i];
        }
        p[i] -= o->lr * d;
    }
}

void fb_sgd_free(fb_sgd *o)
{
    fb_free(o->buf);
    o->buf = NULL;
}

fb_status fb_adamw_init(fb_adamw *o, int64_t n, float lr, float weight_decay)
{
    memset(o, 0, sizeof *o);
    o->lr = lr;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = 1e-8f;
    o->weight_decay = weight_decay;
    o->n = n;
    o->m = fb_calloc((size_t)(n ? n : 1), sizeof(float));
    o->v = fb_calloc((size_t)(n ? n : 1), sizeof(float));
    if (!o->m || !o->v) {
        fb_adamw_free(o);
        return FB_ERR_NOMEM;
    }
    return FB_OK;
}

void fb_adamw_step(fb_adamw *o, float *p, const float *g)
{
    o->t++;
    const float bc1 = 1.0f - powf(o->beta1, (float)o->t);
    const float bc2 = 1.0f - powf(o->beta2, (float)o->t);
    const float step = o->lr / bc1, bc2_sqrt = sqrtf(bc2);
#pragma omp parallel for
    for (int64_t i = 0; i < o->n; i++) {
        p[i] *= 1.0f - o->lr * o->weight_decay;
        o->m[i] = o->beta1 * o->m[i] + (1.0f - o->beta1) * g[i];
        o->v[i] = o->beta2 * o->v[i] + (1.0f - o->beta2) * g[i] * g[i];
        p[i] -= step * o->m[i] / (sqrtf(o->v[i]) / bc2_sqrt + o->eps);
    }
}

void fb_adamw_free(fb_adamw *o)
{
    fb_free(o->m);
    fb_free(o->v);
    o->m = o->v = NULL;
}

void fb_mlp_forward(float *out, float *h, float *a, const float *x, const float *w0,
                    const float *b0, const float *w2, const float *b2, int64_t N, int64_t I,
                    int64_t H, int64_t O)
{
    fb_linear_forward(h, x, w0, b0, N, I, H);
    fb_relu_forward(a, h, N * H);
    fb_linear_forward(out, a, w2, b2, N, H, O);
}

void fb_mlp_backward(float *dx, float *dw0, float *db0, float *dw2, float *db2, float *da,
                     float *dh, const float *dout, const float *x, const float *h,
                     const float *a, const float *w0, const float *w2, int64_t N, int64_t I,
                     int64_t H, int64_t O)
{
    memset(da, 0, (size_t)(N * H) * sizeof(float));
    memset(dh, 0, (size_t)(N * H) * sizeof(float));
    fb_linear_backward(da, dw2, db2, dout, a, w2, N, H, O);
    fb_relu_backward(dh, h, da, N * H);
    fb_linear_backward(dx, dw0, db0, dh, x, w0, N, I, H);
}
