/*
 * kernels.h: forward and backward passes of the layers the nn engine is built from, in the
 * manner of llm.c: one function per layer and direction over contiguous f32 arrays, shapes in
 * the argument list, no allocation. Backward functions ACCUMULATE (+=) into parameter
 * gradients and input gradients, so callers zero gradients once per step and layers can share
 * inputs (residual branches). Row-major everywhere; linear weights are [out, in] as PyTorch.
 */
#ifndef FB_NN_KERNELS_H
#define FB_NN_KERNELS_H

#include <stdint.h>

/* 1: OpenBLAS runs single-threaded for a whole pass (fb_linear_* split GEMMs over OpenMP threads
 * themselves); 0: back to one BLAS thread per OpenMP thread. */
void fb_nn_blas_single(int on);

/* out[N,OC] = inp[N,IC] W[OC,IC]^T + b[OC] (b may be NULL). */
void fb_linear_forward(float *out, const float *inp, const float *W, const float *b, int64_t N,
                       int64_t IC, int64_t OC);
/* The same as one sgemm call on the calling thread (inside an OpenMP loop over independent
 * products, while OpenBLAS is single-threaded: fb_nn_blas_single). */
void fb_linear_forward_serial(float *out, const float *inp, const float *W, const float *b,
                              int64_t N, int64_t IC, int64_t OC);
/* dinp[N,IC] += dout W;  dW[OC,IC] += dout^T inp;  db[OC] += sum_n dout (each may be NULL). */
void fb_linear_backward(float *dinp, float *dW, float *db, const float *dout, const float *inp,
                        const float *W, int64_t N, int64_t IC, int64_t OC);

/* Layer normalisation over the last dimension C of N rows; mean and rstd ([N]) are saved. */
void fb_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *w, const float *b, int64_t N, int64_t C, float eps);
void fb_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                           const float *inp, const float *w, const float *mean,
                           const float *rstd, int64_t N, int64_t C);

/* Activations, element-wise over n: GELU (the exact erf form, HF "gelu"), quick GELU
 * (x sigmoid(1.702 x), CLIP's "quick_gelu"), ReLU. Backward: dinp += dout * f'(inp). */
void fb_gelu_forward(float *out, const float *inp, int64_t n);
void fb_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n);
void fb_quick_gelu_forward(float *out, const float *inp, int64_t n);
void fb_quick_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n);
void fb_relu_forward(float *out, const float *inp, int64_t n);
void fb_relu_backward(float *dinp, const float *inp, const float *dout, int64_t n);

/* Row-wise softmax over C, N rows (numerically stable); backward from the saved output. */
void fb_softmax_forward(float *probs, const float *logits, int64_t N, int64_t C);
void fb_softmax_backward(float *dlogits, const float *probs, const float *dprobs, int64_t N,
                         int64_t C);

/* Mean cross-entropy of logits[N,C] against integer targets; probs[N,C] saved. Returns the
 * loss. Backward: dlogits += (probs - onehot) / N * dloss. */
float fb_cross_entropy_forward(float *probs, const float *logits, const int32_t *targets,
                               int64_t N, int64_t C);
void fb_cross_entropy_backward(float *dlogits, const float *probs, const int32_t *targets,
                               int64_t N, int64_t C, float dloss);

/* Mean Shannon entropy of softmax(logits) over N rows (AdaMerging's objective):
 * H = -(1/N) sum_n sum_c p log p. probs saved. Backward: dlogits += dH dH/dlogits. */
float fb_entropy_forward(float *probs, const float *logits, int64_t N, int64_t C);
void fb_entropy_backward(float *dlogits, const float *probs, int64_t N, int64_t C, float dloss);

/* Multi-head self-attention core: q, k, v, out are [B, T, H*D] (heads interleaved as in
 * PyTorch's view(B, T, H, D)); att [B, H, T, T] holds the saved softmax. scale = 1/sqrt(D).
 * causal masks future positions. Backward accumulates into dq, dk, dv; datt is scratch of
 * att's size. */
void fb_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                          int64_t B, int64_t T, int64_t H, int64_t D, int causal);
/* The same for the first Q positions' queries only (each image's class token: Q = 1), as
 * inference needs in the last layer: q and out are [B, Q, H*D], att [B, H, Q, T]; each row is
 * fb_attention_forward's row, to the byte. Not causal. */
void fb_attention_forward_first(float *out, float *att, const float *q, const float *k,
                                const float *v, int64_t B, int64_t T, int64_t Q, int64_t H,
                                int64_t D);
void fb_attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout,
                           const float *att, const float *q, const float *k, const float *v,
                           int64_t B, int64_t T, int64_t H, int64_t D);

/* Patch embedding, a convolution with stride = kernel = P and no bias: images [B, Cin, S, S]
 * (S a multiple of P) are cut into (S/P)^2 patches, flattened as [Cin, P, P] (im2col), and
 * projected by W [E, Cin*P*P]. cols [B, NP, Cin*P*P] is saved for backward; out [B, NP, E]. */
void fb_patch_embed_forward(float *out, float *cols, const float *images, const float *W,
                            int64_t B, int64_t Cin, int64_t S, int64_t P, int64_t E);
void fb_patch_embed_backward(float *dW, const float *dout, const float *cols, int64_t B,
                             int64_t Cin, int64_t S, int64_t P, int64_t E);

#endif
