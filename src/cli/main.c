/*
 * main.c: the fusion_bench command.
 *
 *     fusion_bench [--options] [group=name ...] [dotted.key=value ...]
 *
 * As FusionBench (Hydra): config/fusion_bench.yaml is the root; its `defaults` list picks an
 * option for each group (method, modelpool), `group=name` on the command line picks another
 * (config/<group>/<name>.yaml, or a path to a YAML file), and `dotted.key=value` overrides
 * any key after composition. Every key is then validated, the pool is opened, the method runs
 * and the merged model is streamed to merged_model_save_path.
 *
 * Exit status: 0 success, 1 the run failed, 2 bad command line or configuration.
 */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "core/alloc.h"
#include "core/status.h"
#include "io/companions.h"
#include "mergekit_cmd.h"
#include "io/outputs.h"
#include "io/writer.h"
#include "method/method.h"
#include "pool/clip_tasks.h"
#include "pool/modelpool.h"
#include "pool/taskpool.h"
#include "report.h"
#include "sweep.h"
#include "zoo.h"

static const char *const groups[] = {"method", "modelpool", "taskpool"};
enum { NUM_GROUPS = 3 };

/* Root keys the configuration may hold after composition. */
static const char *const root_keys[] = {
    "method", "modelpool", "taskpool", "merged_model_save_path", "merged_model_max_shard_size",
    "dtype", "report_save_path", "print_config", "page_cache", "nonfinite", "input_dtype",
    "tokenizer_source", "report_format", "path", "seed", "fast_dev_run", "dry_run",
    "print_function_call", "merged_model_save_kwargs", "_target_", "_recursive_", "hydra", "fabric",
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fusion_bench [options] [group=name ...] [key.path=value ...]\n"
            "\n"
            "Merges the models of a model pool with a fusion method, as FusionBench does.\n"
            "\n"
            "groups (config/<group>/<name>.yaml, or a path to a .yaml file):\n"
            "  method=NAME                 the fusion method (see --list-methods)\n"
            "  modelpool=NAME_OR_PATH      the models: {models: {_pretrained_: path, a: path}}\n"
            "  taskpool=NAME_OR_PATH       evaluate the merged model on these tasks (accuracy,\n"
            "                              loss); method=dummy evaluates a pool model as it is\n"
            "\n"
            "keys (Hydra syntax: numbers, true/false, null, strings, [lists]):\n"
            "  method.KEY=VALUE            a method parameter, e.g. method.scaling_factor=0.5\n"
            "  merged_model_save_path=P    write the merged model (P.safetensors, or a folder)\n"
            "  merged_model_max_shard_size=S  shard the output folder (bytes, or 5GB, 500MB)\n"
            "  dtype=D                     output dtype of float tensors (f32, f16, bf16, f64)\n"
            "  page_cache=auto|drop|keep   drop inputs/output from the page cache once merged\n"
            "                              (auto: when the inputs exceed 3/4 of memory)\n"
            "  input_dtype=f32             read float tensors as float32, so models may differ in\n"
            "                              float dtype (output f32 unless dtype= says otherwise)\n"
            "  nonfinite=error|propagate   NaN/Inf in an input or the merged model: stop (default)\n"
            "                              or merge them as they are\n"
            "  report_save_path=P          write a JSON report (config, models, timings, memory)\n"
            "  print_config=true           print the composed config, then run\n"
            "\n"
            "options:\n"
            "  --help                      this text\n"
            "  --list-methods              the methods and what they do\n"
            "  --print-config              print the composed config and exit\n"
            "  --threads N                 threads to use (results never depend on it)\n"
            "  --config-dir DIR            where fusion_bench.yaml and the groups live\n"
            "  --version                   the version, SIMD level (FB_SIMD) and BLAS kernels in use\n"
            "  -m, --multirun              a sweep: key=a,b,c or key=range(start,stop,step) values,\n"
            "                              every combination run, then a summary table\n"
            "  --sweep-dir DIR             where a sweep's runs go (outputs/multirun/<date>_<time>)\n"
            "  --select-on SPLIT           a sweep: score runs on this task-pool split (val) and\n"
            "                              run the best again on test\n"
            "\n"
            "example:\n"
            "  fusion_bench method=task_arithmetic method.scaling_factor=0.3 \\\n"
            "      modelpool=pool.yaml merged_model_save_path=merged.safetensors\n");
}

static int fail(int code, const char *what)
{
    fprintf(stderr, "fusion_bench: error: %s\n", what);
    return code;
}

/* The exit status for a failed step (docs/cli.md): 2 when what was asked for is wrong (the
 * command line or a config: a bad key, value or combination), 1 when the run failed on its
 * inputs or outputs (a file unreadable or malformed, models that disagree, a full disk). */
static int exit_code(fb_status st)
{
    return st == FB_ERR_CONFIG || st == FB_ERR_ARG || st == FB_ERR_UNSUPPORTED ? 2 : 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* --config-dir, else $FUSION_BENCH_CONFIG_DIR, else <exe>/../config (the source tree's, for
 * build/fusion_bench), else <exe>/../share/fusionbench/config (make install's). */
static char *find_config_dir(const char *given)
{
    if (given) return fb_strdup(given);
    const char *env = getenv("FUSION_BENCH_CONFIG_DIR");
    if (env && *env) return fb_strdup(env);
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *dir = fb_path_dirname(exe);
        const char *rel[] = {"../config", "../share/fusionbench/config"};
        for (int i = 0; dir && i < 2; i++) {
            char *cand = fb_path_join(dir, rel[i]);
            char *root = cand ? fb_path_join(cand, "fusion_bench.yaml") : NULL;
            int ok = root && file_exists(root);
            fb_free(root);
            if (ok) {
                fb_free(dir);
                return cand;
            }
            fb_free(cand);
        }
        fb_free(dir);
    }
#ifdef FB_CONFIG_DIR
    return fb_strdup(FB_CONFIG_DIR);
#else
    return fb_strdup("config");
#endif
}

static int is_group(const char *key)
{
    for (int g = 0; g < NUM_GROUPS; g++)
        if (strcmp(groups[g], key) == 0) return g;
    return -1;
}

/* Loads a group option: a YAML path as given, or <config_dir>/<group>/<name>.yaml. */
static fb_status load_group(const char *config_dir, const char *group, const char *name,
                            fb_config **out)
{
    size_t n = strlen(name);
    int looks_like_path = strchr(name, '/') || (n > 5 && strcmp(name + n - 5, ".yaml") == 0) ||
                          (n > 4 && strcmp(name + n - 4, ".yml") == 0);
    if (looks_like_path && file_exists(name)) return fb_config_load(name, out);
    char rel[PATH_MAX];
    int has_ext = n > 5 && strcmp(name + n - 5, ".yaml") == 0;
    snprintf(rel, sizeof rel, "%s/%s/%s%s", config_dir, group, name, has_ext ? "" : ".yaml");
    if (!file_exists(rel) && strcmp(group, "method") == 0 && !looks_like_path) {
        /* every registered method works without a file: its declared defaults */
        if (!fb_method_lookup(name)) return fb_method_unknown(name);
        fb_config *node, *v;
        fb_status st = fb_cfg_new(FB_CFG_MAP, NULL, &node);
        if (!st && !(st = fb_cfg_new(FB_CFG_SCALAR, name, &v))) st = fb_cfg_map_set(node, "name", v);
        if (st) {
            fb_config_free(node);
            return st;
        }
        *out = node;
        return FB_OK;
    }
    if (!file_exists(rel))
        return fb_set_error(FB_ERR_NOT_FOUND,
                            "%s=%s: no such config (looked for %s%s)", group, name, rel,
                            looks_like_path ? " and the path as given" : "");
    return fb_config_load(rel, out);
}

/* Reads the root's `defaults` list into selections and removes it from the tree. */
static fb_status read_defaults(fb_config *root, const char **selection)
{
    const fb_config *defs = fb_cfg_map_get(root, "defaults");
    if (!defs) return FB_OK;
    if (defs->kind != FB_CFG_SEQ)
        return fb_set_error(FB_ERR_CONFIG, "%s: 'defaults' must be a list", fb_cfg_where(defs));
    for (int i = 0; i < defs->count; i++) {
        const fb_config *d = defs->items[i];
        if (d->kind == FB_CFG_SCALAR && strcmp(d->value, "_self_") == 0) continue;
        if (d->kind != FB_CFG_MAP || d->count != 1 || is_group(d->keys[0]) < 0)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: a defaults entry must be 'group: option' with group one "
                                "of method, modelpool, taskpool",
                                fb_cfg_where(d));
        const fb_config *v = d->items[0];
        selection[is_group(d->keys[0])] = fb_cfg_is_null(v) ? NULL : v->value;
    }
    return FB_OK;
}

/* "5GB", "500MB", "1GiB" or a byte count, read as transformers' convert_file_size_to_int
 * reads them: units in any case (GB = 10^9, GiB = 2^30), and a decimal unit ending in a lower
 * case b counts bits ("5Gb" and "5gb" are 625,000,000 bytes). */
static fb_status parse_size(const fb_config *n, size_t *out)
{
    const char *s;
    fb_status st = fb_cfg_string(n, "merged_model_max_shard_size", &s);
    if (st) return st;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    static const struct {
        const char *unit;
        double scale;
    } units[] = {{"", 1},       {"B", 1},         {"KB", 1e3},         {"MB", 1e6},
                 {"GB", 1e9},   {"TB", 1e12},     {"KiB", 1024.0},     {"MiB", 1048576.0},
                 {"GiB", 1073741824.0}};
    if (end != s && v > 0 && errno == 0) {
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            if (strcasecmp(end, units[i].unit) == 0) {
                size_t n = strlen(end);
                int bits = n == 2 && end[1] == 'b' && units[i].scale > 1;
                *out = (size_t)(v * units[i].scale / (bits ? 8 : 1));
                return FB_OK;
            }
        }
    }
    return fb_set_error(FB_ERR_CONFIG,
                        "merged_model_max_shard_size: '%s' is not a size (e.g. 5GB, 500MB, "
                        "1073741824)",
                        s);
}

/* A sweep's runs share what they can: the last model pool and task pool loaded, kept while the
 * next run's composed pool configuration is the same (open files, loaded data, heads). */
typedef struct sweep_cache {
    char *pool_key, *taskpool_key; /* the pools' composed YAML */
    fb_modelpool *pool;
    fb_taskpool *taskpool;
} sweep_cache;

static void sweep_cache_free(sweep_cache *k)
{
    free(k->pool_key);
    free(k->taskpool_key);
    fb_modelpool_free(k->pool);
    fb_taskpool_free(k->taskpool);
    memset(k, 0, sizeof *k);
}

typedef struct cli {
    sweep_cache *cache; /* -m: pools borrowed from here, not owned */
    const char *config_dir_opt;
    int print_config_only, threads;
    char incomplete[FB_ERROR_MAX]; /* --print-config: why the composed config would not run */
    char command[4096];            /* the command line, for the model card */
    fb_config *root;
    fb_method *method;
    fb_modelpool *pool;
    fb_taskpool *taskpool;
} cli;

/* Builds and validates the configuration from the arguments; exit code or 0. */
static int compose(cli *c, int argc, char **argv)
{
    const char *selection[NUM_GROUPS] = {NULL, NULL, NULL};
    char *config_dir = find_config_dir(c->config_dir_opt);
    char *root_path = config_dir ? fb_path_join(config_dir, "fusion_bench.yaml") : NULL;
    int rc = 0;
    if (!root_path) {
        rc = fail(1, "out of memory");
        goto done;
    }
    if (fb_config_load(root_path, &c->root) || read_defaults(c->root, selection)) {
        rc = fail(2, fb_last_error());
        goto done;
    }
    /* group selections first, as Hydra does, whatever their place on the line */
    for (int i = 0; i < argc; i++) {
        char *a = argv[i] + (argv[i][0] == '+') + (argv[i][0] == '+' && argv[i][1] == '+');
        char *eq = strchr(a, '=');
        if (!eq || argv[i][0] == '~') continue;
        *eq = '\0';
        int g = is_group(a);
        *eq = '=';
        if (g < 0) continue;
        selection[g] = eq + 1;
    }
    for (int g = 0; g < NUM_GROUPS; g++) {
        fb_config *node = NULL;
        fb_status st = FB_OK;
        const char *sel = selection[g];
        if (sel && *sel && strcmp(sel, "null") != 0) st = load_group(config_dir, groups[g], sel, &node);
        else st = fb_cfg_new(FB_CFG_NULL, NULL, &node);
        /* FusionBench's CLIP task pools read their class names and templates from
         * config/clip_tasks unless the file says where */
        if (!st && !strcmp(groups[g], "taskpool") && config_dir &&
            fb_clip_tasks_is_fusionbench(node) && !fb_cfg_map_get(node, "clip_tasks")) {
            char *dir = fb_path_join(config_dir, "clip_tasks");
            fb_config *v = NULL;
            st = dir ? fb_cfg_new(FB_CFG_SCALAR, dir, &v) : FB_ERR_NOMEM;
            if (!st) v->quoted = 1, st = fb_cfg_map_set(node, "clip_tasks", v);
            fb_free(dir);
        }
        if (!st) st = fb_cfg_map_set(c->root, groups[g], node);
        if (st) {
            rc = fail(2, fb_last_error());
            goto done;
        }
    }
    /* only now: the default selections point into this node */
    fb_cfg_map_remove(c->root, "defaults");
    for (int i = 0; i < argc; i++) {
        /* Hydra's forms: key=value sets, +key=value adds (the key must be new), ++key=value
         * adds or sets, ~key (or ~key=value) deletes */
        const char *a = argv[i];
        int add = 0, force = 0, del = 0;
        if (!strncmp(a, "++", 2)) force = 1, a += 2;
        else if (*a == '+') add = 1, a += 1;
        else if (*a == '~') del = 1, a += 1;
        char *eq = strchr(a, '=');
        if ((!eq && !del) || eq == a || !*a) {
            char msg[512];
            snprintf(msg, sizeof msg, "'%s' is not an override (expected key=value, +key=value, "
                                      "++key=value or ~key; see --help)",
                     argv[i]);
            rc = fail(2, msg);
            goto done;
        }
        char key[512];
        snprintf(key, sizeof key, "%.*s", (int)(eq ? (size_t)(eq - a) : strlen(a)), a);
        int g = is_group(key);
        fb_config *parent = c->root, *found = NULL;
        char *leaf = key;
        for (char *dot; (dot = strchr(leaf, '.')) && parent; leaf = dot + 1) {
            *dot = '\0';
            parent = fb_cfg_map_get(parent, leaf);
            parent = parent && parent->kind == FB_CFG_MAP ? parent : NULL;
            *dot = '.';
        }
        found = parent ? fb_cfg_map_get(parent, leaf) : NULL;
        fb_status st = FB_OK;
        if (del) {
            if (!found) st = fb_set_error(FB_ERR_CONFIG, "~%s: there is no such key to delete", key);
            else if (eq && (found->kind != FB_CFG_SCALAR || strcmp(found->value, eq + 1)))
                st = fb_set_error(FB_ERR_CONFIG, "~%s=%s: the key's value is not %s", key, eq + 1,
                                  eq + 1);
            else fb_cfg_map_remove(parent, leaf);
        } else if (add && found && !fb_cfg_is_null(found) && g < 0) {
            st = fb_set_error(FB_ERR_CONFIG, "+%s: the key is already in the config (++%s= sets "
                                             "it either way)",
                              key, key);
        } else if (g < 0) {
            (void)force;
            st = fb_cfg_override(c->root, key, eq + 1);
        }
        if (st) {
            rc = fail(2, fb_last_error());
            goto done;
        }
    }
    /* ${...} interpolation, once everything is composed */
    if (fb_cfg_resolve(c->root)) {
        rc = fail(2, fb_last_error());
        goto done;
    }
    for (int i = 0; i < c->root->count; i++) {
        int known = 0;
        for (size_t k = 0; k < sizeof root_keys / sizeof root_keys[0]; k++)
            known |= strcmp(c->root->keys[i], root_keys[k]) == 0;
        if (!known) {
            char msg[1024], list[512] = "";
            for (size_t k = 0; k < sizeof root_keys / sizeof root_keys[0]; k++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "",
                         root_keys[k]);
            snprintf(msg, sizeof msg, "unknown config key '%s' (known: %s)", c->root->keys[i], list);
            rc = fail(2, msg);
            goto done;
        }
    }
    /* the method, with its parameters checked and defaults filled in */
    const fb_config *mnode = fb_cfg_map_get(c->root, "method");
    if (fb_cfg_is_null(mnode)) {
        rc = fail(2, "no method selected (method=NAME; see --list-methods)");
        goto done;
    }
    if (!fb_method_create_from_config(mnode, &c->method) && c->method->ignored[0])
        fprintf(stderr, "fusion_bench: note: method keys ignored, as they only steer PyTorch: %s\n",
                c->method->ignored);
    if (!c->method) {
        if (c->print_config_only) { /* show what was composed, and why it would not run */
            snprintf(c->incomplete, sizeof c->incomplete, "%s", fb_last_error());
            goto done;
        }
        rc = fail(2, fb_last_error());
        goto done;
    }
    /* the composed method node becomes {name, every parameter with defaults filled in} */
    fb_config *named = NULL, *nm = NULL;
    const fb_config *params = fb_method_params(c->method);
    fb_status st = fb_cfg_new(FB_CFG_MAP, NULL, &named);
    if (!st && !(st = fb_cfg_new(FB_CFG_SCALAR, fb_method_name(c->method), &nm)))
        st = fb_cfg_map_set(named, "name", nm);
    for (int i = 0; !st && i < params->count; i++) {
        fb_config *cp;
        if (!(st = fb_cfg_copy(params->items[i], &cp))) st = fb_cfg_map_set(named, params->keys[i], cp);
    }
    if (!st) st = fb_cfg_map_set(c->root, "method", named);
    else fb_config_free(named);
    if (st) rc = fail(1, fb_last_error());
done:
    fb_free(config_dir);
    fb_free(root_path);
    return rc;
}

static void print_config(const fb_config *root)
{
    char *y = fb_config_to_yaml(root);
    if (y) fputs(y, stdout);
    free(y);
    fflush(stdout);
}

static int list_methods(void)
{
    for (int i = 0; i < fb_method_registry_count(); i++)
        printf("%-22s %s\n", fb_method_registry_name(i), fb_method_registry_summary(i));
    return 0;
}

static const char *optional_string(const fb_config *root, const char *key, int *rc)
{
    const fb_config *n = fb_cfg_map_get(root, key);
    const char *s = NULL;
    if (fb_cfg_is_null(n)) return NULL;
    if (fb_cfg_string(n, key, &s)) *rc = fail(2, fb_last_error());
    return s;
}

/* Per-tensor progress: a status line on a terminal, and the slowest tensors for the report. */
typedef struct progress {
    int tty;
    double last_print, last_loss;
    int64_t steps;
    fb_tensor_time slowest[FB_REPORT_SLOWEST];
} progress;

static void on_tensor(void *user, const char *name, int64_t index, int64_t count, double seconds)
{
    progress *p = user;
    for (int i = 0; i < FB_REPORT_SLOWEST; i++) {
        if (seconds <= p->slowest[i].seconds) continue;
        memmove(&p->slowest[i + 1], &p->slowest[i],
                (size_t)(FB_REPORT_SLOWEST - 1 - i) * sizeof p->slowest[0]);
        snprintf(p->slowest[i].name, sizeof p->slowest[i].name, "%s", name);
        p->slowest[i].seconds = seconds;
        break;
    }
    if (!p->tty) return;
    double t = now();
    if (t - p->last_print < 0.2 && index + 1 < count) return;
    p->last_print = t;
    fprintf(stderr, "\r\033[K[%lld/%lld] %.60s", (long long)index + 1, (long long)count, name);
    if (index + 1 == count) fputc('\n', stderr);
    fflush(stderr);
}

/* Evaluation progress on a terminal: task, examples done. */
typedef struct eval_progress {
    int tty, num_tasks;
    const fb_taskpool *tp;
    double last_print;
} eval_progress;

static void on_eval(void *user, int task, int64_t done, int64_t total)
{
    eval_progress *p = user;
    if (!p->tty) return;
    double t = now();
    if (t - p->last_print < 0.2 && !(done == total && task + 1 == p->num_tasks)) return;
    p->last_print = t;
    fprintf(stderr, "\r\033[Kevaluating [%d/%d] %s: %lld/%lld", task + 1, p->num_tasks,
            p->tp->set.tasks[task].name, (long long)done, (long long)total);
    if (done == total && task + 1 == p->num_tasks) fputs("\r\033[K", stderr);
    fflush(stderr);
}

/* Saves the merged model (and per-model extras beside it) after an in-memory merge; a folder
 * gets the same companions as a streamed merge's (config, tokenizer, model card). */
static fb_status save_in_memory(const cli *c, const fb_run_options *ro, const fb_model *merged,
                                const fb_model *extras, const char *path, const fb_save_options *so)
{
    fb_companions comp = {0};
    fb_save_options with_files = *so;
    size_t n = strlen(path);
    fb_status st = FB_OK;
    if (!(n >= 12 && !strcmp(path + n - 12, ".safetensors")) &&
        !(st = fb_method_output_companions(c->method, c->pool, ro, merged, path, &comp))) {
        with_files.files = comp.files;
        with_files.num_files = comp.count;
    }
    if (!st) st = fb_model_save(merged, path, &with_files);
    fb_companions_free(&comp);
    if (st || !extras) return st;
    char *xpath = fb_extras_path(path);
    st = xpath ? fb_model_save(extras, xpath, NULL) : FB_ERR_NOMEM;
    fb_free(xpath);
    return st;
}

/* Progress of a data-driven method: a status line on a terminal, the last loss kept. */
static void on_step(void *user, const char *what, int64_t step, int64_t steps, double loss)
{
    progress *p = user;
    p->last_loss = loss;
    p->steps = step + 1;
    if (!p->tty) return;
    double t = now();
    if (t - p->last_print < 0.2 && step + 1 < steps) return;
    p->last_print = t;
    fprintf(stderr, "\r\033[K%s: step %lld/%lld", what, (long long)step + 1, (long long)steps);
    if (!isnan(loss)) fprintf(stderr, ", loss %.5f", loss);
    if (step + 1 == steps) fputc('\n', stderr);
    fflush(stderr);
}

/* The files a config tree was read from, and under `taskpool`, every path value that names an
 * existing file (data sets, heads, model config): inputs no output may replace. */
static fb_status config_inputs(const fb_config *n, int depth, int in_taskpool,
                               fb_input_path **list, int *count, int64_t *cap)
{
    fb_status st = FB_OK;
    if (n->origin) st = fb_input_paths_add(list, count, cap, n->origin, "config file", n->origin);
    if (!st && in_taskpool && n->kind == FB_CFG_SCALAR && n->value) {
        char *p = NULL;
        struct stat sb;
        st = fb_cfg_path(n, "path", &p);
        if (!st && stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
            st = fb_input_paths_add(list, count, cap, p, "task pool file", n->value);
        if (st == FB_ERR_CONFIG) st = FB_OK; /* not a string: not a path */
        fb_free(p);
    }
    for (int i = 0; !st && i < n->count; i++) {
        int tp = in_taskpool || (depth == 0 && n->keys && !strcmp(n->keys[i], "taskpool"));
        st = config_inputs(n->items[i], depth + 1, tp, list, count, cap);
    }
    return st;
}

/* Every path this run writes, checked against every file it reads and each other, before any
 * work (a long merge must not end in "cannot write the report"). */
static fb_status check_outputs(const cli *c, const char *out_path, const char *report_path)
{
    fb_input_path *inputs = NULL;
    int n = 0;
    int64_t cap = 0;
    fb_status st = fb_modelpool_input_files(c->pool, &inputs, &n);
    cap = n;
    if (!st) st = config_inputs(c->root, 0, 0, &inputs, &n, &cap);
    char *xpath = NULL;
    fb_output_path outs[5];
    int k = 0;
    if (!st && out_path) {
        outs[k++] = (fb_output_path){out_path, "merged_model_save_path"};
        if (c->method->ops->model_masks || c->method->ops->model_scalars) {
            if (!(xpath = fb_extras_path(out_path))) st = FB_ERR_NOMEM;
            else outs[k++] = (fb_output_path){xpath, "the masks file"};
        }
    }
    if (report_path) outs[k++] = (fb_output_path){report_path, "report_save_path"};
    if (!st) st = fb_method_files(c->method, outs, &k, &inputs, &n, &cap);
    if (!st) st = fb_outputs_check(outs, k, inputs, n);
    fb_free(xpath);
    fb_input_paths_free(inputs, n);
    return st;
}

/* Elements of the model's float tensors: parameters as FusionBench counts them. */
static int64_t float_params(const fb_model *m)
{
    int64_t n = 0;
    for (int64_t i = 0; m && i < fb_model_num_tensors(m); i++) {
        const fb_tensor *t = fb_model_tensor(m, i);
        if (fb_dtype_is_float(fb_tensor_dtype(t))) n += fb_tensor_numel(t);
    }
    return n;
}

static int run(cli *c)
{
    int rc = 0;
    double t0 = now();
    const fb_config *root = c->root;
    const char *out_path = optional_string(root, "merged_model_save_path", &rc);
    const char *report_path = optional_string(root, "report_save_path", &rc);
    /* FusionBench's program keys: what would change the result and is not done here is an
     * error; "{log_dir}" in the report path is FusionBench's str.format with path.log_dir */
    int flag = 0;
    const char *target = optional_string(root, "_target_", &rc);
    if (!rc && target && !strstr(target, "FabricModelFusionProgram") && !strstr(target, "ModelFusionProgram"))
        return fail(2, "'_target_' names a program other than FusionBench's model fusion program");
    const fb_config *fdr = fb_cfg_map_get(root, "fast_dev_run");
    if (!fb_cfg_is_null(fdr) && (fb_cfg_bool(fdr, "fast_dev_run", &flag) || flag))
        return fail(2, "'fast_dev_run: true' (one batch instead of the data) is not done here");
    if (!fb_cfg_is_null(fb_cfg_map_get(root, "merged_model_save_kwargs")))
        return fail(2, "'merged_model_save_kwargs' is not done here (merged_model_max_shard_size "
                       "and dtype say how the model is saved)");
    int dry_run = 0;
    const fb_config *dr = fb_cfg_map_get(root, "dry_run");
    if (!fb_cfg_is_null(dr) && fb_cfg_bool(dr, "dry_run", &dry_run)) return fail(2, fb_last_error());
    char report_buf[4096];
    const fb_config *logdir = fb_cfg_map_get(fb_cfg_map_get(root, "path"), "log_dir");
    const char *brace = report_path ? strstr(report_path, "{log_dir}") : NULL;
    if (brace) {
        if (!logdir || logdir->kind != FB_CFG_SCALAR)
            return fail(2, "report_save_path uses {log_dir}, but path.log_dir is not set");
        snprintf(report_buf, sizeof report_buf, "%.*s%s%s", (int)(brace - report_path), report_path,
                 logdir->value, brace + 9);
        report_path = report_buf;
    }
    const char *dtype_name = optional_string(root, "dtype", &rc);
    const char *cache = optional_string(root, "page_cache", &rc);
    const char *nonfinite = optional_string(root, "nonfinite", &rc);
    const char *input_dtype = optional_string(root, "input_dtype", &rc);
    const char *tokenizer_source = optional_string(root, "tokenizer_source", &rc);
    const char *report_format = optional_string(root, "report_format", &rc);
    int fusionbench_report = report_format && !strcmp(report_format, "fusionbench");
    if (report_format && !fusionbench_report && strcmp(report_format, "fusionbench_c"))
        return fail(2, "'report_format' must be fusionbench_c (this project's report) or "
                       "fusionbench (FusionBench's schema)");
    if (rc) return rc;
    progress prog = {.tty = isatty(2)};
    fb_run_options ro = {.on_tensor = on_tensor, .on_step = on_step, .user = &prog,
                         .tokenizer_source = tokenizer_source, .command = c->command};
    if (dtype_name) {
        if (fb_dtype_from_name(dtype_name, &ro.out_dtype)) return fail(2, fb_last_error());
        if (ro.out_dtype != FB_F32 && ro.out_dtype != FB_F16 && ro.out_dtype != FB_BF16 &&
            ro.out_dtype != FB_F64)
            return fail(2, "'dtype' must be a float dtype the merge can write: f32, f16, bf16 or "
                           "f64");
        ro.out_dtype_set = 1;
    }
    if (cache) {
        if (!strcmp(cache, "auto")) ro.page_cache = FB_PAGE_CACHE_AUTO;
        else if (!strcmp(cache, "drop")) ro.page_cache = FB_PAGE_CACHE_DROP;
        else if (!strcmp(cache, "keep")) ro.page_cache = FB_PAGE_CACHE_KEEP;
        else {
            fb_set_error(FB_ERR_ARG, "'page_cache' is '%s'; it must be auto, drop or keep", cache);
            return fail(2, fb_last_error());
        }
    }
    if (input_dtype) {
        if (strcasecmp(input_dtype, "f32") && strcasecmp(input_dtype, "float32"))
            return fail(2, "'input_dtype' can only be f32 (every float tensor read as float32)");
        ro.inputs_as_f32 = 1;
    }
    if (nonfinite) {
        if (!strcmp(nonfinite, "error")) ro.nonfinite = FB_NONFINITE_ERROR;
        else if (!strcmp(nonfinite, "propagate")) ro.nonfinite = FB_NONFINITE_PROPAGATE;
        else return fail(2, "'nonfinite' must be error or propagate");
    }
    fb_save_options so = {0};
    const fb_config *shard = fb_cfg_map_get(root, "merged_model_max_shard_size");
    if (!fb_cfg_is_null(shard) && parse_size(shard, &so.max_shard_bytes))
        return fail(2, fb_last_error());
    int show = 0;
    const fb_config *pc = fb_cfg_map_get(root, "print_config");
    if (!fb_cfg_is_null(pc) && fb_cfg_bool(pc, "print_config", &show)) return fail(2, fb_last_error());
    if (show) print_config(root);

    const fb_config *pnode = fb_cfg_map_get(root, "modelpool");
    if (fb_cfg_is_null(pnode))
        return fail(2, "no model pool selected (modelpool=NAME_OR_PATH; see --help)");
    const fb_config *tnode = fb_cfg_map_get(root, "taskpool");
    if (c->cache) { /* a sweep: reuse the pools when their configuration is the same */
        char *pkey = fb_cfg_to_yaml(pnode), *tkey = fb_cfg_is_null(tnode) ? NULL : fb_cfg_to_yaml(tnode);
        if (!pkey || (!fb_cfg_is_null(tnode) && !tkey)) {
            free(pkey);
            free(tkey);
            return fail(1, "out of memory");
        }
        if (!c->cache->pool || strcmp(pkey, c->cache->pool_key)) {
            fb_modelpool_free(c->cache->pool);
            free(c->cache->pool_key);
            c->cache->pool = NULL;
            c->cache->pool_key = pkey;
            fb_status pst = fb_modelpool_from_config(pnode, &c->cache->pool);
            if (pst) {
                free(tkey);
                return fail(exit_code(pst), fb_last_error());
            }
        } else {
            free(pkey);
        }
        if (tkey && (!c->cache->taskpool || strcmp(tkey, c->cache->taskpool_key))) {
            fb_taskpool_free(c->cache->taskpool);
            free(c->cache->taskpool_key);
            c->cache->taskpool = NULL;
            c->cache->taskpool_key = tkey;
            fb_status e = fb_taskpool_open(tnode, &c->cache->taskpool);
            if (e) return fail(exit_code(e), fb_last_error());
        } else {
            free(tkey);
        }
        c->pool = c->cache->pool;
        c->taskpool = fb_cfg_is_null(tnode) ? NULL : c->cache->taskpool;
    } else {
        fb_status pst = fb_modelpool_from_config(pnode, &c->pool);
        if (pst) return fail(exit_code(pst), fb_last_error());
        if (!fb_cfg_is_null(tnode)) {
            fb_status e = fb_taskpool_open(tnode, &c->taskpool);
            if (e) return fail(exit_code(e), fb_last_error());
        }
    }
    ro.taskpool = c->taskpool;
    if (check_outputs(c, out_path, report_path)) return fail(2, fb_last_error());
    if (dry_run) { /* FusionBench's dry_run: everything composed and checked, nothing run */
        printf("fusion_bench: dry run: the configuration, the model pool%s and every output path "
               "are checked; nothing was merged\n",
               c->taskpool ? ", the task pool" : "");
        return 0;
    }
    double t1 = now();

    /* With a taskpool the merged model stays in memory for evaluation; else it streams. */
    fb_model *merged = NULL, *mem_extras = NULL;
    fb_status st;
    const fb_method_ops *ops = c->method->ops;
    if (ops->ensemble && (!c->taskpool || out_path))
        return fail(2, !c->taskpool ? "an ensemble is not one model: evaluate it with a taskpool "
                                      "(taskpool=NAME_OR_PATH)"
                                    : "an ensemble has no merged model to save "
                                      "(drop merged_model_save_path)");
    if (ops->ensemble) {
        st = FB_OK; /* nothing to merge: the task pool evaluates the models together */
    } else if (c->taskpool) {
        st = fb_method_run_extras(c->method, c->pool, &ro, &merged, &mem_extras);
        if (!st && out_path) st = save_in_memory(c, &ro, merged, mem_extras, out_path, &so);
    } else {
        st = fb_method_run_to_file(c->method, c->pool, &ro, out_path, &so);
    }
    double t2 = now();
    fb_task_result *results = NULL;
    if (!st && c->taskpool) {
        results = fb_calloc((size_t)c->taskpool->set.num_tasks + 1, sizeof *results);
        eval_progress ep = {.tty = isatty(2), .num_tasks = c->taskpool->set.num_tasks, .tp = c->taskpool};
        /* tall_mask, emr_merging: each task is scored with the model rebuilt for it */
        const int nt = c->taskpool->set.num_tasks;
        fb_model **per_task = mem_extras ? fb_calloc((size_t)nt, sizeof *per_task) : NULL;
        const fb_model *base = fb_modelpool_get(c->pool, "_pretrained_");
        if (!results || (mem_extras && !per_task)) st = FB_ERR_NOMEM;
        for (int i = 0; !st && per_task && base && i < nt; i++)
            st = fb_task_model_from_extras(merged, base, mem_extras, c->taskpool->set.tasks[i].name,
                                           &per_task[i]);
        if (!st && ops->ensemble) {
            const int K = fb_modelpool_num_models(c->pool);
            const fb_model **models = fb_malloc((size_t)K * sizeof *models);
            double *w = fb_malloc((size_t)K * sizeof *w);
            st = models && w ? ops->ensemble_weights(c->method->state, K, w) : FB_ERR_NOMEM;
            for (int k = 0; !st && k < K; k++)
                models[k] = fb_modelpool_get(c->pool, fb_modelpool_model_name(c->pool, k));
            if (!st)
                st = fb_taskpool_evaluate_ensemble(c->taskpool, models, K, w, ops->ensemble == 2,
                                                   fb_modelpool_get(c->pool, "_pretrained_"),
                                                   results, NULL, NULL);
            fb_free(models);
            fb_free(w);
        } else if (!st) {
            st = fb_taskpool_evaluate(c->taskpool, merged, (const fb_model *const *)per_task,
                                      results, on_eval, &ep);
        }
        for (int i = 0; per_task && i < nt; i++) fb_model_free(per_task[i]);
        fb_free(per_task);
    }
    double t3 = now();
    fb_model_free(merged);
    fb_model_free(mem_extras);
    if (st) {
        fb_free(results);
        return fail(exit_code(st), fb_last_error());
    }

    const fb_model *ref = fb_modelpool_get(c->pool, fb_modelpool_model_name(c->pool, 0));
    const fb_pattern_use *rep_patterns = NULL;
    /* a pattern that matched no tensor is most likely a typo or the wrong anchoring */
    for (int i = 0, n = fb_method_pattern_uses(c->method, &rep_patterns); i < n; i++)
        if (rep_patterns[i].pattern && !rep_patterns[i].count)
            fprintf(stderr, "fusion_bench: warning: method.%s[%d] '%s' matches no tensor\n",
                    rep_patterns[i].param, rep_patterns[i].entry, rep_patterns[i].pattern);
    fb_run_report rep = {
        .config = root,
        .pool = c->pool,
        .pretrained_read = fb_method_reads_pretrained(c->method, c->pool),
        .num_patterns = fb_method_pattern_uses(c->method, &rep_patterns),
        .patterns = rep_patterns,
        .method = fb_method_name(c->method),
        .output_path = out_path,
        .merged_tensors = fb_model_num_tensors(ref),
        .merged_params = fb_model_num_params(ref),
        .merged_float_params = float_params(ref),
        .load_seconds = t1 - t0,
        .merge_seconds = t2 - t1,
        .eval_seconds = t3 - t2,
        .total_seconds = t3 - t0,
        .results = results,
        .num_results = c->taskpool ? c->taskpool->set.num_tasks : 0,
        .peak_rss_bytes = fb_peak_rss_bytes(),
        .threads = fb_get_num_threads(),
    };
    memcpy(rep.slowest, prog.slowest, sizeof rep.slowest);
    fb_io_counters(&rep);
    /* methods with per-model extras wrote them beside the output */
    char *xpath = NULL;
    fb_model *extras = NULL;
    if (out_path && (c->method->ops->model_masks || c->method->ops->model_scalars) &&
        (xpath = fb_extras_path(out_path))) {
        rep.extras_path = xpath;
        if (fb_model_load(xpath, &extras) == FB_OK) rep.extras = extras;
    }
    int n = fb_modelpool_num_models(c->pool);
    printf("fusion_bench: %s merged %d model%s%s: %lld tensors, %.2f M parameters\n",
           rep.method, n, n == 1 ? "" : "s",
           rep.pretrained_read ? " (+ _pretrained_)" : "",
           (long long)rep.merged_tensors, (double)rep.merged_params / 1e6);
    printf("  output: %s\n", out_path ? out_path : "(not saved: set merged_model_save_path=PATH)");
    if (prog.steps && !isnan(prog.last_loss))
        printf("  learned in %lld steps; last loss %.5f\n", (long long)prog.steps, prog.last_loss);
    if (rep.extras_path) printf("  per-model masks and scales: %s\n", rep.extras_path);
    printf("  time: load %.3f s, merge %.3f s; peak RSS %.1f MB; %d thread%s\n",
           rep.load_seconds, rep.merge_seconds, (double)rep.peak_rss_bytes / 1e6, rep.threads,
           rep.threads == 1 ? "" : "s");
    if (rep.num_results) {
        double acc = 0, loss = 0;
        printf("  %-24s %9s %8s %8s\n", "task", "accuracy", "loss", "examples");
        for (int i = 0; i < rep.num_results; i++) {
            printf("  %-24s %8.2f%% %8.4f %8lld\n", results[i].task, 100 * results[i].accuracy,
                   results[i].loss, (long long)results[i].examples);
            acc += results[i].accuracy / rep.num_results;
            loss += results[i].loss / rep.num_results;
        }
        printf("  %-24s %8.2f%% %8.4f   (evaluation %.2f s)\n", "average", 100 * acc, loss,
               rep.eval_seconds);
    }
    if (report_path) {
        fb_status rst = fusionbench_report ? fb_report_write_fusionbench(&rep, report_path)
                                           : fb_report_write(&rep, report_path);
        if (rst) rc = fail(1, fb_last_error());
        else printf("  report: %s\n", report_path);
    }
    fb_model_free(extras);
    fb_free(xpath);
    fb_free(results);
    return rc;
}

/* A run's average accuracy and loss from its report, if it was scored. */
static int read_score(const char *report, double *acc, double *loss)
{
    char *text = NULL;
    FILE *f = fopen(report, "r");
    if (f) {
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        text = n > 0 ? calloc(1, (size_t)n + 1) : NULL;
        if (text && fread(text, 1, (size_t)n, f) != (size_t)n) text[0] = '\0';
        fclose(f);
    }
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    const cJSON *avg = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "taskpool"), "average");
    int ok = cJSON_IsNumber(cJSON_GetObjectItem(avg, "accuracy"));
    if (ok) {
        *acc = cJSON_GetObjectItem(avg, "accuracy")->valuedouble;
        *loss = cJSON_GetObjectItem(avg, "loss")->valuedouble;
    }
    cJSON_Delete(j);
    free(text);
    return ok;
}

/* One run of a sweep, in this process with the sweep's pools: compose and run argv, its
 * report in dir/report.json. Returns the exit status. */
static int sweep_run(const cli *base, sweep_cache *cache, char **argv, int argc, const char *dir,
                     fb_sweep_run *r)
{
    cli c = {.cache = cache, .config_dir_opt = base->config_dir_opt, .threads = base->threads};
    snprintf(c.command, sizeof c.command, "%s", base->command);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "fusion_bench: error: cannot make %s: %s\n", dir, strerror(errno));
        return r->status = 1;
    }
    int rc = compose(&c, argc, argv);
    if (!rc) rc = run(&c);
    fb_method_free(c.method);
    fb_config_free(c.root);
    char report[4200];
    snprintf(report, sizeof report, "%s/report.json", dir);
    r->status = rc;
    r->scored = !rc && read_score(report, &r->accuracy, &r->loss);
    return rc;
}

/* fusion_bench -m: every combination of the swept overrides ("key=a,b,c", "key=range(a,b,s)"),
 * each run in its own folder (DIR/i, with its report and merged model), on past a failed run;
 * then the summary. --select-on SPLIT scores the runs on that split of the task pool and runs
 * the best one again on its test split. */
static int sweep(cli *c, int argc, char **argv, const char *dir_opt, const char *select_on)
{
    char dir[4096];
    if (dir_opt) snprintf(dir, sizeof dir, "%s", dir_opt);
    else {
        time_t t = time(NULL);
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(dir, sizeof dir, "outputs/multirun/%Y-%m-%d_%H-%M-%S", &tm);
    }
    fb_sweep_param params[16];
    int np = 0, nfixed = 0, rc = 0;
    char **fixed = calloc((size_t)argc + 8, sizeof *fixed);
    const char *save_name = NULL;
    if (!fixed) return fail(1, "out of memory");
    for (int i = 0; i < argc && !rc; i++) {
        char *eq = strchr(argv[i], '=');
        if (eq && !strncmp(argv[i], "merged_model_save_path=", 23)) { /* one per run */
            const char *slash = strrchr(eq + 1, '/');
            save_name = slash ? slash + 1 : eq + 1;
            continue;
        }
        if (eq && (!strncmp(argv[i], "report_save_path=", 17))) continue; /* DIR/i/report.json */
        char **vals = NULL;
        int n = 0;
        char key[512];
        snprintf(key, sizeof key, "%.*s", (int)(eq ? (size_t)(eq - argv[i]) : 0), argv[i]);
        if (!eq || fb_sweep_values(key, eq + 1, &vals, &n)) {
            rc = eq ? fail(2, fb_last_error()) : 0;
            fixed[nfixed++] = argv[i];
            continue;
        }
        if (n == 1) {
            fb_sweep_values_free(vals, n);
            fixed[nfixed++] = argv[i];
            continue;
        }
        if (np == 16) {
            fb_sweep_values_free(vals, n);
            rc = fail(2, "more than 16 swept keys");
            break;
        }
        params[np].key = strdup(key);
        params[np].values = vals;
        params[np++].count = n;
    }
    long total = 1;
    for (int k = 0; k < np; k++) total *= params[k].count;
    if (!rc && total > 10000) rc = fail(2, "a sweep of more than 10000 runs");
    if (!rc && fb_path_identity(dir, &(unsigned long long){0}, &(unsigned long long){0}) == 0) {
        char cmd[4200], *p = cmd; /* make DIR and its parents */
        snprintf(cmd, sizeof cmd, "%s", dir);
        for (p = cmd + 1; *p; p++)
            if (*p == '/') *p = '\0', mkdir(cmd, 0755), *p = '/';
        if (mkdir(cmd, 0755) != 0 && errno != EEXIST) rc = fail(1, "cannot make the sweep folder");
    }
    fb_sweep_run *runs = rc ? NULL : calloc((size_t)total, sizeof *runs);
    const char **values = rc ? NULL : calloc((size_t)(total * (np ? np : 1)), sizeof *values);
    if (!rc && (!runs || !values)) rc = fail(1, "out of memory");
    sweep_cache cache = {0};
    int failed = 0, best = -1;
    printf("fusion_bench: sweep of %ld run%s into %s\n", total, total == 1 ? "" : "s", dir);
    for (long i = 0; !rc && i < total; i++) {
        char **args = calloc((size_t)(nfixed + np + 4), sizeof *args);
        char run_dir[4200], rep[4300], save[4300], split[64];
        int na = 0;
        for (int f = 0; f < nfixed; f++) args[na++] = fixed[f];
        long rem = i; /* the first parameter varies slowest */
        for (int k = np - 1; k >= 0; k--) {
            int v = (int)(rem % params[k].count);
            rem /= params[k].count;
            values[i * np + k] = params[k].values[v];
        }
        for (int k = 0; k < np; k++) {
            char *kv = malloc(strlen(params[k].key) + strlen(values[i * np + k]) + 2);
            sprintf(kv, "%s=%s", params[k].key, values[i * np + k]);
            args[na++] = kv;
        }
        snprintf(run_dir, sizeof run_dir, "%s/%ld", dir, i);
        snprintf(rep, sizeof rep, "report_save_path=%s/report.json", run_dir);
        args[na++] = rep;
        if (save_name) {
            snprintf(save, sizeof save, "merged_model_save_path=%s/%s", run_dir, save_name);
            args[na++] = save;
        }
        if (select_on) {
            snprintf(split, sizeof split, "taskpool.split=%s", select_on);
            args[na++] = split;
        }
        runs[i].values = values + i * np;
        printf("\n== run %ld of %ld:", i, total);
        for (int k = 0; k < np; k++) printf(" %s=%s", params[k].key, values[i * np + k]);
        printf("\n");
        fflush(stdout);
        failed += sweep_run(c, &cache, args, na, run_dir, &runs[i]) != 0;
        if (runs[i].scored && (best < 0 || runs[i].accuracy > runs[best].accuracy)) best = (int)i;
        for (int k = 0; k < np; k++) free(args[nfixed + k]);
        free(args);
    }
    fb_sweep_run test = {0};
    if (!rc && select_on && best >= 0) { /* the chosen run, scored on the test split */
        char **args = calloc((size_t)(nfixed + np + 4), sizeof *args);
        char run_dir[4200], rep[4300], save[4300];
        int na = 0;
        for (int f = 0; f < nfixed; f++) args[na++] = fixed[f];
        for (int k = 0; k < np; k++) {
            char *kv = malloc(strlen(params[k].key) + strlen(values[best * np + k]) + 2);
            sprintf(kv, "%s=%s", params[k].key, values[best * np + k]);
            args[na++] = kv;
        }
        snprintf(run_dir, sizeof run_dir, "%s/selected", dir);
        snprintf(rep, sizeof rep, "report_save_path=%s/report.json", run_dir);
        args[na++] = rep;
        if (save_name) {
            snprintf(save, sizeof save, "merged_model_save_path=%s/%s", run_dir, save_name);
            args[na++] = save;
        }
        char test_split[] = "taskpool.split=test"; /* compose writes into its arguments */
        args[na++] = test_split;
        printf("\n== the run chosen on %s (%d), on the test split\n", select_on, best);
        test.values = values + best * np;
        failed += sweep_run(c, &cache, args, na, run_dir, &test) != 0;
        for (int k = 0; k < np; k++) free(args[nfixed + k]);
        free(args);
    }
    if (!rc) {
        printf("\n");
        if (fb_sweep_summary(dir, params, np, runs, (int)total, select_on ? best : -1, &test))
            rc = fail(1, fb_last_error());
        else
            printf("\nfusion_bench: %ld run%s, %d failed; %s/summary.{md,json,png}\n", total,
                   total == 1 ? "" : "s", failed, dir);
    }
    sweep_cache_free(&cache);
    for (int k = 0; k < np; k++) {
        free(params[k].key);
        fb_sweep_values_free(params[k].values, params[k].count);
    }
    free(values);
    free(runs);
    free(fixed);
    return rc ? rc : failed ? 1 : 0;
}

/* SIGINT, SIGTERM, SIGHUP: remove what the run was writing, then die of the signal as if
 * unhandled (so the shell and the exit status see it). */
static void on_signal(int sig)
{
    fb_remove_temporaries();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_signal_cleanup(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&sa.sa_mask, sigs[i]);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction old;
        /* a signal ignored by whoever started us (nohup) stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(sigs[i], &sa, NULL);
    }
}

int main(int argc, char **argv)
{
    install_signal_cleanup();
    if (argc > 1 && !strcmp(argv[1], "mergekit")) return fb_mergekit_main(argc - 2, argv + 2);
    if (argc > 1 && !strcmp(argv[1], "mergekit-extract-lora"))
        return fb_mergekit_extract_main(argc - 2, argv + 2);
    cli c = {0};
    /* Options may stand anywhere, as --name VALUE or --name=VALUE; the rest (group choices and
     * overrides, or `zoo` and its overrides) keep their order. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int nrest = 0, multirun = 0;
    const char *sweep_dir = NULL, *select_on = NULL;
    if (!rest) return fail(1, "out of memory");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") || !strcmp(a, "--multirun")) {
            multirun = 1;
            continue;
        }
        /* after `zoo`, its own options (--force, --help) are the subcommand's */
        int zoo_opt = nrest > 0 && !strcmp(rest[0], "zoo") &&
                      (!strcmp(a, "--force") || !strcmp(a, "--help") || !strcmp(a, "-h"));
        if ((strncmp(a, "--", 2) != 0 && strcmp(a, "-h") != 0) || zoo_opt) {
            rest[nrest++] = argv[i];
            continue;
        }
        char name[64];
        const char *eq = strchr(a, '='), *v = eq ? eq + 1 : NULL;
        snprintf(name, sizeof name, "%.*s", (int)(eq ? (size_t)(eq - a) : strlen(a)), a);
        int takes_value = !strcmp(name, "--threads") || !strcmp(name, "--config-dir") ||
                          !strcmp(name, "--sweep-dir") || !strcmp(name, "--select-on");
        if (!takes_value && v) {
            free(rest);
            fprintf(stderr, "fusion_bench: error: %s takes no value (got '%s')\n", name, a);
            return 2;
        }
        if (takes_value && !v) {
            if (i + 1 >= argc) {
                free(rest);
                fprintf(stderr, "fusion_bench: error: %s needs a value\n", name);
                return 2;
            }
            v = argv[++i];
        }
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            free(rest);
            usage(stdout);
            return 0;
        } else if (!strcmp(name, "--version")) {
            free(rest);
            fb_simd level;
            if (fb_simd_get(&level)) return fail(2, fb_last_error());
            printf("fusion_bench %s\nsimd: %s (best on this CPU: %s)\nblas: OpenBLAS %s\n",
                   FB_VERSION_STRING, fb_simd_name(level), fb_simd_name(fb_simd_best()),
                   openblas_get_corename());
            return 0;
        } else if (!strcmp(name, "--list-methods")) {
            free(rest);
            return list_methods();
        } else if (!strcmp(name, "--print-config")) {
            c.print_config_only = 1;
        } else if (!strcmp(name, "--config-dir")) {
            c.config_dir_opt = v;
        } else if (!strcmp(name, "--sweep-dir")) {
            sweep_dir = v;
        } else if (!strcmp(name, "--select-on")) {
            select_on = v;
        } else if (!strcmp(name, "--threads")) {
            char *end;
            long t = strtol(v, &end, 10);
            if (end == v || *end || t < 1 || t > 4096) {
                free(rest);
                fprintf(stderr, "fusion_bench: error: --threads needs a positive integer, got '%s'\n", v);
                return 2;
            }
            c.threads = (int)t;
        } else {
            free(rest);
            fprintf(stderr, "fusion_bench: error: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    int rc;
    for (int i = 0; i < argc; i++) { /* the command as typed, quoted where it needs it */
        size_t used = strlen(c.command);
        int quote = strpbrk(argv[i], " '\"$[]{}*?") != NULL;
        snprintf(c.command + used, sizeof c.command - used, "%s%s%s%s", i ? " " : "",
                 quote ? "'" : "", i ? argv[i] : "fusion_bench", quote ? "'" : "");
    }
    if (c.threads) fb_set_num_threads(c.threads);
    if (fb_simd_get(NULL)) { /* FB_SIMD, before any work */
        free(rest);
        return fail(2, fb_last_error());
    }
    if (nrest > 0 && !strcmp(rest[0], "zoo")) {
        char *dir = find_config_dir(c.config_dir_opt);
        rc = dir ? fb_zoo_main(dir, nrest - 1, rest + 1) : fail(2, fb_last_error());
        fb_free(dir);
        free(rest);
        return rc;
    }
    if (multirun || select_on || sweep_dir) {
        rc = multirun ? sweep(&c, nrest, rest, sweep_dir, select_on)
                      : fail(2, "--sweep-dir and --select-on go with -m (a sweep)");
        free(rest);
        return rc;
    }
    rc = compose(&c, nrest, rest);
    if (!rc && c.print_config_only) {
        print_config(c.root);
        if (c.incomplete[0])
            fprintf(stderr, "fusion_bench: note: this config would not run: %s\n", c.incomplete);
    }
    else if (!rc) rc = run(&c);
    free(rest);
    fb_modelpool_free(c.pool);
    fb_taskpool_free(c.taskpool);
    fb_method_free(c.method);
    fb_config_free(c.root);
    return rc;
}
