/*
 * train.c: the training loop and accuracy over in-memory images (see train.h).
 */
#include "train.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/status.h"
#include "kernels.h"

fb_status fb_clip_train(fb_clip *net, float *head, int64_t K, const float *images,
                        const int32_t *labels, int64_t n, const fb_train_options *o,
                        float *last_loss)
{
    if (n <= 0 || o->batch <= 0 || K <= 0)
        return fb_set_error(FB_ERR_ARG, "training needs examples, a positive batch size and classes");
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= K)
            return fb_set_error(FB_ERR_ARG, "label %d of example %lld is outside [0, %lld)",
                                labels[i], (long long)i, (long long)K);
    fb_clip_config cfg = fb_clip_get_config(net);
    const int64_t F = cfg.projection ? cfg.projection : cfg.hidden;
    const int64_t img = cfg.channels * cfg.image_size * cfg.image_size;
    if (o->batch > fb_clip_max_batch(net))
        return fb_set_error(FB_ERR_ARG, "batch %lld is larger than the network's %lld",
                            (long long)o->batch, (long long)fb_clip_max_batch(net));
    const float *feat;
    fb_status st = FB_OK;
    const int64_t B = o->batch, np = fb_clip_num_params(net), nh = K * F;
    float *x = fb_malloc((size_t)(B * img) * sizeof(float));
    float *logits = fb_malloc((size_t)(B * K) * 4), *normed = fb_malloc((size_t)(B * F) * 4);
    float *norms = fb_malloc((size_t)B * 4), *probs = fb_malloc((size_t)(B * K) * 4);
    float *dlogits = fb_malloc((size_t)(B * K) * 4), *dfeat = fb_malloc((size_t)(B * F) * 4);
    float *scratch = fb_malloc((size_t)F * 4), *dhead = fb_malloc((size_t)(nh ? nh : 1) * 4);
    int32_t *y = fb_malloc((size_t)B * sizeof *y);
    fb_sgd sgd[2];
    fb_adamw adam[2];
    memset(sgd, 0, sizeof sgd);
    memset(adam, 0, sizeof adam);
    if (!x || !logits || !normed || !norms || !probs || !dlogits || !dfeat || !scratch || !dhead || !y)
        st = FB_ERR_NOMEM;
    if (!st && o->adamw) {
        st = fb_adamw_init(&adam[0], np, o->lr, o->weight_decay);
        if (!st) st = fb_adamw_init(&adam[1], nh, o->lr, o->weight_decay);
        if (!st && o->adam_eps > 0) adam[0].eps = adam[1].eps = o->adam_eps;
    } else if (!st) {
        fb_sgd_init(&sgd[0], np, o->lr, o->momentum, o->weight_decay);
        fb_sgd_init(&sgd[1], nh, o->lr, o->momentum, o->weight_decay);
    }
    uint64_t key = fb_rng_key(o->seed, "fb_clip_train", 0);
    for (int64_t step = 0; step < o->steps && !st; step++) {
        float lr = o->lr; /* the schedule, as torch's LinearLR warmup + CosineAnnealingLR */
        if (step < o->warmup) lr = o->lr * (float)(step + 1) / (float)o->warmup;
        else if (o->cosine)
            lr = (float)(0.5 * o->lr *
                         (1.0 + cos(M_PI * (double)(step - o->warmup) /
                                    (double)(o->steps - o->warmup))));
        adam[0].lr = adam[1].lr = sgd[0].lr = sgd[1].lr = lr;
        for (int64_t b = 0; b < B; b++) { /* example = a function of (seed, step, slot) */
            uint64_t r = fb_mix64(key + (uint64_t)(step * B + b) * 0x9E3779B97F4A7C15ull);
            int64_t i = (int64_t)(r % (uint64_t)n);
            memcpy(x + b * img, images + i * img, (size_t)img * sizeof(float));
            y[b] = labels[i];
        }
        if ((st = fb_clip_forward(net, x, B, &feat))) break;
        fb_head_forward(logits, normed, norms, feat, head, o->head_scale, B, F, K);
        float loss = fb_cross_entropy_forward(probs, logits, y, B, K);
        memset(dlogits, 0, (size_t)(B * K) * 4);
        memset(dfeat, 0, (size_t)(B * F) * 4);
        fb_cross_entropy_backward(dlogits, probs, y, B, K, 1.0f);
        if (o->train_head) { /* d head = scale * dlogits^T normed */
            memset(dhead, 0, (size_t)nh * 4);
            fb_linear_backward(NULL, dhead, NULL, dlogits, normed, NULL, B, F, K);
            for (int64_t j = 0; j < nh; j++) dhead[j] *= o->head_scale;
        }
        if (o->train_backbone) {
            fb_head_backward(dfeat, scratch, dlogits, normed, norms, head, o->head_scale, B, F, K);
            fb_clip_zero_grad(net);
            if ((st = fb_clip_backward(net, dfeat))) break;
            if (o->adamw) fb_adamw_step(&adam[0], fb_clip_params(net), fb_clip_grads(net));
            else fb_sgd_step(&sgd[0], fb_clip_params(net), fb_clip_grads(net));
        }
        if (o->train_head) {
            if (o->adamw) fb_adamw_step(&adam[1], head, dhead);
            else fb_sgd_step(&sgd[1], head, dhead);
        }
        if (last_loss) *last_loss = loss;
        if (o->on_step) o->on_step(o->user, step, loss);
    }
    for (int i = 0; i < 2; i++) {
        fb_sgd_free(&sgd[i]);
        fb_adamw_free(&adam[i]);
    }
    fb_free(x);
    fb_free(logits);
    fb_free(normed);
    fb_free(norms);
    fb_free(probs);
    fb_free(dlogits);
    fb_free(dfeat);
    fb_free(scratch);
    fb_free(dhead);
    fb_free(y);
    return st;
}

fb_status fb_clip_accuracy(fb_clip *net, const float *head, int64_t K, float head_scale,
                           const float *images, const int32_t *labels, int64_t n,
                           double *accuracy)
{
    fb_clip_config cfg = fb_clip_get_config(net);
    const int64_t img = cfg.channels * cfg.image_size * cfg.image_size;
    const int64_t F = cfg.projection ? cfg.projection : cfg.hidden;
    const int64_t B = fb_clip_max_batch(net);
    float *logits = fb_malloc((size_t)(B * K) * 4), *normed = fb_malloc((size_t)(B * F) * 4);
    float *norms = fb_malloc((size_t)B * 4);
    fb_status st = logits && normed && norms ? FB_OK : FB_ERR_NOMEM;
    int64_t correct = 0;
    for (int64_t i = 0; i < n && !st; i += B) {
        int64_t b = n - i < B ? n - i : B;
        const float *feat;
        if ((st = fb_clip_forward(net, images + i * img, b, &feat))) break;
        fb_head_forward(logits, normed, norms, feat, head, head_scale, b, F, K);
        for (int64_t j = 0; j < b; j++) {
            int64_t best = 0;
            for (int64_t k = 1; k < K; k++)
                if (logits[j * K + k] > logits[j * K + best]) best = k;
            correct += best == labels[i + j];
        }
    }
    fb_free(logits);
    fb_free(normed);
    fb_free(norms);
    if (!st) *accuracy = n ? (double)correct / (double)n : 0.0;
    return st;
}
