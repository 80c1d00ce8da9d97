/*
 * hub.h: Hugging Face model ids resolved in the local hub cache, never downloaded (hub.c).
 */
#ifndef FB_IO_HUB_H
#define FB_IO_HUB_H

#include "fusionbench.h"

/* 1 if s has the form of a hub model id ("org/name" or "name"). */
int fb_hub_is_model_id(const char *s);

/* The cache folder in use (HF_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub or
 * ~/.cache/huggingface/hub); caller frees; NULL when out of memory. */
char *fb_hub_cache_dir(void);

/* *out = the snapshot folder of model `id` at `revision` (NULL: "main"; a branch, a tag or a
 * commit hash or its prefix); caller frees. FB_ERR_NOT_FOUND names the id, every path tried and
 * the command that downloads it elsewhere. */
fb_status fb_hub_resolve(const char *id, const char *revision, char **out);

#endif
