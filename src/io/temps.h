/*
 * temps.h: temporaries of outputs in progress, removable from a signal handler (temps.c).
 */
#ifndef FB_IO_TEMPS_H
#define FB_IO_TEMPS_H

#include "fusionbench.h"

enum { FB_TEMP_FILE = 1, FB_TEMP_FOLDER = 2 };

/* ".TARGET.tmp-PID-XXXXXX" beside target, a template for fb_temp_create; caller frees. */
char *fb_temp_template(const char *target);

/* Creates the temporary file (returns its fd) or folder (returns 0) named by template (its
 * XXXXXX replaced) and records it for fb_remove_temporaries, with the usual signals held off
 * in between so an interrupt cannot leave an unrecorded one, whichever thread handles it.
 * -1 with errno on failure (EINTR once fb_remove_temporaries has run).
 * *slot is what fb_temp_forget takes (-1 if the table was full: then only not removable by a
 * signal handler). */
int fb_temp_create(char *template_path, int kind, int *slot);

/* Creates the file `path` inside a temporary folder (O_CREAT|O_EXCL, 0644) so that a signal
 * handled now on another thread cannot miss it; its fd, or -1 with errno (EINTR once
 * fb_remove_temporaries has run: the process is ending). */
int fb_temp_open_inside(const char *path);

/* Records an existing temporary; returns its slot or -1. */
int fb_temp_register(const char *path, int kind);

/* The temporary of this slot is gone or has become the output. */
void fb_temp_forget(int slot);

/* Removes the temporaries that dead processes left beside target (".TARGET.tmp-PID-*" whose
 * PID does not run). Best effort: errors are ignored. */
void fb_temps_sweep(const char *target);

#endif
