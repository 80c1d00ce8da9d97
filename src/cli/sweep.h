/*
 * sweep.h: fusion_bench -m (sweep.c): swept override values, and the summary of the runs.
 */
#ifndef FB_CLI_SWEEP_H
#define FB_CLI_SWEEP_H

#include "fusionbench.h"

/* An override swept over several values. */
typedef struct fb_sweep_param {
    char *key;
    char **values;
    int count;
} fb_sweep_param;

/* Hydra's sweep syntax in an override's value: "a,b,c" (commas outside brackets, braces,
 * parentheses and quotes) or range(start, stop[, step]) (stop excluded, as Python's). *count is
 * 1 (and *values the text) for a plain value. An empty item or a range with no value is an
 * error naming the key. Free with fb_sweep_values_free. */
fb_status fb_sweep_values(const char *key, const char *text, char ***values, int *count);
void fb_sweep_values_free(char **values, int count);

/* One run of a sweep: its values (one per param), exit status and average score. */
typedef struct fb_sweep_run {
    const char **values;
    int status;
    int scored;
    double accuracy, loss;
} fb_sweep_run;

/* summary.md, summary.json and summary.png (average accuracy against the first swept
 * parameter, a line per combination of the others) in dir; `selected` is the index of the run
 * chosen on the validation split (-1: none) with its test score in `test`. Prints the table. */
fb_status fb_sweep_summary(const char *dir, const fb_sweep_param *params, int num_params,
                           const fb_sweep_run *runs, int num_runs, int selected,
                           const fb_sweep_run *test);

#endif
