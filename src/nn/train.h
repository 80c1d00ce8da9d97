/*
 * train.h: the training loop the zoo and data-driven methods use: minibatches drawn with the
 * counter-based generator (so a run is a function of its seed), a cosine head over the CLIP
 * features, cross-entropy, and SGD or AdamW on the backbone (and the head, if asked).
 */
#ifndef FB_NN_TRAIN_H
#define FB_NN_TRAIN_H

#include "clip_vit.h"
#include "optim.h"

typedef struct fb_train_options {
    int64_t steps, batch;
    int adamw;            /* 1: AdamW (lr, weight_decay); 0: SGD (lr, momentum, weight_decay) */
    float lr, momentum, weight_decay;
    float adam_eps;       /* AdamW's epsilon; 0: torch's default, 1e-8 */
    float head_scale;     /* logit scale of the cosine head */
    int train_backbone;   /* 0: the backbone is frozen */
    int train_head;       /* 0: the head is frozen */
    int cosine;           /* 1: lr follows a cosine from lr to 0 over the steps, after warmup */
    int64_t warmup;       /* steps of linear warmup from lr / warmup (0: none) */
    uint64_t seed;
    /* called after each step with the step's loss; may be NULL */
    void (*on_step)(void *user, int64_t step, float loss);
    void *user;
} fb_train_options;

/* Trains net (and head [K, F] when train_head) on images [n, C, S, S] with labels in [0, K).
 * Returns the mean loss of the last step in *last_loss. */
fb_status fb_clip_train(fb_clip *net, float *head, int64_t K, const float *images,
                        const int32_t *labels, int64_t n, const fb_train_options *o,
                        float *last_loss);

/* Accuracy of net + head on images [n, ...]: the fraction whose largest logit is the label. */
fb_status fb_clip_accuracy(fb_clip *net, const float *head, int64_t K, float head_scale,
                           const float *images, const int32_t *labels, int64_t n,
                           double *accuracy);

#endif
