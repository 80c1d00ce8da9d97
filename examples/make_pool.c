/*
 * make_pool.c: writes a pool of test models: a "pretrained" MLP and N "fine-tuned" ones
 * (the pretrained weights plus a small task-specific change), as safetensors files, and a
 * modelpool YAML that lists them. `make demo` uses it; so can anyone who wants a pool to try.
 *
 *     make_pool OUT_DIR [--models N] [--in D] [--hidden H] [--out D] [--dtype f32|bf16|f16]
 *               [--seed S]
 */
#include <fusionbench.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float uniform(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

static int fail(const char *what)
{
    fprintf(stderr, "make_pool: %s: %s\n", what, fb_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: make_pool OUT_DIR [--models N] [--in D] [--hidden H] "
                        "[--out D] [--dtype f32|bf16|f16] [--seed S]\n");
        return 2;
    }
    const char *dir = argv[1];
    int n_models = 3;
    int64_t d_in = 768, d_hidden = 3072, d_out = 768;
    uint64_t seed = 1;
    fb_dtype dtype = FB_F32;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--models")) n_models = atoi(v);
        else if (!strcmp(k, "--in")) d_in = atoll(v);
        else if (!strcmp(k, "--hidden")) d_hidden = atoll(v);
        else if (!strcmp(k, "--out")) d_out = atoll(v);
        else if (!strcmp(k, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--dtype")) {
            if (fb_dtype_from_name(v, &dtype)) return fail("--dtype");
        } else {
            fprintf(stderr, "make_pool: unknown option %s\n", k);
            return 2;
        }
    }
    if (n_models < 1 || n_models > 26 || d_in < 1 || d_hidden < 1 || d_out < 1) {
        fprintf(stderr, "make_pool: sizes must be positive and --models at most 26\n");
        return 2;
    }
    const char *names[] = {"0.weight", "0.bias", "2.weight", "2.bias"};
    int64_t shapes[4][2] = {{d_hidden, d_in}, {d_hidden, 1}, {d_out, d_hidden}, {d_out, 1}};
    int ndims[4] = {2, 1, 2, 1};
    float *pre[4];
    for (int t = 0; t < 4; t++) {
        int64_t n = shapes[t][0] * (ndims[t] == 2 ? shapes[t][1] : 1);
        pre[t] = malloc((size_t)n * sizeof(float));
        for (int64_t j = 0; j < n; j++) pre[t][j] = 0.05f * uniform(&seed);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/pool.yaml", dir);
    FILE *yaml = fopen(path, "w");
    if (!yaml) {
        fprintf(stderr, "make_pool: cannot write %s\n", path);
        return 1;
    }
    fprintf(yaml, "# written by make_pool\nmodels:\n");
    for (int k = -1; k < n_models; k++) {
        fb_model *m;
        if (fb_model_create(&m)) return fail("model");
        for (int t = 0; t < 4; t++) {
            int64_t n = shapes[t][0] * (ndims[t] == 2 ? shapes[t][1] : 1);
            float *w = malloc((size_t)n * sizeof *w);
            for (int64_t j = 0; j < n; j++) w[j] = pre[t][j] + (k < 0 ? 0 : 0.01f * uniform(&seed));
            void *bytes = malloc((size_t)n * 8);
            if (fb_convert_from_f32(dtype, w, bytes, n)) return fail("dtype");
            if (fb_model_add_tensor(m, names[t], dtype, ndims[t], shapes[t], bytes, NULL))
                return fail(names[t]);
            free(bytes);
            free(w);
        }
        fb_model_set_metadata(m, "format", "pt");
        char name[32];
        if (k < 0) snprintf(name, sizeof name, "pretrained");
        else snprintf(name, sizeof name, "task_%c", 'a' + k);
        snprintf(path, sizeof path, "%s/%s.safetensors", dir, name);
        if (fb_model_save(m, path, NULL)) return fail(path);
        fprintf(yaml, "  %s: %s.safetensors\n", k < 0 ? "_pretrained_" : name, name);
        fb_model_free(m);
    }
    for (int t = 0; t < 4; t++) free(pre[t]);
    fclose(yaml);
    printf("make_pool: wrote %d models and %s/pool.yaml\n", n_models + 1, dir);
    return 0;
}
