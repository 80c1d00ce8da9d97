/*
 * fuzz_index.c: libFuzzer target for sharded checkpoints: the input is the text of
 * model.safetensors.index.json in a folder that also holds two valid shards.
 */
#include <fusionbench.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

static void write_file(const char *name, const void *data, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    fwrite(data, 1, n, f);
    fclose(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "/tmp/fb-fuzz-index-%d", (int)getpid());
    mkdir(dir, 0755);
    for (int s = 1; s <= 2; s++) {
        fb_model *m;
        fb_model_create(&m);
        int64_t shape[1] = {2};
        float v[2] = {1, 2};
        fb_model_add_tensor(m, s == 1 ? "a" : "b", FB_F32, 1, shape, v, NULL);
        char path[512];
        snprintf(path, sizeof path, "%s/s%d.safetensors", dir, s);
        fb_model_save(m, path, NULL);
        fb_model_free(m);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    write_file("model.safetensors.index.json", data, size);
    fb_model *m;
    if (fb_model_load(dir, &m) == FB_OK) fb_model_free(m);
    return 0;
}
