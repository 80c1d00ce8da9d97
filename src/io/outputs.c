/*
 * outputs.c: the one place that knows every path a run will write (merged model or its folder,
 * per-model masks, report) and checks them all before any work: a long merge must not end in
 * "cannot write the report", and no output may replace a file the run reads.
 *
 * Identity is by device and inode (stat follows symlinks, and a hard link shares the inode),
 * so another spelling of an input's path, a link to it, or the folder it lives in is caught.
 * Two outputs are the same when their folders resolve to one folder and their names agree, or
 * when both exist and are one file; an output inside another output's folder would be lost
 * when that folder is replaced.
 */
#include "outputs.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/status.h"
#include "writer.h"

fb_status fb_input_paths_add(fb_input_path **list, int *n, int64_t *cap, const char *path,
                             const char *kind, const char *name)
{
    for (int i = 0; i < *n; i++)
        if (!strcmp((*list)[i].path, path)) return FB_OK;
    if (fb_reserve(list, cap, *n + 1, sizeof **list)) return FB_ERR_NOMEM;
    char *p = fb_strdup(path);
    if (!p) return FB_ERR_NOMEM;
    (*list)[(*n)++] = (fb_input_path){p, kind, name};
    return FB_OK;
}

void fb_input_paths_free(fb_input_path *paths, int n)
{
    for (int i = 0; paths && i < n; i++)
        fb_free(paths[i].path);
    fb_free(paths);
}

/* The last component of path, without trailing slashes, into buf. */
static void base_name(const char *path, char *buf, size_t size)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    size_t len = n - b < size - 1 ? n - b : size - 1;
    memcpy(buf, path + b, len);
    buf[len] = '\0';
}

/* *out = "<resolved folder>/<name>" for an output path whose folder exists; else an error
 * naming the folder. */
static fb_status canonical_output(const fb_output_path *o, char **out)
{
    char resolved[PATH_MAX], name[NAME_MAX + 1];
    base_name(o->path, name, sizeof name);
    if (!name[0] || !strcmp(name, ".") || !strcmp(name, ".."))
        return fb_set_error(FB_ERR_ARG, "%s '%s' names no file", o->what, o->path);
    char *dir = fb_path_dirname(o->path);
    if (!dir) return FB_ERR_NOMEM;
    struct stat st;
    fb_status rc = FB_OK;
    if (stat(dir, &st) != 0)
        rc = fb_set_error(FB_ERR_IO, "%s %s: its folder %s %s", o->what, o->path, dir,
                          errno == ENOENT ? "does not exist" : strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        rc = fb_set_error(FB_ERR_IO, "%s %s: %s is not a folder", o->what, o->path, dir);
    else if (!realpath(dir, resolved))
        rc = fb_set_error(FB_ERR_IO, "%s %s: cannot resolve its folder %s: %s", o->what, o->path,
                          dir, strerror(errno));
    fb_free(dir);
    if (rc) return rc;
    size_t n = strlen(resolved) + strlen(name) + 2;
    if (!(*out = fb_malloc(n))) return FB_ERR_NOMEM;
    snprintf(*out, n, "%s%s%s", resolved, strcmp(resolved, "/") ? "/" : "", name);
    return FB_OK;
}

fb_status fb_outputs_check(const fb_output_path *outputs, int num_outputs,
                           const fb_input_path *inputs, int num_inputs)
{
    fb_status st = FB_OK;
    char **canon = fb_calloc((size_t)num_outputs + 1, sizeof *canon);
    if (!canon) return FB_ERR_NOMEM;
    for (int i = 0; i < num_outputs && !st; i++) {
        const fb_output_path *o = &outputs[i];
        if ((st = canonical_output(o, &canon[i]))) break;
        struct stat os;
        if (stat(o->path, &os) != 0) continue; /* a new file cannot be an input */
        for (int j = 0; j < num_inputs && !st; j++) {
            struct stat is;
            if (stat(inputs[j].path, &is) != 0) continue;
            if (is.st_dev == os.st_dev && is.st_ino == os.st_ino) {
                int alias = strcmp(o->path, inputs[j].path) != 0; /* a link or another spelling */
                st = fb_set_error(FB_ERR_ARG,
                                  "%s %s is the input file of %s '%s'%s%s%s; choose another path",
                                  o->what, o->path, inputs[j].kind, inputs[j].name,
                                  alias ? " (" : "", alias ? inputs[j].path : "", alias ? ")" : "");
                break;
            }
            char *dir = fb_path_dirname(inputs[j].path);
            if (!dir) {
                st = FB_ERR_NOMEM;
                break;
            }
            struct stat ds;
            int holds = S_ISDIR(os.st_mode) && stat(dir, &ds) == 0 && ds.st_dev == os.st_dev &&
                        ds.st_ino == os.st_ino;
            fb_free(dir);
            if (holds)
                st = fb_set_error(FB_ERR_ARG,
                                  "%s %s holds the input files of %s '%s' (%s); choose another "
                                  "path",
                                  o->what, o->path, inputs[j].kind, inputs[j].name, inputs[j].path);
        }
    }
    for (int i = 0; i < num_outputs && !st; i++) {
        for (int k = 0; k < num_outputs && !st; k++) {
            if (k == i) continue;
            size_t n = strlen(canon[i]);
            struct stat a, b;
            int same =
                k > i && (!strcmp(canon[i], canon[k]) ||
                          (stat(outputs[i].path, &a) == 0 && stat(outputs[k].path, &b) == 0 &&
                           a.st_dev == b.st_dev && a.st_ino == b.st_ino));
            if (same)
                st = fb_set_error(FB_ERR_ARG, "%s and %s are the same path (%s); give each its own",
                                  outputs[i].what, outputs[k].what, canon[i]);
            else if (!strncmp(canon[k], canon[i], n) && canon[k][n] == '/')
                st = fb_set_error(FB_ERR_ARG,
                                  "%s %s lies inside %s %s, which the run replaces; give it "
                                  "another folder",
                                  outputs[k].what, outputs[k].path, outputs[i].what,
                                  outputs[i].path);
        }
    }
    for (int i = 0; i < num_outputs; i++)
        fb_free(canon[i]);
    fb_free(canon);
    return st;
}
