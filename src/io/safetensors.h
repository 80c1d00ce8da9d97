/*
 * safetensors.h: the safetensors format (8-byte little-endian header length, a JSON header
 * mapping names to {dtype, shape, data_offsets} plus optional string __metadata__, then the
 * tensor bytes). Reading validates everything before any byte is used; writing builds the
 * header for a layout so the bytes can be streamed in afterwards.
 */
#ifndef FB_IO_SAFETENSORS_H
#define FB_IO_SAFETENSORS_H

#include "core/model.h"
#include "core/buf.h"

/* Headers longer than this are refused (a hostile file could ask for any amount). */
#define FB_ST_MAX_HEADER (100u * 1000u * 1000u)

/* Reads and validates the header of the safetensors file at path and appends its tensors to
 * model as lazy tensors, in file order. Metadata goes to the model's metadata. */
fb_status fb_safetensors_read(const char *path, fb_model *model);

/* Builds the header for tensors [first, first + count) of layout (and the layout's metadata,
 * when with_metadata): JSON padded with spaces so that 8 + header length is a multiple of 8.
 * rel_offsets[i] receives the data offset of tensor first + i, relative to the data start;
 * data is laid out by decreasing element size so every tensor is aligned for its dtype.
 * out receives the full prefix: the 8-byte length and the JSON. */
fb_status fb_safetensors_header(const fb_model *layout, int64_t first, int64_t count,
                                int with_metadata, fb_buf *out, uint64_t *rel_offsets);

#endif
