/*
 * companions.h: the files a Hugging Face model folder holds beside its weights (config.json,
 * generation_config.json, the tokenizer's, README.md), collected from the inputs' folders for
 * a merged model's folder (companions.c).
 */
#ifndef FB_IO_COMPANIONS_H
#define FB_IO_COMPANIONS_H

#include "fusionbench.h"

/* 1 if `name` is a companion file a model folder may hold beside its weights. */
int fb_companion_name(const char *name);

typedef struct fb_companions {
    fb_file_blob *files; /* names and bytes owned by this struct */
    int count, cap;
} fb_companions;

/* Reads the companions of base_dir (config.json with torch_dtype and, when num_layers > 0,
 * num_hidden_layers set to the output's; generation_config.json; preprocessor_config.json)
 * and the tokenizer files of tokenizer_dir (base_dir when NULL); files that are not there are
 * skipped. A config.json that is not a JSON object is an error naming it. */
fb_status fb_companions_collect(const char *base_dir, const char *tokenizer_dir,
                                const char *torch_dtype, int64_t num_layers, fb_companions *out);

/* Adds a file (text is copied). */
fb_status fb_companions_add(fb_companions *c, const char *name, const char *text, size_t n);
void fb_companions_free(fb_companions *c);

#endif
