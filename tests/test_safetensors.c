/*
 * test_safetensors.c: the safetensors reader and writer, sharded checkpoints, atomic output,
 * and the malformed files of tests/data/bad (each with the error it must give).
 */
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/model.h"
#include "io/dataset.h"
#include "harness.h"

static const char *ref(const char *name)
{
    static char ring[4][4096];
    static int next;
    char *p = ring[next++ % 4];
    snprintf(p, 4096, "%s/%s", fb_test_ref_dir, name);
    return p;
}

TEST(every_dtype_round_trips_through_write_and_read)
{
    fb_model *m, *back;
    REQUIRE_OK(fb_model_load(ref("dtypes.safetensors"), &m));
    const char *out = fb_test_path("dtypes_copy.safetensors");
    REQUIRE_OK(fb_model_save(m, out, NULL));
    REQUIRE_OK(fb_model_load(out, &back));
    EXPECT(fb_test_models_match(back, m, 0));
    EXPECT(fb_model_num_tensors(back) == 15);
    /* files written here keep every tensor aligned for its dtype (data sorted by size) */
    for (int64_t i = 0; i < fb_model_num_tensors(back); i++) {
        const fb_tensor *t = fb_model_tensor(back, i);
        if (t->src_offset % fb_dtype_size(t->dtype))
            fb_test_fail(__FILE__, __LINE__, "tensor '%s' at misaligned offset %llu", t->name,
                         (unsigned long long)t->src_offset);
    }
    /* a file from elsewhere with a misaligned tensor still yields an aligned pointer */
    const fb_tensor *u64 = fb_model_find(m, "U64");
    const void *p;
    REQUIRE(u64);
    EXPECT_OK(fb_tensor_data(u64, &p));
    EXPECT((uintptr_t)p % 8 == 0 && ((const uint64_t *)p)[1] == UINT64_MAX);
    EXPECT(!strcmp(fb_model_get_metadata(back, "quote\"and\\slash"), "x\ny"));
    /* the header is padded so the data starts on an 8-byte boundary */
    size_t len;
    char *bytes = fb_test_read_file(out, &len);
    REQUIRE(bytes);
    uint64_t hlen;
    memcpy(&hlen, bytes, 8);
    EXPECT((8 + hlen) % 8 == 0);
    free(bytes);
    fb_model_free(back);
    fb_model_free(m);
}

TEST(files_written_here_read_back_in_pytorch)
{
    /* Write the dtype file and a sharded copy, then let the Python reader check them. */
    fb_model *m, *sh;
    REQUIRE_OK(fb_model_load(ref("dtypes.safetensors"), &m));
    REQUIRE_OK(fb_model_save(m, fb_test_path("dtypes.safetensors"), NULL));
    REQUIRE_OK(fb_model_load(ref("sharded_single.safetensors"), &sh));
    fb_save_options so = {.max_shard_bytes = 1500};
    REQUIRE_OK(fb_model_save(sh, fb_test_path("sharded_out"), &so));
    char script[4096];
    snprintf(script, sizeof script, "%s/tests/reference/check_c_files.py", fb_test_src_dir);
    const char *argv[] = {"/usr/bin/python3", script, fb_test_ref_dir, fb_test_tmp(), NULL};
    char *out = NULL, *err = NULL;
    int rc = fb_test_run(argv, &out, &err);
    if (rc != 0) fb_test_fail(__FILE__, __LINE__, "python check failed (%d): %s%s", rc,
                              out ? out : "", err ? err : "");
    free(out);
    free(err);
    fb_model_free(sh);
    fb_model_free(m);
}

TEST(sharded_checkpoint_from_pytorch_reads_like_the_single_file)
{
    fb_model *sh, *one;
    REQUIRE_OK(fb_model_load(ref("sharded"), &sh));
    REQUIRE_OK(fb_model_load(ref("sharded_single.safetensors"), &one));
    EXPECT(fb_test_models_match(sh, one, 0));
    fb_model_free(sh);
    REQUIRE_OK(fb_model_load(ref("sharded/model.safetensors.index.json"), &sh));
    EXPECT(fb_model_num_tensors(sh) == 6);
    fb_model_free(sh);
    fb_model_free(one);
}

TEST(sharded_write_splits_by_size_and_reads_back)
{
    fb_model *one, *back;
    REQUIRE_OK(fb_model_load(ref("sharded_single.safetensors"), &one));
    fb_save_options so = {.max_shard_bytes = 1300}; /* 612 bytes a layer: 2 per shard */
    const char *dir = fb_test_path("out");
    REQUIRE_OK(fb_model_save(one, dir, &so));
    EXPECT(fb_test_exists(fb_test_path("out/model-00001-of-00003.safetensors")));
    EXPECT(fb_test_exists(fb_test_path("out/model-00003-of-00003.safetensors")));
    EXPECT(fb_test_exists(fb_test_path("out/model.safetensors.index.json")));
    REQUIRE_OK(fb_model_load(dir, &back));
    EXPECT(fb_test_models_match(back, one, 0));
    fb_model_free(back);
    /* saving again over our own earlier output replaces it whole */
    so.max_shard_bytes = 0;
    REQUIRE_OK(fb_model_save(one, dir, &so));
    EXPECT(!fb_test_exists(fb_test_path("out/model-00001-of-00003.safetensors")));
    EXPECT(fb_test_exists(fb_test_path("out/model.safetensors")));
    REQUIRE_OK(fb_model_load(dir, &back));
    EXPECT(fb_test_models_match(back, one, 0));
    fb_model_free(back);
    /* a single-file target cannot be sharded */
    so.max_shard_bytes = 100;
    EXPECT_ERROR(fb_model_save(one, fb_test_path("x.safetensors"), &so), FB_ERR_ARG, "folder");
    fb_model_free(one);
}

TEST(save_refuses_a_folder_holding_other_files)
{
    fb_model *one;
    REQUIRE_OK(fb_model_load(ref("sharded_single.safetensors"), &one));
    const char *dir = fb_test_path("mine");
    mkdir(dir, 0755);
    fb_test_write_file(fb_test_path("mine/notes.txt"), "keep me", 7);
    EXPECT_ERROR(fb_model_save(one, dir, NULL), FB_ERR_IO, "notes.txt");
    EXPECT(fb_test_exists(fb_test_path("mine/notes.txt")));
    fb_model_free(one);
}

TEST(failed_save_leaves_nothing_behind)
{
    fb_model *one;
    REQUIRE_OK(fb_model_load(ref("sharded_single.safetensors"), &one));
    /* an unwritable folder (root ignores permissions, so use a path under a file) */
    fb_test_write_file(fb_test_path("plainfile"), "x", 1);
    EXPECT_ERROR(fb_model_save(one, fb_test_path("plainfile/out.safetensors"), NULL), FB_ERR_IO,
                 "plainfile");
    EXPECT_ERROR(fb_model_save(one, fb_test_path("no/such/dir/out.safetensors"), NULL),
                 FB_ERR_IO, "no/such/dir");
    /* a tensor without bytes makes the save fail mid-way: no temporary file may remain */
    fb_model *m;
    REQUIRE_OK(fb_model_create(&m));
    int64_t shape[1] = {3};
    float v[3] = {1, 2, 3};
    REQUIRE_OK(fb_model_add_tensor(m, "a", FB_F32, 1, shape, v, NULL));
    const char *out = fb_test_path("partial.safetensors");
    REQUIRE_OK(fb_model_save(m, out, NULL));
    size_t before_len;
    char *before = fb_test_read_file(out, &before_len);
    /* overwrite with a model whose second tensor has no bytes: the save fails after writing
     * the first, and the old file must survive intact */
    fb_model *broken;
    REQUIRE_OK(fb_model_create(&broken));
    float w[3] = {7, 8, 9};
    REQUIRE_OK(fb_model_add_tensor(broken, "a", FB_F32, 1, shape, w, NULL));
    REQUIRE_OK(fb_model_declare_tensor(broken, "b", FB_F32, 1, shape));
    EXPECT_ERROR(fb_model_save(broken, out, NULL), FB_ERR_ARG, "'b'");
    fb_model_free(broken);
    char *after = fb_test_read_file(out, NULL);
    EXPECT(before && after && !memcmp(before, after, before_len));
    free(before);
    free(after);
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | grep -q tmp-", fb_test_tmp());
    EXPECT(system(cmd) != 0);
    fb_model_free(m);
    fb_model_free(one);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* The reader a bad file is meant for, by its name: IDX, digits CSV, image, else a checkpoint. */
static fb_status load_any(const char *path, fb_model **m)
{
    if (ends_with(path, ".idx") || ends_with(path, ".idx.gz")) {
        uint8_t *file, *data = NULL;
        size_t len;
        int nd;
        int64_t dims[4];
        fb_status st = fb_read_file(path, 1u << 30, &file, &len);
        if (!st) st = fb_idx_parse(file, len, path, &nd, dims, &data);
        fb_free(data);
        fb_free(file);
        return st;
    }
    if (ends_with(path, ".csv") || ends_with(path, ".csv.gz")) {
        fb_images d;
        fb_status st = fb_digits_read(path, &d);
        if (!st) fb_images_free(&d);
        return st;
    }
    if (ends_with(path, ".png") || ends_with(path, ".jpg") || ends_with(path, ".bmp")) {
        uint8_t *file, out[3 * 28 * 28];
        size_t len;
        fb_status st = fb_read_file(path, 1u << 30, &file, &len);
        if (!st) st = fb_image_decode(file, len, path, 28, 3, out);
        fb_free(file);
        return st;
    }
    return fb_model_load(path, m);
}

/* tests/data/bad/expected.txt: "<file or folder>\t<text the error must contain>" per line. */
TEST(malformed_files_give_clear_errors)
{
    char manifest[4096];
    snprintf(manifest, sizeof manifest, "%s/tests/data/bad/expected.txt", fb_test_src_dir);
    char *text = fb_test_read_file(manifest, NULL);
    REQUIRE(text);
    int cases = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || !*line) continue;
        char *tab = strchr(line, '\t');
        if (!tab) {
            fb_test_fail(__FILE__, __LINE__, "manifest line without a tab: %s", line);
            continue;
        }
        *tab = '\0';
        char path[4096];
        snprintf(path, sizeof path, "%s/tests/data/bad/%s", fb_test_src_dir, line);
        fb_model *m = NULL;
        fb_status st = load_any(path, &m);
        if (st == FB_OK) fb_test_fail(__FILE__, __LINE__, "%s: loaded, expected an error", line);
        else if (!strstr(fb_last_error(), tab + 1))
            fb_test_fail(__FILE__, __LINE__, "%s: error '%s' lacks '%s'", line, fb_last_error(),
                         tab + 1);
        else if (strchr(fb_last_error(), '\n'))
            fb_test_fail(__FILE__, __LINE__, "%s: error is not one line", line);
        else if (!strstr(fb_last_error(), line) && !strstr(fb_last_error(), "bad/"))
            fb_test_fail(__FILE__, __LINE__, "%s: error '%s' does not name the file", line,
                         fb_last_error());
        fb_model_free(m);
        cases++;
    }
    EXPECT(cases >= 60);
    free(text);
}

TEST(missing_model_path_names_the_path)
{
    fb_model *m;
    EXPECT_ERROR(fb_model_load(fb_test_path("nope.safetensors"), &m), FB_ERR_NOT_FOUND,
                 "nope.safetensors");
    mkdir(fb_test_path("emptydir"), 0755);
    EXPECT_ERROR(fb_model_load(fb_test_path("emptydir"), &m), FB_ERR_NOT_FOUND,
                 "holds none of model.safetensors");
}
