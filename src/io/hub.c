/*
 * hub.c: model ids ("org/name") resolved in the Hugging Face hub cache, offline.
 *
 * The cache is $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
 * ~/.cache/huggingface/hub (huggingface_hub's order). A model "org/name" lives in
 * models--org--name/: refs/<branch or tag> holds a commit hash, snapshots/<hash>/ holds the
 * files (symlinks into blobs/). A revision is a branch or tag with a file under refs/, or a
 * commit hash (full, or a prefix of at least 7 hex digits of one snapshot). Nothing is ever
 * downloaded: a model that is not there is an error naming every path tried and the command
 * that fetches it on a machine with a network.
 */
#include "hub.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/status.h"
#include "writer.h"

/* A repo id as the hub allows it: one or two parts of letters, digits, '-', '_' and '.',
 * not starting or ending with '-' or '.', without "--" or "..". */
static int valid_part(const char *s, size_t n)
{
    if (n == 0 || n > 96 || s[0] == '-' || s[0] == '.' || s[n - 1] == '-' || s[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '-' && c != '_' && c != '.') return 0;
        if (i && (c == '-' || c == '.') && s[i - 1] == c) return 0;
    }
    return 1;
}

int fb_hub_is_model_id(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash) return valid_part(s, strlen(s));
    return !strchr(slash + 1, '/') && valid_part(s, (size_t)(slash - s)) &&
           valid_part(slash + 1, strlen(slash + 1));
}

char *fb_hub_cache_dir(void)
{
    const char *v = getenv("HF_HUB_CACHE");
    if (v && *v) return fb_strdup(v);
    fb_buf b;
    fb_buf_init(&b);
    if ((v = getenv("HF_HOME")) && *v)
        fb_buf_printf(&b, "%s/hub", v);
    else if ((v = getenv("XDG_CACHE_HOME")) && *v)
        fb_buf_printf(&b, "%s/huggingface/hub", v);
    else
        fb_buf_printf(&b, "%s/.cache/huggingface/hub", getenv("HOME") ? getenv("HOME") : "");
    if (b.failed) {
        fb_buf_free(&b);
        return NULL;
    }
    return b.data;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i])) return 0;
    return 1;
}

/* The hash in refs/<rev>, or NULL. A branch name may hold '/' (refs/pr/1). */
static char *read_ref(const char *repo, const char *rev)
{
    if (strstr(rev, "..")) return NULL;
    fb_buf p;
    fb_buf_init(&p);
    fb_buf_printf(&p, "%s/refs/%s", repo, rev);
    FILE *f = p.failed ? NULL : fopen(p.data, "r");
    fb_buf_free(&p);
    if (!f) return NULL;
    char line[128] = "";
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    if (!ok) return NULL;
    size_t n = strcspn(line, " \r\n");
    line[n] = '\0';
    return n >= 7 && is_hex(line, n) ? fb_strdup(line) : NULL;
}

/* The one snapshot whose name starts with a hash prefix, or NULL. */
static char *snapshot_by_prefix(const char *snapshots, const char *prefix)
{
    DIR *d = opendir(snapshots);
    if (!d) return NULL;
    char *found = NULL;
    int count = 0;
    struct dirent *e;
    size_t n = strlen(prefix);
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, n) != 0) continue;
        if (!count++) found = fb_strdup(e->d_name);
    }
    closedir(d);
    if (count != 1) {
        fb_free(found);
        return NULL;
    }
    return found;
}

fb_status fb_hub_resolve(const char *id, const char *revision, char **out)
{
    *out = NULL;
    const char *rev = revision && *revision ? revision : "main";
    char *cache = fb_hub_cache_dir();
    if (!cache) return FB_ERR_NOMEM;
    fb_buf repo, snaps, tried;
    fb_buf_init(&repo);
    fb_buf_init(&snaps);
    fb_buf_init(&tried);
    fb_buf_printf(&repo, "%s/models--", cache);
    for (const char *c = id; *c; c++) {
        if (*c == '/')
            fb_buf_printf(&repo, "--");
        else
            fb_buf_printf(&repo, "%c", *c);
    }
    fb_buf_printf(&snaps, "%s/snapshots", repo.data ? repo.data : "");
    fb_status st = FB_OK;
    char *hash = NULL, *snapshot = NULL;
    if (repo.failed || snaps.failed) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    if (!is_dir(repo.data)) {
        fb_buf_printf(&tried, "%s", repo.data);
    } else if ((hash = read_ref(repo.data, rev))) {
        fb_buf_printf(&tried, "%s/refs/%s -> %s", repo.data, rev, hash);
    } else if (strlen(rev) >= 7 && strlen(rev) <= 40 && is_hex(rev, strlen(rev))) {
        hash = snapshot_by_prefix(snaps.data, rev);
        fb_buf_printf(&tried, "%s/refs/%s, %s/%s*", repo.data, rev, snaps.data, rev);
    } else {
        fb_buf_printf(&tried, "%s/refs/%s", repo.data, rev);
    }
    if (hash) {
        fb_buf s;
        fb_buf_init(&s);
        fb_buf_printf(&s, "%s/%s", snaps.data, hash);
        if (s.failed) {
            st = FB_ERR_NOMEM;
            goto done;
        }
        if (is_dir(s.data))
            snapshot = s.data;
        else {
            fb_buf_printf(&tried, ", %s", s.data);
            fb_buf_free(&s);
        }
    }
    if (!snapshot) {
        st = fb_set_error(FB_ERR_NOT_FOUND,
                          "model '%s' (revision %s) is not in the Hugging Face cache (tried %s); "
                          "nothing is downloaded here: on a machine with a network run "
                          "`huggingface-cli download %s%s%s` and copy the cache, or set "
                          "HF_HUB_CACHE",
                          id, rev, tried.data ? tried.data : cache, id,
                          revision && *revision ? " --revision " : "",
                          revision && *revision ? revision : "");
        goto done;
    }
    *out = snapshot;
done:
    fb_free(hash);
    fb_free(cache);
    fb_buf_free(&repo);
    fb_buf_free(&snaps);
    fb_buf_free(&tried);
    return st;
}
