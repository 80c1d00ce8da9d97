/*
 * bench/zoo_table.c: the benchmark table, FusionBench's flagship experiment on the zoo: every
 * method merges the zoo's fine-tuned models through the fusion_bench command, the taskpool
 * scores the result on every task, and the rows (pretrained, individual fine-tuned models,
 * then the methods) go to a markdown table, a JSON file and a PNG bar chart.
 *
 *     bench_zoo_table [--cli build/fusion_bench] [--zoo outputs/zoo/mixed8]
 *                     [--out outputs] [--methods a,b,c] [--jobs N]
 *
 * Rows run as separate fusion_bench processes, N at a time (default: one per CPU), each with
 * the CPUs over N threads (1 by default): the zoo's model is small, so two one-thread rows
 * finish sooner than two two-thread rows one after the other, and the numbers do not depend
 * on the thread count.
 * Every run's JSON report is kept under OUT/zoo_table/reports/ for inspection.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-braces"
#include <stb_easy_font.h>
#pragma GCC diagnostic pop
#include <stb_image_write.h>

#include "common.h"


/* The methods that merge a pool of fine-tuned models, each with FusionBench's defaults (left
 * out: the two-model methods linear_interpolation, expo and slerp, the one-model
 * magnitude_diff_pruning, and depth_upscaling and passthrough, which restructure layers).
 * "name:key=value[:key=value...]" passes parameters (SMILE gets FusionBench's B/32 choice,
 * k 32 and gate_k 16, since its default k 128 exceeds the zoo's width of 96): mergekit's
 * methods weigh every model 1 and scale the merged task vector by lambda, so they get
 * FusionBench's task-arithmetic scale, 0.3. AdaMerging runs 100 of its default 1000 steps
 * and the two Weight-Ensembling MoEs 50 (each step adapts on every task, and evaluation
 * routes every image by itself), to keep a second `make demo` within two minutes. */
static const char *default_methods =
    "simple_average,task_arithmetic,ties_merging,dare_task_arithmetic,dare_ties_merging,"
    "dare_simple_average,magmax,karcher,model_stock,consensus_task_arithmetic,tall_mask,"
    "breadcrumbs:lambda=0.3,breadcrumbs_ties:lambda=0.3,della:lambda=0.3,"
    "della_linear:lambda=0.3,task_singular_vector,iso_c,iso_cts,wudi,emr_merging,"
    "clip_task_wise_adamerging:max_steps=100,clip_layer_wise_adamerging:max_steps=100,"
    "fisher_merging,regmean,regmean_plusplus,simple_ensemble,smile_upscaling:k=32:gate_k=16,"
    "weight_ensembling_moe:max_steps=50,sparse_weight_ensembling_moe:max_steps=50";

enum { MAX_TASKS = 64, MAX_ROWS = 128 };

typedef struct row {
    char name[64];
    double acc[MAX_TASKS], avg, seconds;
    int ok;
} row;

static char tasks[MAX_TASKS][64];
static int num_tasks;
static char row_threads[16] = "1"; /* --threads of every row: the CPUs over the jobs */

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = n > 0 ? malloc((size_t)n + 1) : NULL;
    cJSON *j = NULL;
    if (text && fread(text, 1, (size_t)n, f) == (size_t)n) {
        text[n] = '\0';
        j = cJSON_Parse(text);
    }
    free(text);
    fclose(f);
    return j;
}

/* One fusion_bench run of the table: a row (or, for the individual models, one task of it). */
typedef struct job {
    char label[128];
    char *argv[40];
    char buf[8][4300]; /* the arguments' text */
    int row, task;     /* task >= 0: only that task's accuracy goes to the row */
    pid_t pid;
    double start;
} job;

/* Fills j's command: cli --threads T modelpool taskpool report extra... */
static void job_init(job *j, const char *cli, const char *zoo, const char *out, const char *label,
                     char **extra, int nextra, int row, int task)
{
    memset(j, 0, sizeof *j);
    snprintf(j->label, sizeof j->label, "%s", label);
    snprintf(j->buf[0], sizeof j->buf[0], "modelpool=%s/modelpool.yaml", zoo);
    snprintf(j->buf[1], sizeof j->buf[1], "taskpool=%s/taskpool.yaml", zoo);
    snprintf(j->buf[2], sizeof j->buf[2], "report_save_path=%s/zoo_table/reports/%s.json", out, label);
    int argc = 0;
    j->argv[argc++] = (char *)cli;
    j->argv[argc++] = "--threads";
    j->argv[argc++] = row_threads;
    for (int i = 0; i < 3; i++) j->argv[argc++] = j->buf[i];
    for (int i = 0; i < nextra && i < 5; i++) {
        snprintf(j->buf[3 + i], sizeof j->buf[0], "%s", extra[i]);
        j->argv[argc++] = j->buf[3 + i];
    }
    j->argv[argc] = NULL;
    j->row = row;
    j->task = task;
}

static pid_t job_start(job *j, const char *out)
{
    char log[4300];
    snprintf(log, sizeof log, "%s/zoo_table/reports/%s.log", out, j->label);
    unlink(j->buf[2] + strlen("report_save_path="));
    j->start = bench_now();
    if (bench_spawn_start(j->argv, log, &j->pid)) j->pid = -1;
    return j->pid;
}

/* Reads j's report into acc (the task's accuracy alone when j->task >= 0). Returns 0 on
 * success. */
static int job_finish(const job *j, int status, const char *out, double *acc)
{
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "zoo_table: %s failed (exit %d); see %s/zoo_table/reports/%s.log\n", j->label,
                WIFEXITED(status) ? WEXITSTATUS(status) : -1, out, j->label);
        return -1;
    }
    const char *rep = j->buf[2] + strlen("report_save_path=");
    cJSON *r = read_json(rep);
    cJSON *pool = r ? cJSON_GetObjectItem(r, "taskpool") : NULL;
    if (!pool) {
        cJSON_Delete(r);
        fprintf(stderr, "zoo_table: %s: no taskpool results in %s\n", j->label, rep);
        return -1;
    }
    for (cJSON *it = pool->child; it; it = it->next) {
        if (!strcmp(it->string, "average")) continue;
        int k = 0;
        while (k < num_tasks && strcmp(tasks[k], it->string)) k++;
        if (k == num_tasks && num_tasks < MAX_TASKS && j->task < 0)
            snprintf(tasks[num_tasks++], 64, "%s", it->string);
        cJSON *a = cJSON_GetObjectItem(it, "accuracy");
        if (k < num_tasks && cJSON_IsNumber(a) && (j->task < 0 || j->task == k)) acc[k] = a->valuedouble;
    }
    cJSON_Delete(r);
    return 0;
}

/* Runs jobs[0..n) at most `par` at a time; rows[] collect accuracies, seconds (summed over a
 * row's jobs) and failures; a row's line is printed when its last job ends. */
static int run_jobs(job *jobs, int n, int par, row *rows, const char *out)
{
    int next = 0, running = 0, failed = 0, left[MAX_ROWS] = {0};
    for (int i = 0; i < n; i++) left[jobs[i].row]++;
    while (next < n || running > 0) {
        while (next < n && running < par) {
            if (job_start(&jobs[next], out) < 0) {
                fprintf(stderr, "zoo_table: cannot start %s\n", jobs[next].argv[0]);
                rows[jobs[next].row].ok = 0;
                left[jobs[next].row]--;
                failed++;
            } else {
                running++;
            }
            next++;
        }
        if (!running) break;
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < next; i++) {
            if (jobs[i].pid != pid) continue;
            job *j = &jobs[i];
            j->pid = 0;
            running--;
            row *r = &rows[j->row];
            r->seconds += bench_now() - j->start;
            if (job_finish(j, status, out, r->acc)) {
                r->ok = 0;
                failed++;
            }
            if (--left[j->row] == 0) {
                printf("%-28s %s (%.1f s)\n", j->task >= 0 ? "individual" : j->label,
                       r->ok ? "done" : "FAILED", r->seconds);
                fflush(stdout);
            }
            break;
        }
    }
    return failed;
}

/* ------------------------------------------------------------------------ outputs -- */

static void write_markdown(const char *path, const row *rows, int n, const char *zoo)
{
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "Accuracy (%%) on each task's test split; zoo: %s.\n\n| Method |", zoo);
    for (int k = 0; k < num_tasks; k++) fprintf(f, " %s |", tasks[k]);
    fprintf(f, " Avg. |\n|---|");
    for (int k = 0; k <= num_tasks; k++) fprintf(f, "---:|");
    fputc('\n', f);
    for (int r = 0; r < n; r++) {
        if (!rows[r].ok) continue;
        fprintf(f, "| %s |", rows[r].name);
        for (int k = 0; k < num_tasks; k++) fprintf(f, " %.1f |", 100 * rows[r].acc[k]);
        fprintf(f, " **%.1f** |\n", 100 * rows[r].avg);
    }
    fclose(f);
}

static void write_json(const char *path, const row *rows, int n)
{
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "rows");
    cJSON *tk = cJSON_AddArrayToObject(root, "tasks");
    for (int k = 0; k < num_tasks; k++) cJSON_AddItemToArray(tk, cJSON_CreateString(tasks[k]));
    for (int r = 0; r < n; r++) {
        if (!rows[r].ok) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "method", rows[r].name);
        cJSON *a = cJSON_AddObjectToObject(o, "accuracy");
        for (int k = 0; k < num_tasks; k++) cJSON_AddNumberToObject(a, tasks[k], rows[r].acc[k]);
        cJSON_AddNumberToObject(o, "average", rows[r].avg);
        cJSON_AddNumberToObject(o, "seconds", rows[r].seconds);
        cJSON_AddItemToArray(arr, o);
    }
    char *text = cJSON_Print(root);
    FILE *f = fopen(path, "w");
    if (f && text) fprintf(f, "%s\n", text);
    if (f) fclose(f);
    free(text);
    cJSON_Delete(root);
}

/* A horizontal bar per row (average accuracy), labels drawn with stb_easy_font. */
static void fill(unsigned char *img, int W, int H, int x0, int y0, int x1, int y1,
                 const unsigned char c[3])
{
    for (int y = y0 < 0 ? 0 : y0; y < y1 && y < H; y++)
        for (int x = x0 < 0 ? 0 : x0; x < x1 && x < W; x++) memcpy(img + 3 * (y * W + x), c, 3);
}

static void text(unsigned char *img, int W, int H, int x, int y, const char *s, int scale,
                 const unsigned char c[3])
{
    static char buf[60000];
    int quads = stb_easy_font_print(0, 0, (char *)s, NULL, buf, sizeof buf);
    for (int q = 0; q < quads; q++) {
        const float *v = (const float *)(buf + q * 4 * 16); /* 4 vertices of x, y, z, rgba */
        float qx0 = v[0], qy0 = v[1], qx1 = v[8], qy1 = v[9];
        fill(img, W, H, x + (int)(qx0 * scale), y + (int)(qy0 * scale), x + (int)(qx1 * scale),
             y + (int)(qy1 * scale), c);
    }
}

static void write_png(const char *path, const row *rows, int n)
{
    const int W = 1100, bar_h = 22, top = 50, right = 80;
    int shown = 0, left = 100;
    for (int r = 0; r < n; r++) {
        shown += rows[r].ok;
        int w = 2 * stb_easy_font_width((char *)rows[r].name) + 30;
        if (rows[r].ok && w > left) left = w;
    }
    const int H = top + shown * bar_h + 40;
    unsigned char *img = malloc((size_t)(W * H * 3));
    if (!img) return;
    memset(img, 255, (size_t)(W * H * 3));
    const unsigned char black[3] = {20, 20, 20}, grey[3] = {200, 200, 200},
                        blue[3] = {66, 113, 180}, orange[3] = {230, 140, 40}, green[3] = {80, 160, 90};
    text(img, W, H, 10, 10, "Average accuracy over the zoo's tasks (%)", 2, black);
    const int span = W - left - right;
    for (int p = 0; p <= 100; p += 20) { /* grid */
        int x = left + span * p / 100;
        fill(img, W, H, x, top - 6, x + 1, H - 30, grey);
        char lab[8];
        snprintf(lab, sizeof lab, "%d", p);
        text(img, W, H, x - 6, H - 24, lab, 2, black);
    }
    int y = top;
    for (int r = 0; r < n; r++) {
        if (!rows[r].ok) continue;
        const unsigned char *c = r == 0 ? grey : r == 1 ? green : r < 5 ? orange : blue;
        text(img, W, H, 10, y + 4, rows[r].name, 2, black);
        fill(img, W, H, left, y + 3, left + (int)(span * rows[r].avg), y + bar_h - 3, c);
        char lab[16];
        snprintf(lab, sizeof lab, "%.1f", 100 * rows[r].avg);
        text(img, W, H, left + (int)(span * rows[r].avg) + 6, y + 4, lab, 2, black);
        y += bar_h;
    }
    stbi_write_png(path, W, H, 3, img, W * 3);
    free(img);
}

int main(int argc, char **argv)
{
    const char *cli = "build/fusion_bench", *zoo = "outputs/zoo/mixed8", *out = "outputs";
    const char *methods = default_methods;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int par = ncpu > 0 ? (int)ncpu : 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--cli")) cli = argv[i + 1];
        else if (!strcmp(argv[i], "--zoo")) zoo = argv[i + 1];
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--methods")) methods = argv[i + 1];
        else if (!strcmp(argv[i], "--jobs")) par = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench_zoo_table [--cli P] [--zoo DIR] [--out DIR] [--methods a,b] "
                            "[--jobs N]\n");
            return 2;
        }
    }
    if (par < 1) par = 1;
    snprintf(row_threads, sizeof row_threads, "%ld", ncpu > par ? ncpu / par : 1);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", out);
    mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/zoo_table", out);
    mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/zoo_table/reports", out);
    mkdir(dir, 0755);
    static row rows[MAX_ROWS];
    int n = 0, failed = 0;
    double t0 = bench_now();

    static job jobs[MAX_ROWS + MAX_TASKS];
    int nj = 0;
    /* pretrained (the backbone with each task's head) first, alone: its report names the tasks */
    char *pre[] = {"method=dummy"};
    snprintf(rows[n].name, sizeof rows[n].name, "Pretrained");
    rows[n].ok = 1;
    job_init(&jobs[nj++], cli, zoo, out, "pretrained", pre, 1, n, -1);
    run_jobs(jobs, nj, 1, rows, out);
    if (!rows[n].ok) return 1;
    n++;
    nj = 0;
    /* individual: each fine-tuned model on its own task */
    snprintf(rows[n].name, sizeof rows[n].name, "Individual (fine-tuned)");
    rows[n].ok = 1;
    for (int k = 0; k < num_tasks; k++) {
        char a[128], b[128], label[128];
        snprintf(a, sizeof a, "method.model_name=%s", tasks[k]);
        snprintf(b, sizeof b, "taskpool.evaluate=[%s]", tasks[k]);
        snprintf(label, sizeof label, "individual_%s", tasks[k]);
        char *extra[] = {"method=dummy", a, b};
        job_init(&jobs[nj++], cli, zoo, out, label, extra, 3, n, k);
    }
    n++;
    char *list = strdup(methods);
    for (char *m = strtok(list, ","); m && n < MAX_ROWS; m = strtok(NULL, ",")) {
        char arg[128], param[4][128], label[128] = "";
        char *extra[5] = {arg};
        int nextra = 1;
        char *colon = strchr(m, ':');
        if (colon) { /* name:key=value[:key=value...] */
            *colon = '\0';
            snprintf(label, sizeof label, " %s", colon + 1);
            for (char *kv = colon + 1; kv && *kv && nextra < 5;) {
                char *next = strchr(kv, ':');
                if (next) *next++ = '\0';
                snprintf(param[nextra - 1], sizeof param[0], "method.%s", kv);
                extra[nextra] = param[nextra - 1];
                nextra++;
                kv = next;
            }
        }
        snprintf(arg, sizeof arg, "method=%s", m);
        snprintf(rows[n].name, sizeof rows[n].name, "%s%s", m, label);
        rows[n].ok = 1;
        job_init(&jobs[nj++], cli, zoo, out, m, extra, nextra, n, -1);
        n++;
    }
    failed = run_jobs(jobs, nj, par, rows, out);
    free(list);
    for (int r = 0; r < n; r++) {
        rows[r].avg = 0;
        for (int k = 0; k < num_tasks; k++) rows[r].avg += rows[r].acc[k] / num_tasks;
    }
    char path[4300];
    snprintf(path, sizeof path, "%s/zoo_table.md", out);
    write_markdown(path, rows, n, zoo);
    snprintf(path, sizeof path, "%s/zoo_table.json", out);
    write_json(path, rows, n);
    snprintf(path, sizeof path, "%s/zoo_table.png", out);
    write_png(path, rows, n);
    /* the table on the terminal */
    printf("\naccuracy (%%) on the test split of each task:");
    for (int k = 0; k < num_tasks; k++) printf("%s T%d %s", k ? "," : "", k + 1, tasks[k]);
    printf("\n\n%-44s", "method");
    for (int k = 0; k < num_tasks; k++) printf("     T%d", k + 1);
    printf("    avg\n");
    for (int r = 0; r < n; r++) {
        if (!rows[r].ok) continue;
        printf("%-44.44s", rows[r].name);
        for (int k = 0; k < num_tasks; k++) printf(" %6.1f", 100 * rows[r].acc[k]);
        printf(" %6.1f\n", 100 * rows[r].avg);
    }
    printf("\nzoo_table: %d rows in %.1f s; %s/zoo_table.{md,json,png}\n", n, bench_now() - t0, out);
    return failed ? 1 : 0;
}
