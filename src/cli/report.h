/*
 * report.h: the JSON report of a fusion_bench run (config, models, timings, peak memory).
 */
#ifndef FB_CLI_REPORT_H
#define FB_CLI_REPORT_H

#include "config/config.h"
#include "method/method.h"
#include "pool/modelpool.h"
#include "pool/taskpool.h"

/* The slowest tensors of a run, kept for the report. */
#define FB_REPORT_SLOWEST 10
typedef struct fb_tensor_time {
    char name[200];
    double seconds;
} fb_tensor_time;

typedef struct fb_run_report {
    const fb_config *config;  /* the composed configuration, method parameters filled in */
    const fb_modelpool *pool;
    int pretrained_read; /* the method read _pretrained_ (else the report says it was not) */
    const char *method;
    const fb_pattern_use *patterns; /* the method's name patterns and what they matched */
    int num_patterns;
    const char *output_path;  /* NULL when the merge was not saved */
    const char *extras_path;  /* per-model masks and scalars, or NULL */
    const fb_model *extras;   /* the same, opened, for scalars to report; may be NULL */
    int64_t merged_tensors, merged_params;
    int64_t merged_float_params; /* parameters as FusionBench counts them (float tensors) */
    double load_seconds, merge_seconds, eval_seconds, total_seconds;
    const fb_task_result *results; /* the taskpool's evaluation, or NULL */
    int num_results;
    long peak_rss_bytes;
    /* /proc/self/io at the end: bytes through read/write calls, and those that reached or came
     * from storage (page-cache hits are not storage reads); -1 where not available */
    long long io_read, io_written, storage_read, storage_written;
    int threads;
    fb_tensor_time slowest[FB_REPORT_SLOWEST]; /* by decreasing time; seconds 0 = unused */
} fb_run_report;

/* Writes the report as JSON to path, atomically (temporary file, fsync, rename). */
fb_status fb_report_write(const fb_run_report *r, const char *path);

/* The same in FusionBench's schema (report_format=fusionbench): model_info, one {accuracy, loss}
 * per task, and average, so scripts that collect FusionBench's reports read it. */
fb_status fb_report_write_fusionbench(const fb_run_report *r, const char *path);

/* This process's peak resident memory (VmHWM; getrusage where /proc is missing). */
long fb_peak_rss_bytes(void);
/* r's io_* counters from /proc/self/io (-1 where not available). */
void fb_io_counters(fb_run_report *r);

#endif
