/*
 * writer.c: atomic, streaming safetensors output (see writer.h).
 *
 * Single-file output: one temporary file ".NAME.tmp-PID-XXXXXX" beside the target, renamed over
 * it (temps.c removes temporaries on a signal, and those of dead runs at the next write).
 * Folder output: a temporary folder beside the target holding model.safetensors, or the shards
 * model-0000i-of-0000N.safetensors and model.safetensors.index.json; on commit it is renamed to
 * the target, or, when a previous output folder is there, atomically exchanged with it
 * (renameat2 RENAME_EXCHANGE) and the old one removed afterwards.
 */
#include "writer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "companions.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/status.h"
#include "safetensors.h"
#include "temps.h"

#define INDEX_NAME "model.safetensors.index.json"

typedef struct shard {
    char *name; /* file name inside the folder, or the final path for single files */
    int fd;
    int64_t first, count; /* tensors [first, first + count) of the layout */
    uint64_t data_start;
    uint64_t unflushed; /* bytes written since writeback was last started */
} shard;

/* Writeback of a shard is started every this many bytes written, so the disk writes while the
 * merge goes on and commit's fsync waits only for the tail. */
enum { WRITEBACK_BYTES = 64 << 20 };

struct fb_writer {
    const fb_model *layout;
    int is_folder;
    char *path;     /* the target */
    char *tmp_path; /* the temporary file or folder */
    int tmp_slot;   /* its entry in the table of temporaries (temps.c), or -1 */
    shard *shards;
    int num_shards;
    int64_t *tensor_shard;     /* layout index -> shard */
    uint64_t *tensor_offset;   /* layout index -> absolute offset in its shard */
    int release;               /* drop written-back pages from the page cache */
    const fb_file_blob *files; /* folder outputs: companion files (borrowed) */
    int num_files;
    const char *stem; /* folder outputs: "<stem>.safetensors" ("model") */
};

char *fb_path_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return fb_strdup(".");
    if (slash == path) return fb_strdup("/");
    return fb_strndup(path, (size_t)(slash - path));
}

char *fb_path_join(const char *base, const char *rel)
{
    if (!base || rel[0] == '/') return fb_strdup(rel);
    fb_buf b;
    fb_buf_init(&b);
    fb_buf_printf(&b, "%s/%s", base, rel);
    if (b.failed) {
        fb_buf_free(&b);
        return NULL;
    }
    return b.data;
}

void fb_mkdirs(const char *dir)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return;
    for (char *s = p + 1; *s; s++)
        if (*s == '/') *s = '\0', mkdir(p, 0755), *s = '/';
    mkdir(p, 0755);
}

int fb_path_identity(const char *path, unsigned long long *dev, unsigned long long *ino)
{
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    *dev = (unsigned long long)st.st_dev;
    *ino = (unsigned long long)st.st_ino;
    return 1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Files a previous output folder may hold; anything else means the folder is not ours to
 * replace. */
static int is_output_file(const char *name)
{
    if (strcmp(name, INDEX_NAME) == 0 || strcmp(name, "model.safetensors") == 0 ||
        strcmp(name, "adapter_model.safetensors") == 0)
        return 1;
    if (fb_companion_name(name)) return 1;
    return strncmp(name, "model-", 6) == 0 && ends_with(name, ".safetensors");
}

/* An existing target folder may be replaced only if it holds nothing but an earlier output. */
static fb_status check_replaceable_folder(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return fb_set_error(FB_ERR_IO, "%s: cannot read folder: %s", path, strerror(errno));
    struct dirent *e;
    fb_status st = FB_OK;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (!is_output_file(e->d_name)) {
            st = fb_set_error(FB_ERR_IO,
                              "%s: output folder exists and holds '%s', which is not a model "
                              "file; choose another path or empty it",
                              path, e->d_name);
            break;
        }
    }
    closedir(d);
    return st;
}

static void remove_folder_files(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char *p = fb_path_join(path, e->d_name);
        if (p) unlink(p);
        fb_free(p);
    }
    closedir(d);
    rmdir(path);
}

/* Splits the layout into shards of at most max_bytes of tensor data (a larger tensor gets a
 * shard of its own, as Hugging Face does). */
static fb_status plan_shards(fb_writer *w, size_t max_bytes)
{
    const fb_model *L = w->layout;
    int n = 0;
    size_t used = 0;
    for (int64_t i = 0; i < L->count; i++) {
        size_t b = L->tensors[i]->nbytes;
        if (n == 0 || (max_bytes && used > 0 && used + b > max_bytes)) {
            n++;
            used = 0;
        }
        used += b;
    }
    if (n == 0) n = 1;
    w->shards = fb_calloc((size_t)n, sizeof *w->shards);
    if (!w->shards) return FB_ERR_NOMEM;
    w->num_shards = n;
    for (int s = 0; s < n; s++)
        w->shards[s].fd = -1;
    int s = -1;
    used = 0;
    for (int64_t i = 0; i < L->count; i++) {
        size_t b = L->tensors[i]->nbytes;
        if (s < 0 || (max_bytes && used > 0 && used + b > max_bytes)) {
            s++;
            used = 0;
            w->shards[s].first = i;
        }
        used += b;
        w->shards[s].count++;
        w->tensor_shard[i] = s;
    }
    for (s = 0; s < n; s++) {
        fb_buf b;
        fb_buf_init(&b);
        if (n == 1)
            fb_buf_printf(&b, "%s.safetensors", w->stem ? w->stem : "model");
        else
            fb_buf_printf(&b, "model-%05d-of-%05d.safetensors", s + 1, n);
        if (b.failed) return FB_ERR_NOMEM;
        w->shards[s].name = b.data;
    }
    return FB_OK;
}

static fb_status write_all(int fd, const char *path, const void *data, size_t n, uint64_t off)
{
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t put = pwrite(fd, p, n, (off_t)off);
        if (put < 0) {
            if (errno == EINTR) continue;
            return fb_set_error(FB_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        p += put;
        n -= (size_t)put;
        off += (uint64_t)put;
    }
    return FB_OK;
}

/* Opens shard s's file (created exclusively) and writes its header. */
static fb_status open_shard(fb_writer *w, int s, const char *file_path, int fd)
{
    shard *sh = &w->shards[s];
    if (fd < 0) fd = fb_temp_open_inside(file_path);
    if (fd < 0) return fb_set_error(FB_ERR_IO, "%s: cannot create: %s", file_path, strerror(errno));
    sh->fd = fd;
    uint64_t *rel = fb_malloc((size_t)(sh->count ? sh->count : 1) * sizeof *rel);
    if (!rel) return FB_ERR_NOMEM;
    fb_buf hdr;
    fb_status st = fb_safetensors_header(w->layout, sh->first, sh->count, 1, &hdr, rel);
    if (st) {
        fb_free(rel);
        return st;
    }
    sh->data_start = hdr.len;
    uint64_t total = hdr.len;
    for (int64_t i = 0; i < sh->count; i++) {
        w->tensor_offset[sh->first + i] = sh->data_start + rel[i];
        total += w->layout->tensors[sh->first + i]->nbytes;
    }
    fb_free(rel);
    st = write_all(fd, file_path, hdr.data, hdr.len, 0);
    fb_buf_free(&hdr);
    /* Reserve the full size now: a full disk fails here, before any work. */
    if (!st) {
        int e = posix_fallocate(fd, 0, (off_t)total);
        if (e == EOPNOTSUPP || e == EINVAL) e = ftruncate(fd, (off_t)total) ? errno : 0;
        if (e)
            st = fb_set_error(FB_ERR_IO, "%s: cannot reserve %llu bytes: %s", file_path,
                              (unsigned long long)total, strerror(e));
    }
    return st;
}

static fb_status shard_path(const fb_writer *w, int s, char **out)
{
    *out = fb_path_join(w->tmp_path, w->shards[s].name);
    return *out ? FB_OK : FB_ERR_NOMEM;
}

static fb_status writer_open(const char *path, const fb_save_options *opts, const fb_model *layout,
                             const char *stem, fb_writer **out);

fb_status fb_writer_open(const char *path, const fb_save_options *opts, const fb_model *layout,
                         fb_writer **out)
{
    return writer_open(path, opts, layout, NULL, out);
}

static fb_status writer_open(const char *path, const fb_save_options *opts, const fb_model *layout,
                             const char *stem, fb_writer **out)
{
    *out = NULL;
    size_t max_shard = opts ? opts->max_shard_bytes : 0;
    int is_folder = !ends_with(path, ".safetensors");
    if (!is_folder && max_shard)
        return fb_set_error(
            FB_ERR_ARG, "%s: sharded output needs a folder path, not a .safetensors file", path);
    struct stat st_target;
    int exists = stat(path, &st_target) == 0;
    if (exists && is_folder && !S_ISDIR(st_target.st_mode))
        return fb_set_error(FB_ERR_IO, "%s: exists and is not a folder", path);
    if (exists && !is_folder && S_ISDIR(st_target.st_mode))
        return fb_set_error(FB_ERR_IO, "%s: exists and is a folder", path);
    if (exists && is_folder) {
        fb_status st = check_replaceable_folder(path);
        if (st) return st;
    }

    fb_writer *w = fb_calloc(1, sizeof *w);
    if (!w) return FB_ERR_NOMEM;
    w->layout = layout;
    w->is_folder = is_folder;
    w->stem = stem;
    for (int i = 0; opts && i < opts->num_files; i++) {
        const char *n = opts->files[i].name;
        if (!n || !*n || strchr(n, '/') || !strcmp(n, ".") || !strcmp(n, "..") ||
            !fb_companion_name(n)) {
            fb_free(w);
            return fb_set_error(FB_ERR_ARG,
                                "%s: '%s' cannot be written beside the weights (a "
                                "config, tokenizer or README file name)",
                                path, n ? n : "");
        }
    }
    if (opts && is_folder) {
        w->files = opts->files;
        w->num_files = opts->num_files;
    }
    w->path = fb_strdup(path);
    w->tmp_slot = -1;
    w->tmp_path = fb_temp_template(path);
    int64_t nt = layout->count ? layout->count : 1;
    w->tensor_shard = fb_calloc((size_t)nt, sizeof *w->tensor_shard);
    w->tensor_offset = fb_calloc((size_t)nt, sizeof *w->tensor_offset);
    fb_status st = FB_OK;
    if (!w->path || !w->tmp_path || !w->tensor_shard || !w->tensor_offset) {
        st = FB_ERR_NOMEM;
        goto fail;
    }
    if ((st = plan_shards(w, is_folder ? max_shard : 0))) goto fail;

    fb_temps_sweep(path); /* what killed runs left here */
    if (!is_folder) {
        int fd = fb_temp_create(w->tmp_path, FB_TEMP_FILE, &w->tmp_slot);
        if (fd < 0) {
            st = fb_set_error(FB_ERR_IO, "%s: cannot create output: %s", path, strerror(errno));
            w->tmp_path[0] = '\0';
            goto fail;
        }
        fchmod(fd, 0644);
        if ((st = open_shard(w, 0, w->tmp_path, fd))) goto fail;
    } else {
        if (fb_temp_create(w->tmp_path, FB_TEMP_FOLDER, &w->tmp_slot) < 0) {
            st = fb_set_error(FB_ERR_IO, "%s: cannot create output folder: %s", path,
                              strerror(errno));
            w->tmp_path[0] = '\0';
            goto fail;
        }
        chmod(w->tmp_path, 0755);
        for (int s = 0; s < w->num_shards; s++) {
            char *p;
            if ((st = shard_path(w, s, &p))) goto fail;
            st = open_shard(w, s, p, -1);
            fb_free(p);
            if (st) goto fail;
        }
    }
    *out = w;
    return FB_OK;
fail:
    fb_writer_abort(w);
    return st;
}

fb_status fb_writer_write(fb_writer *w, int64_t index, size_t offset, const void *data, size_t n)
{
    shard *sh = &w->shards[w->tensor_shard[index]];
    fb_status st = write_all(sh->fd, w->tmp_path, data, n, w->tensor_offset[index] + offset);
    if (st) return fb_error_prefix(st, "tensor '%s'", w->layout->tensors[index]->name);
    uint64_t before = __atomic_fetch_add(&sh->unflushed, (uint64_t)n, __ATOMIC_RELAXED);
    if (before < WRITEBACK_BYTES && before + n >= WRITEBACK_BYTES) {
        /* advisory (a no-op on tmpfs): errors surface at commit's fsync */
        __atomic_store_n(&sh->unflushed, 0, __ATOMIC_RELAXED);
        sync_file_range(sh->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        /* pages whose writeback ended (those started WRITEBACK_BYTES ago, mostly) go */
        if (w->release) posix_fadvise(sh->fd, 0, 0, POSIX_FADV_DONTNEED);
    }
    return FB_OK;
}

void fb_writer_release_cache(fb_writer *w)
{
    if (w) w->release = 1;
}

static fb_status sync_fd(int fd, const char *path)
{
    if (fsync(fd) != 0 && errno != EINVAL)
        return fb_set_error(FB_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    return FB_OK;
}

static fb_status sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fb_set_error(FB_ERR_IO, "%s: cannot open folder: %s", dir, strerror(errno));
    fb_status st = sync_fd(fd, dir);
    close(fd);
    return st;
}

/* Creates `name` in the temporary folder with these bytes, fsynced. */
static fb_status write_small_file(const fb_writer *w, const char *name, const void *data, size_t n)
{
    char *p = fb_path_join(w->tmp_path, name);
    if (!p) return FB_ERR_NOMEM;
    fb_status st;
    int fd = fb_temp_open_inside(p);
    if (fd < 0)
        st = fb_set_error(FB_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
    else {
        st = write_all(fd, p, data, n, 0);
        if (!st) st = sync_fd(fd, p);
        close(fd);
    }
    fb_free(p);
    return st;
}

static fb_status write_index(fb_writer *w)
{
    const fb_model *L = w->layout;
    fb_buf b;
    fb_buf_init(&b);
    uint64_t total = 0;
    for (int64_t i = 0; i < L->count; i++)
        total += L->tensors[i]->nbytes;
    fb_buf_printf(&b, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {",
                  (unsigned long long)total);
    for (int64_t i = 0; i < L->count; i++) {
        fb_buf_puts(&b, i ? ",\n    " : "\n    ");
        fb_buf_json_string(&b, L->tensors[i]->name);
        fb_buf_puts(&b, ": ");
        fb_buf_json_string(&b, w->shards[w->tensor_shard[i]].name);
    }
    fb_buf_puts(&b, "\n  }\n}\n");
    if (b.failed) return FB_ERR_NOMEM;
    fb_status st = write_small_file(w, INDEX_NAME, b.data, b.len);
    fb_buf_free(&b);
    return st;
}

static void writer_free(fb_writer *w)
{
    for (int s = 0; s < w->num_shards; s++) {
        if (w->shards[s].fd >= 0) close(w->shards[s].fd);
        fb_free(w->shards[s].name);
    }
    fb_free(w->shards);
    fb_free(w->tensor_shard);
    fb_free(w->tensor_offset);
    fb_temp_forget(w->tmp_slot);
    fb_free(w->path);
    fb_free(w->tmp_path);
    fb_free(w);
}

fb_status fb_writer_commit(fb_writer *w)
{
    fb_status st = FB_OK;
    for (int s = 0; s < w->num_shards && !st; s++) {
        st = sync_fd(w->shards[s].fd, w->tmp_path);
        if (close(w->shards[s].fd) != 0 && !st)
            st = fb_set_error(FB_ERR_IO, "%s: close failed: %s", w->tmp_path, strerror(errno));
        w->shards[s].fd = -1;
    }
    if (!st && w->is_folder && w->num_shards > 1) st = write_index(w);
    for (int i = 0; !st && w->is_folder && i < w->num_files; i++)
        st = write_small_file(w, w->files[i].name, w->files[i].data, w->files[i].size);
    if (!st && w->is_folder) st = sync_dir(w->tmp_path);
    if (st) {
        fb_writer_abort(w);
        return st;
    }
    struct stat old;
    int replace_folder = w->is_folder && stat(w->path, &old) == 0;
    if (replace_folder) {
        /* swap atomically, then drop the previous output now found at tmp_path */
        if (renameat2(AT_FDCWD, w->tmp_path, AT_FDCWD, w->path, RENAME_EXCHANGE) != 0)
            st = fb_set_error(FB_ERR_IO, "%s: cannot replace folder: %s", w->path, strerror(errno));
        else
            remove_folder_files(w->tmp_path);
    } else if (rename(w->tmp_path, w->path) != 0) {
        st = fb_set_error(FB_ERR_IO, "%s: cannot rename output into place: %s", w->path,
                          strerror(errno));
    }
    if (st) {
        fb_writer_abort(w);
        return st;
    }
    char *dir = fb_path_dirname(w->path);
    if (dir) st = sync_dir(dir);
    fb_free(dir);
    writer_free(w);
    return st;
}

void fb_writer_abort(fb_writer *w)
{
    if (!w) return;
    for (int s = 0; s < w->num_shards; s++) {
        if (w->shards[s].fd >= 0) close(w->shards[s].fd);
        w->shards[s].fd = -1;
    }
    if (w->tmp_path && w->tmp_path[0]) {
        if (w->is_folder)
            remove_folder_files(w->tmp_path);
        else
            unlink(w->tmp_path);
    }
    writer_free(w);
}

/* fb_model_save: the writer fed from the model's own tensors, in bounded chunks so a lazily
 * loaded model is converted or resharded without loading it whole. */
fb_status fb_model_save(const fb_model *model, const char *path, const fb_save_options *opts)
{
    return fb_model_save_as(model, path, opts, NULL);
}

fb_status fb_model_save_as(const fb_model *model, const char *path, const fb_save_options *opts,
                           const char *stem)
{
    enum { CHUNK = 8 << 20 };
    fb_writer *w;
    fb_status st = writer_open(path, opts, model, stem, &w);
    if (st) return st;
    uint8_t *scratch = fb_malloc(CHUNK);
    if (!scratch) {
        fb_writer_abort(w);
        return FB_ERR_NOMEM;
    }
    for (int64_t i = 0; i < model->count && !st; i++) {
        const fb_tensor *t = model->tensors[i];
        if (!t->data && !t->src && t->nbytes) {
            st = fb_set_error(FB_ERR_ARG, "tensor '%s' has no data to save", t->name);
            break;
        }
        for (size_t off = 0; off < t->nbytes && !st; off += CHUNK) {
            size_t n = t->nbytes - off < CHUNK ? t->nbytes - off : CHUNK;
            const void *p;
            st = fb_tensor_view(t, off, n, scratch, &p);
            if (!st) st = fb_writer_write(w, i, off, p, n);
        }
    }
    fb_free(scratch);
    if (st) {
        fb_writer_abort(w);
        return st;
    }
    return fb_writer_commit(w);
}

fb_status fb_write_text_atomic(const char *path, const char *text)
{
    char *tmp = fb_temp_template(path);
    if (!tmp) return FB_ERR_NOMEM;
    fb_temps_sweep(path);
    int slot;
    int fd = fb_temp_create(tmp, FB_TEMP_FILE, &slot);
    if (fd < 0) {
        fb_status st = fb_set_error(FB_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        fb_free(tmp);
        return st;
    }
    size_t n = strlen(text), done = 0;
    fb_status st = FB_OK;
    while (done < n) {
        ssize_t w = write(fd, text + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            st = fb_set_error(FB_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
            break;
        }
        done += (size_t)w;
    }
    if (!st && fsync(fd) != 0)
        st = fb_set_error(FB_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    fchmod(fd, 0644);
    close(fd);
    if (!st && rename(tmp, path) != 0)
        st = fb_set_error(FB_ERR_IO, "%s: cannot rename into place: %s", path, strerror(errno));
    if (st) unlink(tmp);
    fb_temp_forget(slot);
    fb_free(tmp);
    return st;
}
