/*
 * lora.h: PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors or .bin) applied
 * to a model as it is read (lora.c), never as a merged copy on disk.
 */
#ifndef FB_IO_LORA_H
#define FB_IO_LORA_H

#include "core/model.h"

/* *out = base with the adapter in folder adapter_dir applied: each adapted weight W reads as
 * W + scale (B A) (embeddings: W + scale (B A)^T; a lora_B.bias adds to the bias), computed in
 * float32 chunk by chunk and rounded once to W's dtype; modules_to_save tensors replace the
 * base's; scale = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), per module from
 * rank_pattern and alpha_pattern. Only A and B are held in memory. base may be freed
 * afterwards. An adapter tensor that matches no tensor of base, a shape that disagrees, DoRA
 * or fan_in_fan_out adapters: one-line errors naming the adapter and tensor. */
fb_status fb_lora_apply(const fb_model *base, const char *adapter_dir, fb_model **out);

#endif
