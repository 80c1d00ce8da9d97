/*
 * writer.h: streaming, atomic output of a model as safetensors (one file, or a Hugging Face
 * folder, sharded or not).
 *
 * The writer is opened with the output's layout (names, dtypes, shapes, metadata), so every
 * tensor's place in every file is known before any byte is written; bytes then go in with
 * pwrite from any thread, in any order. Everything is written to temporary names beside the
 * target; commit fsyncs and renames them into place, abort removes them. An interrupted run
 * leaves the previous output or none, never a half file.
 */
#ifndef FB_IO_WRITER_H
#define FB_IO_WRITER_H

#include "core/model.h"

typedef struct fb_writer fb_writer;

/* Checks the target and creates the temporary output. layout must stay alive until commit or
 * abort. Fails (before writing) if path is an existing folder holding files this library did
 * not write. */
fb_status fb_writer_open(const char *path, const fb_save_options *opts, const fb_model *layout,
                         fb_writer **out);

/* fb_model_save, for a folder whose weights file is "<stem>.safetensors" (a PEFT adapter's
 * adapter_model.safetensors; unsharded). stem NULL: "model". */
fb_status fb_model_save_as(const fb_model *model, const char *path, const fb_save_options *opts,
                           const char *stem);

/* Writes n bytes at byte offset `offset` within tensor `index` of the layout. Thread-safe. */
fb_status fb_writer_write(fb_writer *w, int64_t index, size_t offset, const void *data, size_t n);

/* From now on, the output's pages leave the page cache once written back (for merges larger
 * than memory, where they would push out input pages that are still to be read). */
void fb_writer_release_cache(fb_writer *w);

/* Makes the output durable and visible at its path, then frees the writer. */
fb_status fb_writer_commit(fb_writer *w);

/* Removes every temporary file and frees the writer (safe on NULL). */
void fb_writer_abort(fb_writer *w);

/* Identity of a path that exists (for refusing to overwrite inputs): 1 and fills dev/ino if it
 * exists, 0 if not. */
int fb_path_identity(const char *path, unsigned long long *dev, unsigned long long *ino);

/* The folder part of a path ("." for a bare name); caller frees. */
char *fb_path_dirname(const char *path);

/* base joined to rel ("rel" itself when absolute or base is NULL); caller frees. */
char *fb_path_join(const char *base, const char *rel);
/* mkdir -p: makes dir and its missing parents (0755); errors are left to the caller's next
 * open of a file inside. */
void fb_mkdirs(const char *dir);

/* Writes a small text file (report, YAML, JSON) atomically: temporary file beside it, fsync,
 * rename. On failure nothing is left at path and a previous file there is untouched. */
fb_status fb_write_text_atomic(const char *path, const char *text);

#endif
