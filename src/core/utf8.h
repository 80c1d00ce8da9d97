/*
 * utf8.h: strict UTF-8 decoding (no overlong forms, no surrogates, nothing past U+10FFFF), for
 * the CLIP tokenizer's text and the glyph renderer's character lists.
 */
#ifndef FB_CORE_UTF8_H
#define FB_CORE_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* One code point from s[0..n) (n >= 1) into *cp: its length in bytes, or 0 if the bytes are
 * not valid UTF-8. */
int fb_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

#endif
