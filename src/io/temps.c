/*
 * temps.c: the temporary files and folders outputs are written to before they are renamed
 * into place, and what removes them when a run is interrupted.
 *
 * A temporary is named ".TARGET.tmp-PID-XXXXXX" beside its target. While it exists it is in a
 * fixed table that fb_remove_temporaries() walks with async-signal-safe calls only (unlink,
 * open, getdents64, unlinkat, rmdir), so a SIGINT or SIGTERM handler can remove what the run
 * was writing. A run that could not clean up (SIGKILL, power loss) leaves its temporaries
 * behind; the next output written into the same folder removes those whose PID no longer runs
 * (fb_temps_sweep), never a live process's.
 */
#include "temps.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "writer.h"

enum { MAX_TEMPS = 64 };

/* Slot i holds a path while kind[i] is FB_TEMP_FILE or FB_TEMP_FOLDER; the path is written
 * before the kind is published, and the kind cleared before the slot is reused. */
static char temp_path[MAX_TEMPS][PATH_MAX];
static volatile sig_atomic_t temp_kind[MAX_TEMPS];
static pthread_mutex_t temps_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

char *fb_temp_template(const char *target)
{
    char *dir = fb_path_dirname(target);
    if (!dir) return NULL;
    fb_buf b;
    fb_buf_init(&b);
    fb_buf_printf(&b, "%s/.%s.tmp-%ld-XXXXXX", dir, base_of(target), (long)getpid());
    fb_free(dir);
    if (b.failed) {
        fb_buf_free(&b);
        return NULL;
    }
    return b.data;
}

int fb_temp_register(const char *path, int kind)
{
    if (strlen(path) >= PATH_MAX) return -1;
    pthread_mutex_lock(&temps_lock);
    int slot = -1;
    for (int i = 0; i < MAX_TEMPS && slot < 0; i++)
        if (!temp_kind[i]) slot = i;
    if (slot >= 0) {
        strcpy(temp_path[slot], path);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        temp_kind[slot] = kind;
    }
    pthread_mutex_unlock(&temps_lock);
    return slot;
}

/*
 * A signal may be handled by any thread that does not block it (an OpenMP or OpenBLAS worker),
 * while the thread that writes the output goes on. So holding signals off in the writing
 * thread is not enough: the handler could walk the table between mkstemp and the recording,
 * or while a file is being created inside a temporary folder, and the process then die with
 * an unrecorded file on disk. Creations therefore announce themselves (`creating`), and the
 * handler first raises `dying`, then waits for announced creations to finish before it walks:
 * a creation that starts after `dying` is refused (EINTR); one that started before is recorded
 * (or inside a recorded folder) by the time the walk begins. Both flags are read after a full
 * fence, so at least one side sees the other.
 */
static volatile sig_atomic_t dying;
static int creating;

typedef struct {
    sigset_t old;
} creation;

static int creation_begin(creation *c)
{
    sigset_t hold;
    sigemptyset(&hold);
    sigaddset(&hold, SIGINT);
    sigaddset(&hold, SIGTERM);
    sigaddset(&hold, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &hold, &c->old);
    __atomic_add_fetch(&creating, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (dying) {
        __atomic_sub_fetch(&creating, 1, __ATOMIC_SEQ_CST);
        pthread_sigmask(SIG_SETMASK, &c->old, NULL);
        errno = EINTR;
        return -1;
    }
    return 0;
}

static void creation_end(creation *c)
{
    int e = errno;
    __atomic_sub_fetch(&creating, 1, __ATOMIC_SEQ_CST);
    pthread_sigmask(SIG_SETMASK, &c->old, NULL);
    errno = e;
}

int fb_temp_create(char *template_path, int kind, int *slot)
{
    creation c;
    *slot = -1;
    if (creation_begin(&c) < 0) return -1;
    int rc = kind == FB_TEMP_FILE ? mkstemp(template_path) : (mkdtemp(template_path) ? 0 : -1);
    if (rc >= 0) *slot = fb_temp_register(template_path, kind);
    creation_end(&c);
    return rc;
}

int fb_temp_open_inside(const char *path)
{
    creation c;
    if (creation_begin(&c) < 0) return -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    creation_end(&c);
    return fd;
}

void fb_temp_forget(int slot)
{
    if (slot < 0 || slot >= MAX_TEMPS) return;
    pthread_mutex_lock(&temps_lock);
    temp_kind[slot] = 0;
    pthread_mutex_unlock(&temps_lock);
}

/* Removes a folder's entries and the folder, with system calls a signal handler may make. */
static void remove_folder_raw(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[4096];
        for (;;) {
            long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
            if (n <= 0) break;
            for (long off = 0; off < n;) {
                /* struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name */
                unsigned short reclen;
                memcpy(&reclen, buf + off + 16, sizeof reclen);
                const char *name = buf + off + 19;
                if (strcmp(name, ".") && strcmp(name, "..")) unlinkat(fd, name, 0);
                off += reclen;
            }
        }
        close(fd);
    }
    rmdir(path);
}

void fb_remove_temporaries(void)
{
    dying = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    /* creations under way finish in microseconds; the bound only guards against a caller that
     * runs this while its own thread is inside one (signals are held off there, so not ours) */
    for (int waited = 0; __atomic_load_n(&creating, __ATOMIC_SEQ_CST) > 0 && waited < 20000;
         waited++) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < MAX_TEMPS; i++) {
        int kind = temp_kind[i];
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (kind == FB_TEMP_FILE)
            unlink(temp_path[i]);
        else if (kind == FB_TEMP_FOLDER)
            remove_folder_raw(temp_path[i]);
    }
}

void fb_temps_sweep(const char *target)
{
    char *dir = fb_path_dirname(target);
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d) {
        fb_free(dir);
        return;
    }
    char prefix[NAME_MAX + 16];
    snprintf(prefix, sizeof prefix, ".%s.tmp-", base_of(target));
    size_t plen = strlen(prefix);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, plen) != 0) continue;
        char *end;
        long pid = strtol(e->d_name + plen, &end, 10);
        if (end == e->d_name + plen || *end != '-' || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to know */
        char *p = fb_path_join(dir, e->d_name);
        struct stat st;
        if (p && lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode))
                remove_folder_raw(p);
            else if (S_ISREG(st.st_mode))
                unlink(p);
        }
        fb_free(p);
    }
    closedir(d);
    fb_free(dir);
}
