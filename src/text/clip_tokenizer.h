/*
 * clip_tokenizer.h: CLIP's byte-level BPE tokenizer, read from a Hugging Face snapshot's
 * vocab.json and merges.txt, as transformers' CLIPTokenizerFast encodes a text:
 *
 *   1. whitespace runs become one space, the text is lower-cased (Unicode, per code point);
 *   2. pre-tokenisation by CLIP's pattern: <|startoftext|>, <|endoftext|>, the contractions
 *      's 't 're 've 'm 'll 'd, letter runs, single digits, runs of anything else but
 *      whitespace (whitespace itself is dropped);
 *   3. each piece's UTF-8 bytes mapped to GPT-2's printable byte alphabet, `</w>` appended to
 *      its last symbol, and merged by BPE (lowest merge rank first, all occurrences of a pair
 *      at once, left to right);
 *   4. <|startoftext|> ... <|endoftext|> around the ids; a symbol not in the vocabulary is the
 *      unknown token (<|endoftext|>).
 *
 * Departures (docs/benchmark.md): no NFC normalisation (text is taken as it comes; FusionBench's
 * class names and templates are ASCII), no ftfy repairs, lower case per code point without
 * Greek final-sigma context. Letters and numbers are Unicode 14.0's (src/text/unicode_data.h).
 */
#ifndef FB_TEXT_CLIP_TOKENIZER_H
#define FB_TEXT_CLIP_TOKENIZER_H
#include <stdint.h>

#include "fusionbench.h"

typedef struct fb_clip_tokenizer fb_clip_tokenizer;

/* Reads vocab.json (a JSON object token -> id) and merges.txt (a "#version" line, then one
 * "left right" pair per line in rank order). Malformed files are errors naming the file and
 * line or token. */
fb_status fb_clip_tokenizer_load(const char *vocab_path, const char *merges_path,
                                 fb_clip_tokenizer **out);
void fb_clip_tokenizer_free(fb_clip_tokenizer *tok);

/* Encodes text into ids[max] (start and end tokens included); *count is the number written.
 * A text longer than max tokens is an error naming it (CLIP's text model takes 77). */
fb_status fb_clip_tokenize(fb_clip_tokenizer *tok, const char *text, int32_t *ids, int64_t max,
                           int64_t *count);

/* The ids of <|startoftext|> and <|endoftext|>; the vocabulary size (largest id + 1). */
int32_t fb_clip_tokenizer_bos(const fb_clip_tokenizer *tok);
int32_t fb_clip_tokenizer_eos(const fb_clip_tokenizer *tok);
int64_t fb_clip_tokenizer_vocab_size(const fb_clip_tokenizer *tok);

#endif
