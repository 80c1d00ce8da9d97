/*
 * test_data.c: the dataset readers against values read independently (Python's gzip and csv
 * on the same Debian files), CLIP-style preprocessing, task splits, evaluation through the
 * taskpool, and the zoo on a tiny configuration.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "core/alloc.h"

#include "harness.h"
#include "io/dataset.h"
#include "nn/clip_vit.h"
#include "nn/kernels.h"
#include "pool/taskpool.h"
#include "pool/tasks.h"

#include <stb_image_write.h>

#define FMNIST "/usr/share/datasets/fashion-mnist"
#define DIGITS "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz"

static int have(const char *path)
{
    if (access(path, R_OK) == 0) return 1;
    /* make test installs these packages; without them the test cannot say anything */
    fb_test_fail(__FILE__, __LINE__, "%s is missing (make test-deps installs it)", path);
    return 0;
}

TEST(idx_reads_fashion_mnist_test_set)
{
    if (!have(FMNIST)) return;
    fb_images d;
    REQUIRE_OK(fb_idx_read(FMNIST "/t10k-images-idx3-ubyte.gz", FMNIST "/t10k-labels-idx1-ubyte.gz", &d));
    EXPECT(d.n == 10000 && d.height == 28 && d.width == 28 && d.channels == 1);
    EXPECT(d.num_classes == 10);
    /* Python: gzip.open(...).read()[16:][:784] sums to 33456; row 14 as below */
    int64_t sum = 0;
    for (int i = 0; i < 784; i++) sum += d.pixels[i];
    EXPECT(sum == 33456);
    const uint8_t row14[28] = {0, 0, 0, 0, 0, 0, 2, 4, 1, 0, 0, 0, 98, 136, 110, 109, 110, 162,
                               135, 144, 149, 159, 167, 144, 158, 169, 119, 0};
    EXPECT(!memcmp(d.pixels + 14 * 28, row14, 28));
    const int32_t first[10] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
    EXPECT(!memcmp(d.labels, first, sizeof first));
    int64_t counts[10] = {0};
    for (int64_t i = 0; i < d.n; i++) counts[d.labels[i]]++;
    for (int k = 0; k < 10; k++) EXPECT(counts[k] == 1000);
    fb_images_free(&d);
}

TEST(digits_csv_reads_scikit_learn_digits)
{
    if (!have(DIGITS)) return;
    fb_images d;
    REQUIRE_OK(fb_digits_read(DIGITS, &d));
    EXPECT(d.n == 1797 && d.height == 8 && d.width == 8 && d.channels == 1);
    const int64_t want[10] = {178, 182, 177, 183, 181, 182, 181, 179, 174, 180};
    int64_t counts[10] = {0};
    for (int64_t i = 0; i < d.n; i++) counts[d.labels[i]]++;
    for (int k = 0; k < 10; k++) EXPECT(counts[k] == want[k]);
    /* first row: 0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0 (x 255/16, rounded) */
    const double row0[16] = {0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0};
    for (int i = 0; i < 16; i++) EXPECT(d.pixels[i] == (uint8_t)floor(row0[i] * 255.0 / 16.0 + 0.5));
    fb_images_free(&d);
}

static void write_png(const char *path, int w, int h, int c, const uint8_t *px)
{
    if (!stbi_write_png(path, w, h, c, px, w * c)) fb_test_fail(__FILE__, __LINE__, "cannot write %s", path);
}

TEST(image_folder_reads_classes_in_name_order_and_crops_the_centre)
{
    const char *root = fb_test_path("images");
    mkdir(root, 0755);
    char p[4096];
    snprintf(p, sizeof p, "%s/cat", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/bird", root);
    mkdir(p, 0755);
    /* bird/a.png: 4 wide x 2 high, left half black, right half white; grey RGB */
    uint8_t wide[2 * 4 * 3];
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 4; x++) memset(wide + (y * 4 + x) * 3, x < 2 ? 0 : 255, 3);
    snprintf(p, sizeof p, "%s/bird/a.png", root);
    write_png(p, 4, 2, 3, wide);
    uint8_t red[2 * 2 * 3];
    for (int i = 0; i < 4; i++) red[3 * i] = 200, red[3 * i + 1] = 10, red[3 * i + 2] = 20;
    snprintf(p, sizeof p, "%s/cat/b.png", root);
    write_png(p, 2, 2, 3, red);
    snprintf(p, sizeof p, "%s/cat/c.jpg", root); /* a real JPEG passes the Huffman-table check */
    REQUIRE(stbi_write_jpg(p, 2, 2, 3, red, 100));
    snprintf(p, sizeof p, "%s/cat/notes.txt.png", root); /* not an image: an error naming it */
    FILE *f = fopen(p, "w");
    fputs("hello", f);
    fclose(f);
    fb_images d;
    EXPECT_ERROR(fb_image_folder_read(root, 2, 3, &d), FB_ERR_FORMAT, "notes.txt.png");
    unlink(p);
    REQUIRE_OK(fb_image_folder_read(root, 2, 3, &d));
    EXPECT(d.n == 3 && d.num_classes == 2);
    EXPECT(!strcmp(d.class_names[0], "bird") && !strcmp(d.class_names[1], "cat"));
    EXPECT(d.labels[0] == 0 && d.labels[1] == 1 && d.labels[2] == 1);
    /* 4x2 -> shorter side 2 (no resize), centre 2x2 crop: columns 1 and 2, black then white */
    EXPECT(d.pixels[0] == 0 && d.pixels[3] == 255 && d.pixels[6] == 0 && d.pixels[9] == 255);
    EXPECT(d.pixels[12] == 200 && d.pixels[13] == 10 && d.pixels[14] == 20);
    const uint8_t *jpg = d.pixels + 2 * 12; /* lossy: near the colour */
    EXPECT(abs(jpg[0] - 200) < 12 && abs(jpg[1] - 10) < 12 && abs(jpg[2] - 20) < 12);
    fb_images_free(&d);
    /* grey: one channel */
    REQUIRE_OK(fb_image_folder_read(root, 2, 1, &d));
    EXPECT(d.channels == 1 && d.pixels[0] == 0 && d.pixels[1] == 255);
    fb_images_free(&d);
}

TEST(normalisation_is_clips)
{
    const uint8_t px[2 * 2 * 3] = {0, 255, 51, 0, 255, 51, 0, 255, 51, 255, 0, 102};
    const float mean[3] = {0.5f, 0.25f, 0.0f}, std[3] = {0.5f, 0.25f, 2.0f};
    float out[12];
    fb_image_normalize(px, 2, 3, mean, std, out);
    EXPECT(fabsf(out[0] + 1.0f) < 1e-6f && fabsf(out[3] - 1.0f) < 1e-6f); /* channel 0, CHW */
    EXPECT(fabsf(out[4] - 3.0f) < 1e-6f && fabsf(out[7] + 1.0f) < 1e-6f); /* channel 1 */
    EXPECT(fabsf(out[8] - 0.1f) < 1e-6f && fabsf(out[11] - 0.2f) < 1e-6f); /* channel 2 */
}

/* ------------------------------------------------------------- synthetic tasks -- */

/* IDX files of n 4x4 images whose first two pixels spell the example's index, label i % 5. */
static void write_idx(const char *images, const char *labels, int n, int offset)
{
    FILE *f = fopen(images, "wb");
    const uint8_t h[16] = {0, 0, 8, 3, 0, 0, (uint8_t)(n >> 8), (uint8_t)n, 0, 0, 0, 4, 0, 0, 0, 4};
    fwrite(h, 1, 16, f);
    for (int i = 0; i < n; i++) {
        uint8_t px[16] = {(uint8_t)((i + offset) >> 8), (uint8_t)(i + offset)};
        for (int j = 2; j < 16; j++) px[j] = (uint8_t)(j * 13 + i);
        fwrite(px, 1, 16, f);
    }
    fclose(f);
    f = fopen(labels, "wb");
    const uint8_t hl[8] = {0, 0, 8, 1, 0, 0, (uint8_t)(n >> 8), (uint8_t)n};
    fwrite(hl, 1, 8, f);
    for (int i = 0; i < n; i++) fputc(i % 5, f);
    fclose(f);
}

static fb_config *synthetic_taskpool(const char *extra)
{
    write_idx(fb_test_path("tr-img"), fb_test_path("tr-lab"), 600, 0);
    write_idx(fb_test_path("te-img"), fb_test_path("te-lab"), 200, 1000);
    char yaml[8192];
    snprintf(yaml, sizeof yaml,
             "image_size: 4\nchannels: 1\nmean: [0]\nstd: [1]\nseed: 3\n"
             "sources:\n  toy:\n    type: idx\n    train_images: %s\n    train_labels: %s\n"
             "    test_images: %s\n    test_labels: %s\n"
             "tasks:\n  all:\n    source: toy\n    train: 300\n    val: 50\n    test: 100\n"
             "  pairs:\n    source: toy\n    classes: {low: [0, 1], high: [3, 4]}\n"
             "    transform: [rot90, invert]\n    train: 200\n    val: 40\n    test: 60\n%s",
             fb_test_path("tr-img"), fb_test_path("tr-lab"), fb_test_path("te-img"),
             fb_test_path("te-lab"), extra);
    fb_config *c = NULL;
    if (fb_config_parse(yaml, &c)) fb_test_fail(__FILE__, __LINE__, "%s", fb_last_error());
    return c;
}

/* The example index a normalised image came from (pixels 0 and 1, undoing invert). */
static int example_of(const float *x, int inverted)
{
    float a = x[0] * 255.0f, b = x[1] * 255.0f;
    if (inverted) a = 255.0f - a, b = 255.0f - b;
    return (int)lroundf(a) * 256 + (int)lroundf(b);
}

TEST(task_splits_never_share_an_example)
{
    fb_config *c = synthetic_taskpool("");
    REQUIRE(c);
    fb_taskset ts;
    REQUIRE_OK(fb_taskset_load(c, 7, NULL, &ts));
    REQUIRE(ts.num_tasks == 2);
    const fb_task *t = &ts.tasks[0];
    EXPECT(t->n[0] == 300 && t->n[1] == 50 && t->n[2] == 100 && t->num_classes == 5);
    static unsigned char seen[2000];
    memset(seen, 0, sizeof seen);
    for (int s = 0; s < 3; s++)
        for (int64_t i = 0; i < t->n[s]; i++) {
            int e = example_of(t->x[s] + i * 16, 0);
            EXPECT(e >= 0 && e < 2000 && !seen[e]);
            if (e >= 0 && e < 2000) seen[e] = 1;
            EXPECT((s == 2) == (e >= 1000)); /* the test split comes from the test files */
            EXPECT(t->y[s][i] == (e % 1000) % 5);
        }
    /* the grouped, transformed task: classes 0,1 -> 0 and 3,4 -> 1; rot90 moves pixel (0,0)
     * to (3,0), pixel (0,1) to (2,0): recover the index from there */
    const fb_task *p = &ts.tasks[1];
    EXPECT(p->num_classes == 2 && !strcmp(p->class_names[0], "low"));
    memset(seen, 0, sizeof seen);
    for (int s = 0; s < 3; s++)
        for (int64_t i = 0; i < p->n[s]; i++) {
            const float *x = p->x[s] + i * 16;
            float moved[2] = {x[12], x[8]};
            int e = example_of(moved, 1);
            EXPECT(e >= 0 && e < 2000 && !seen[e]);
            if (e >= 0 && e < 2000) seen[e] = 1;
            int label = (e % 1000) % 5;
            EXPECT(label != 2 && p->y[s][i] == (label >= 3));
        }
    fb_taskset_free(&ts);
    fb_config_free(c);
}

TEST(task_definitions_are_checked)
{
    const char *bad[][2] = {
        {"  oops:\n    source: nowhere\n", "no source named 'nowhere'"},
        {"  oops:\n    source: toy\n    classes: [0, 9]\n", "class 9 is not in source toy"},
        {"  oops:\n    source: toy\n    classes: [1, 1]\n", "listed twice"},
        {"  oops:\n    source: toy\n    transform: [twirl]\n", "unknown transform 'twirl'"},
        {"  oops:\n    source: toy\n    train: 100000\n", "asks for 100000 train"},
        {"  oops:\n    source: toy\n    colour: red\n", "unknown key 'colour'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fb_config *c = synthetic_taskpool(bad[i][0]);
        REQUIRE(c);
        fb_taskset ts;
        EXPECT_ERROR(fb_taskset_load(c, 7, NULL, &ts), FB_ERR_CONFIG, bad[i][1]);
        fb_config_free(c);
    }
    /* a missing data file names the Debian package */
    const char *yaml = "sources:\n  s:\n    type: idx\n    train_images: /nonexistent/a.gz\n"
                       "    train_labels: /nonexistent/b.gz\n    package: dataset-fashion-mnist\n"
                       "tasks:\n  t:\n    source: s\n";
    fb_config *c;
    REQUIRE_OK(fb_config_parse(yaml, &c));
    fb_taskset ts;
    EXPECT_ERROR(fb_taskset_load(c, 7, NULL, &ts), FB_ERR_IO, "apt-get install dataset-fashion-mnist");
    fb_config_free(c);
}

/* A tiny CLIP config.json for 4x4 one-channel images. */
static void write_tiny_config(const char *path)
{
    FILE *f = fopen(path, "w");
    fputs("{\"hidden_size\": 8, \"intermediate_size\": 16, \"num_attention_heads\": 2, "
          "\"num_hidden_layers\": 1, \"image_size\": 4, \"patch_size\": 2, \"num_channels\": 1, "
          "\"projection_dim\": 6}\n", f);
    fclose(f);
}

TEST(taskpool_accuracy_and_loss_match_a_direct_count)
{
    fb_clip_config cfg = {8, 16, 2, 1, 4, 2, 1, 6, 1, 1e-5f};
    fb_clip *net;
    REQUIRE_OK(fb_clip_create(&cfg, 64, &net));
    float *p = fb_clip_params(net);
    for (int64_t i = 0; i < fb_clip_num_params(net); i++) p[i] = sinf((float)i * 0.7f) * 0.5f;
    fb_model *weights;
    REQUIRE_OK(fb_clip_to_model(net, &weights));
    write_tiny_config(fb_test_path("config.json"));
    /* heads: task "all" 5 x 6, task "pairs" 2 x 6 */
    fb_model *heads;
    REQUIRE_OK(fb_model_create(&heads));
    float h5[30], h2[12];
    for (int i = 0; i < 30; i++) h5[i] = cosf((float)i);
    for (int i = 0; i < 12; i++) h2[i] = sinf((float)i * 1.3f);
    int64_t s5[2] = {5, 6}, s2[2] = {2, 6};
    REQUIRE_OK(fb_model_add_tensor(heads, "all", FB_F32, 2, s5, h5, NULL));
    REQUIRE_OK(fb_model_add_tensor(heads, "pairs", FB_F32, 2, s2, h2, NULL));
    REQUIRE_OK(fb_model_save(heads, fb_test_path("heads.safetensors"), NULL));
    char extra[8192];
    snprintf(extra, sizeof extra, "model_config: %s\nheads: %s\nlogit_scale: 10\nbatch_size: 7\n",
             fb_test_path("config.json"), fb_test_path("heads.safetensors"));
    fb_config *c = synthetic_taskpool("");
    REQUIRE(c);
    fb_config *more;
    REQUIRE_OK(fb_config_parse(extra, &more));
    for (int i = 0; i < more->count; i++) {
        fb_config *v;
        REQUIRE_OK(fb_cfg_copy(more->items[i], &v));
        REQUIRE_OK(fb_cfg_map_set(c, more->keys[i], v));
    }
    fb_taskpool *tp;
    REQUIRE_OK(fb_taskpool_open(c, &tp));
    REQUIRE(tp->set.num_tasks == 2);
    fb_task_result r[2];
    REQUIRE_OK(fb_taskpool_evaluate(tp, weights, NULL, r, NULL, NULL));
    /* the same by hand, one example at a time, in double */
    for (int t = 0; t < 2; t++) {
        const fb_task *task = &tp->set.tasks[t];
        const float *W = t == 0 ? h5 : h2;
        const int K = t == 0 ? 5 : 2;
        int64_t correct = 0;
        double loss = 0;
        for (int64_t i = 0; i < task->n[FB_SPLIT_TEST]; i++) {
            const float *feat;
            REQUIRE_OK(fb_clip_forward(net, task->x[FB_SPLIT_TEST] + i * 16, 1, &feat));
            double nf = 0, logits[5], mx = -1e30, z = 0;
            for (int j = 0; j < 6; j++) nf += (double)feat[j] * feat[j];
            int best = 0;
            for (int k = 0; k < K; k++) {
                double d = 0;
                for (int j = 0; j < 6; j++) d += (double)feat[j] * W[k * 6 + j];
                logits[k] = 10.0 * d / sqrt(nf);
                if (logits[k] > logits[best]) best = k;
                if (logits[k] > mx) mx = logits[k];
            }
            for (int k = 0; k < K; k++) z += exp(logits[k] - mx);
            loss += -(logits[task->y[FB_SPLIT_TEST][i]] - mx - log(z));
            correct += best == task->y[FB_SPLIT_TEST][i];
        }
        const double n = (double)task->n[FB_SPLIT_TEST];
        EXPECT(r[t].examples == task->n[FB_SPLIT_TEST]);
        EXPECT(fabs(r[t].accuracy - (double)correct / n) < 1e-12);
        EXPECT(fabs(r[t].loss - loss / n) < 1e-4 * (1 + loss / n));
        EXPECT(r[t].accuracy > 0.0 && r[t].accuracy < 1.0); /* a real mix of right and wrong */
    }
    /* a head of the wrong shape is refused before any work */
    fb_taskpool_free(tp);
    REQUIRE_OK(fb_cfg_override(c, "heads", fb_test_path("config.json")));
    EXPECT(fb_taskpool_open(c, &tp) != FB_OK);
    fb_config_free(more);
    fb_config_free(c);
    fb_model_free(heads);
    fb_model_free(weights);
    fb_clip_free(net);
}

static int run_cli(char **out, const char *const *args)
{
    const char *argv[24] = {fb_test_cli};
    int n = 1;
    for (; args[n - 1] && n < 23; n++) argv[n] = args[n - 1];
    argv[n] = NULL;
    char *err = NULL;
    int rc = fb_test_run(argv, out, &err);
    if (rc != 0) fb_test_fail(__FILE__, __LINE__, "fusion_bench exited %d: %s", rc, err ? err : "");
    free(err);
    return rc;
}

static int same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = fb_test_read_file(a, &na), *y = fb_test_read_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

static void interrupt_at_step(void *user, const char *what, int64_t step, int64_t steps,
                              double loss)
{
    (void)user, (void)what, (void)step, (void)steps, (void)loss;
    fb_interrupt();
}

/* The synthetic taskpool as tasks.yaml in the test folder; 0 if it cannot be written. */
static int write_synthetic_tasks(void)
{
    fb_config *c = synthetic_taskpool("");
    char *y = c ? fb_cfg_to_yaml(c) : NULL;
    fb_config_free(c);
    int ok = y && fb_test_write_file(fb_test_path("tasks.yaml"), y, strlen(y)) == 0;
    free(y);
    return ok;
}

/* Writes a tiny zoo config (output zoo_<name>, `opts` appended to its pretrain and head
 * mappings) and builds it; returns the command's output. */
static char *tiny_zoo(const char *name, const char *pretrain_tasks, const char *pre_opt,
                      const char *head_opt)
{
    char zoo[8192], path[4200], zarg[4300];
    snprintf(zoo, sizeof zoo,
             "taskpool: %s\noutput_dir: %s_%s\nseed: 5\n"
             "model: {hidden_size: 8, intermediate_size: 16, num_attention_heads: 2,\n"
             "        num_hidden_layers: 1, patch_size: 2, projection_dim: 6}\n"
             "pretrain: {tasks: %s, steps: 20, batch_size: 16, examples_per_task: 200,\n"
             "           lr: 0.003, weight_decay: 0.0%s}\n"
             "head: {examples: 200, steps: 0, lr: 0.01%s}\n"
             "finetune: {optimizer: adamw, momentum: 0.9, steps: 3, batch_size: 16, lr: 0.003,\n"
             "           weight_decay: 0.0}\n",
             fb_test_path("tasks.yaml"), fb_test_path("zoo"), name, pretrain_tasks, pre_opt, head_opt);
    snprintf(path, sizeof path, "%s.yaml", fb_test_path(name));
    fb_test_write_file(path, zoo, strlen(zoo));
    snprintf(zarg, sizeof zarg, "zoo=%s", path);
    char *out = NULL;
    if (run_cli(&out, (const char *[]){"zoo", zarg, NULL}) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* 1 when tensor `name` of zoo_<a>/<file> and zoo_<b>/<file> hold the same bytes */
static int same_tensor(const char *a, const char *b, const char *file, const char *name)
{
    char pa[4200], pb[4200];
    snprintf(pa, sizeof pa, "%s_%s/%s", fb_test_path("zoo"), a, file);
    snprintf(pb, sizeof pb, "%s_%s/%s", fb_test_path("zoo"), b, file);
    fb_model *ma = NULL, *mb = NULL;
    int same = 0;
    if (!fb_model_load(pa, &ma) && !fb_model_load(pb, &mb)) {
        const fb_tensor *ta = fb_model_find(ma, name), *tb = fb_model_find(mb, name);
        const void *da, *db;
        if (ta && tb && !fb_tensor_data(ta, &da) && !fb_tensor_data(tb, &db) &&
            fb_tensor_nbytes(ta) == fb_tensor_nbytes(tb))
            same = !memcmp(da, db, (size_t)fb_tensor_nbytes(ta));
        else
            fb_test_fail(__FILE__, __LINE__, "tensor %s missing in %s or %s", name, pa, pb);
    }
    fb_model_free(ma);
    fb_model_free(mb);
    return same;
}

TEST(zoo_heads_from_untransformed_images_and_pretraining_on_source_labels)
{
    REQUIRE(write_synthetic_tasks());
    char *out = tiny_zoo("own", "[all]", "", "");
    REQUIRE(out);
    free(out);
    /* one pretraining task without a class map: its labels are its source's, the same run */
    REQUIRE((out = tiny_zoo("src", "[all]", ", labels: source", "")));
    free(out);
    EXPECT(same_tensor("own", "src", "_pretrained_.safetensors", "visual_projection.weight"));
    EXPECT(same_tensor("own", "src", "heads.safetensors", "pairs"));
    /* heads of the untransformed images: the same for `all` (no transform), not for `pairs`
     * (rot90 + invert), from the same pretrained tower */
    REQUIRE((out = tiny_zoo("unt", "[all]", "", ", images: untransformed")));
    free(out);
    EXPECT(same_tensor("own", "unt", "_pretrained_.safetensors", "visual_projection.weight"));
    EXPECT(same_tensor("own", "unt", "heads.safetensors", "all"));
    EXPECT(!same_tensor("own", "unt", "heads.safetensors", "pairs"));
    /* both tasks: their 5 + 2 classes side by side, or the source's 5 shared */
    REQUIRE((out = tiny_zoo("both", "[all, pairs]", "", "")));
    EXPECT(strstr(out, "of 2 tasks (7 classes)"));
    free(out);
    REQUIRE((out = tiny_zoo("both_src", "[all, pairs]", ", labels: source", "")));
    EXPECT(strstr(out, "of 2 tasks (5 classes)"));
    free(out);
    EXPECT(!same_tensor("both", "both_src", "_pretrained_.safetensors", "visual_projection.weight"));
    char zarg[4300];
    snprintf(zarg, sizeof zarg, "zoo=%s.yaml", fb_test_path("own"));
    EXPECT_CLI_ERROR(((const char *[]){"zoo", zarg, "head.images=sideways", NULL}),
                     "head.images must be task or untransformed");
    EXPECT_CLI_ERROR(((const char *[]){"zoo", zarg, "pretrain.labels=[source]", NULL}),
                     "pretrain.labels");
}

/* Builds tiny zoo <name> over every task; zarg gets the zoo= argument that names its config. */
static int base_zoo(const char *name, char *zarg, size_t size)
{
    char *out = tiny_zoo(name, "[all]", "", "");
    if (!out) return 0;
    free(out);
    snprintf(zarg, size, "zoo=%s.yaml", fb_test_path(name));
    return 1;
}

/* Rebuilds the zoo config `zarg` into <zoo>_<suffix> with one override; the CLI's status. */
static int zoo_variant(const char *zarg, const char *suffix, const char *override)
{
    char out[4300];
    snprintf(out, sizeof out, "output_dir=%s_%s", fb_test_path("zoo"), suffix);
    return run_cli(NULL, (const char *[]){"zoo", zarg, out, override, NULL});
}

TEST(zoo_finetune_eps_and_examples_default_to_torch_and_all_and_change_the_models)
{
    REQUIRE(write_synthetic_tasks());
    char zarg[4300];
    REQUIRE(base_zoo("eps0", zarg, sizeof zarg));
    /* absent, finetune.eps is torch's 1e-8: the same models as when it is given */
    REQUIRE(zoo_variant(zarg, "eps1", "finetune.eps=0.00000001") == 0);
    EXPECT(same_tensor("eps0", "eps1", "all.safetensors", "visual_projection.weight"));
    /* a large one damps the small-gradient updates: other fine-tuned models, same pretraining */
    REQUIRE(zoo_variant(zarg, "eps2", "finetune.eps=0.01") == 0);
    EXPECT(same_tensor("eps0", "eps2", "_pretrained_.safetensors", "visual_projection.weight"));
    EXPECT(!same_tensor("eps0", "eps2", "all.safetensors", "visual_projection.weight"));
    EXPECT_CLI_ERROR(((const char *[]){"zoo", zarg, "finetune.eps=0", NULL}),
                     "finetune.eps must be in");
    /* finetune.examples: the first N training examples; at least the split's size is all */
    REQUIRE(zoo_variant(zarg, "ex3", "finetune.examples=1000000") == 0);
    EXPECT(same_tensor("eps0", "ex3", "all.safetensors", "visual_projection.weight"));
    REQUIRE(zoo_variant(zarg, "ex4", "finetune.examples=5") == 0);
    EXPECT(same_tensor("eps0", "ex4", "_pretrained_.safetensors", "visual_projection.weight"));
    EXPECT(!same_tensor("eps0", "ex4", "all.safetensors", "visual_projection.weight"));
    EXPECT_CLI_ERROR(((const char *[]){"zoo", zarg, "finetune.examples=0", NULL}),
                     "finetune.examples");
    /* a misspelt key is named, not ignored */
    EXPECT_CLI_ERROR(((const char *[]){"zoo", zarg, "finetune.esp=0.01", NULL}),
                     "unknown zoo key 'finetune.esp'");
}

/* The Gram matrix of a head's rows (K x K), from zoo <suffix>; 0 when the head is missing. */
static int head_gram(const char *suffix, const char *task, double *gram, int64_t max_k, int64_t *k)
{
    char path[4200];
    snprintf(path, sizeof path, "%s_%s/heads.safetensors", fb_test_path("zoo"), suffix);
    fb_model *m = NULL;
    const void *d = NULL;
    int ok = !fb_model_load(path, &m);
    const fb_tensor *t = ok ? fb_model_find(m, task) : NULL;
    ok = t && !fb_tensor_data(t, &d) && fb_tensor_ndim(t) == 2 && fb_tensor_shape(t)[0] <= max_k;
    if (ok) {
        const float *w = d;
        const int64_t K = fb_tensor_shape(t)[0], F = fb_tensor_shape(t)[1];
        for (int64_t a = 0; a < K; a++)
            for (int64_t b = 0; b < K; b++) {
                double s = 0;
                for (int64_t j = 0; j < F; j++) s += (double)w[a * F + j] * w[b * F + j];
                gram[a * K + b] = s;
            }
        *k = K;
    }
    fb_model_free(m);
    return ok;
}

TEST(zoo_head_gap_turns_every_head_by_one_rotation)
{
    REQUIRE(write_synthetic_tasks());
    char zarg[4300];
    REQUIRE(base_zoo("gap0", zarg, sizeof zarg));
    /* absent, head.gap is 0: the tower's own prototypes */
    REQUIRE(zoo_variant(zarg, "gap1", "head.gap=0") == 0);
    EXPECT(same_tensor("gap0", "gap1", "heads.safetensors", "all"));
    /* 1: the rows turned by an orthogonal matrix, so their inner products stay as they were */
    REQUIRE(zoo_variant(zarg, "gap2", "head.gap=1") == 0);
    EXPECT(!same_tensor("gap0", "gap2", "heads.safetensors", "all"));
    EXPECT(same_tensor("gap0", "gap2", "_pretrained_.safetensors", "visual_projection.weight"));
    double g0[64 * 64], g2[64 * 64];
    int64_t k0 = 0, k2 = 0;
    REQUIRE(head_gram("gap0", "all", g0, 64, &k0) && head_gram("gap2", "all", g2, 64, &k2));
    REQUIRE(k0 == k2 && k0 > 1);
    for (int64_t i = 0; i < k0 * k0; i++) EXPECT(fabs(g2[i] - g0[i]) < 1e-5);
    /* between: unit rows, other fine-tuned models */
    REQUIRE(zoo_variant(zarg, "gap3", "head.gap=0.5") == 0);
    REQUIRE(head_gram("gap3", "all", g2, 64, &k2));
    for (int64_t i = 0; i < k2; i++) EXPECT(fabs(g2[i * k2 + i] - 1.0) < 1e-5);
    EXPECT(!same_tensor("gap0", "gap3", "all.safetensors", "visual_projection.weight"));
    EXPECT_CLI_ERROR(((const char *[]){"zoo", zarg, "head.gap=1.5", NULL}), "head.gap must be in");
}

TEST(zoo_builds_a_tiny_pool_deterministically_and_reuses_it)
{
    REQUIRE(write_synthetic_tasks());
    char zoo[8192];
    snprintf(zoo, sizeof zoo,
             "taskpool: %s\noutput_dir: %s\nseed: 5\n"
             "model: {hidden_size: 8, intermediate_size: 16, num_attention_heads: 2,\n"
             "        num_hidden_layers: 1, patch_size: 2, projection_dim: 6}\n"
             "pretrain: {tasks: [all], steps: 20, batch_size: 16, examples_per_task: 200,\n"
             "           lr: 0.003, weight_decay: 0.0}\n"
             "head: {examples: 200, steps: 5, lr: 0.01}\n"
             "finetune: {optimizer: adamw, momentum: 0.9, steps: 15, batch_size: 16, lr: 0.003,\n"
             "           weight_decay: 0.0}\n",
             fb_test_path("tasks.yaml"), fb_test_path("zoo1"));
    fb_test_write_file(fb_test_path("zoo.yaml"), zoo, strlen(zoo));
    char zarg[4200], out2[4200];
    snprintf(zarg, sizeof zarg, "zoo=%s", fb_test_path("zoo.yaml"));
    snprintf(out2, sizeof out2, "output_dir=%s", fb_test_path("zoo2"));
    char *out = NULL;
    REQUIRE(run_cli(&out, (const char *[]){"--threads", "1", "zoo", zarg, NULL}) == 0);
    EXPECT(out && strstr(out, "done"));
    free(out);
    REQUIRE(run_cli(NULL, (const char *[]){"--threads", "2", "zoo", zarg, out2, NULL}) == 0);
    const char *files[] = {"_pretrained_.safetensors", "all.safetensors", "pairs.safetensors",
                           "heads.safetensors", "config.json", "modelpool.yaml"};
    char a[4200], b[4200];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(a, sizeof a, "%s/%s", fb_test_path("zoo1"), files[i]);
        snprintf(b, sizeof b, "%s/%s", fb_test_path("zoo2"), files[i]);
        if (!same_file(a, b)) fb_test_fail(__FILE__, __LINE__, "%s differs for 1 and 2 threads", files[i]);
    }
    /* fine-tuning moved the weights */
    snprintf(a, sizeof a, "%s/_pretrained_.safetensors", fb_test_path("zoo1"));
    snprintf(b, sizeof b, "%s/all.safetensors", fb_test_path("zoo1"));
    EXPECT(!same_file(a, b));
    /* a second run reuses it; a changed input rebuilds */
    REQUIRE(run_cli(&out, (const char *[]){"zoo", zarg, NULL}) == 0);
    EXPECT(out && strstr(out, "up to date"));
    free(out);
    /* --force (the subcommand's option, anywhere after `zoo`) rebuilds it, to the same bytes */
    REQUIRE(run_cli(&out, (const char *[]){"--threads", "2", "zoo", "--force", zarg, NULL}) == 0);
    EXPECT(out && !strstr(out, "up to date") && strstr(out, "done"));
    free(out);
    snprintf(a, sizeof a, "%s/_pretrained_.safetensors", fb_test_path("zoo1"));
    snprintf(b, sizeof b, "%s/_pretrained_.safetensors", fb_test_path("zoo2"));
    EXPECT(same_file(a, b));
    /* the merged pool is evaluated on every task */
    char mp[4200], tp[4200], rp[4200];
    snprintf(mp, sizeof mp, "modelpool=%s/modelpool.yaml", fb_test_path("zoo1"));
    snprintf(tp, sizeof tp, "taskpool=%s/taskpool.yaml", fb_test_path("zoo1"));
    snprintf(rp, sizeof rp, "report_save_path=%s", fb_test_path("report.json"));
    REQUIRE(run_cli(&out, (const char *[]){"method=task_arithmetic", mp, tp, rp, NULL}) == 0);
    EXPECT(out && strstr(out, "pairs") && strstr(out, "average"));
    free(out);
    char *rep = fb_test_read_file(fb_test_path("report.json"), NULL);
    EXPECT(rep && strstr(rep, "\"taskpool\"") && strstr(rep, "\"accuracy\""));
    free(rep);
    /* data-driven methods: same bytes for 1 and 2 threads; clear errors before any work */
    char o1[4200], o2[4200];
    snprintf(o1, sizeof o1, "merged_model_save_path=%s", fb_test_path("ada1.safetensors"));
    snprintf(o2, sizeof o2, "merged_model_save_path=%s", fb_test_path("ada2.safetensors"));
    REQUIRE(run_cli(&out, (const char *[]){"--threads", "1", "method=adamerging", "method.max_steps=3",
                                          mp, tp, o1, NULL}) == 0);
    EXPECT(out && strstr(out, "learned in 3 steps"));
    free(out);
    REQUIRE(run_cli(NULL, (const char *[]){"--threads", "2", "method=adamerging", "method.max_steps=3",
                                          mp, tp, o2, NULL}) == 0);
    EXPECT(same_file(fb_test_path("ada1.safetensors"), fb_test_path("ada2.safetensors")));
    /* Weight-Ensembling MoE: the routers adapted on the same batches to the same bytes; the
     * saved model evaluates like the run that made it */
    snprintf(o1, sizeof o1, "merged_model_save_path=%s", fb_test_path("we1.safetensors"));
    snprintf(o2, sizeof o2, "merged_model_save_path=%s", fb_test_path("we2.safetensors"));
    REQUIRE(run_cli(&out, (const char *[]){"--threads", "1", "method=weight_ensembling_moe",
                                          "method.max_steps=3", "method.batch_size=4", mp, tp, o1,
                                          NULL}) == 0);
    EXPECT(out && strstr(out, "learned in 3 steps") && strstr(out, "average"));
    REQUIRE(run_cli(NULL, (const char *[]){"--threads", "2", "method=weight_ensembling_moe",
                                          "method.max_steps=3", "method.batch_size=4", mp, tp, o2,
                                          NULL}) == 0);
    EXPECT(same_file(fb_test_path("we1.safetensors"), fb_test_path("we2.safetensors")));
    {
        char ck[4200];
        char *out2 = NULL;
        snprintf(ck, sizeof ck, "method.checkpoint=%s", fb_test_path("we1.safetensors"));
        REQUIRE(run_cli(&out2, (const char *[]){"--threads", "2", "method=weight_ensembling_moe",
                                               ck, mp, tp, NULL}) == 0);
        /* the evaluation table (1 thread there, 2 here): the same */
        const char *a = out ? strstr(out, "  task ") : NULL;
        const char *b = out2 ? strstr(out2, "  task ") : NULL;
        const char *ea = a ? strstr(a, "(evaluation") : NULL;
        const char *eb = b ? strstr(b, "(evaluation") : NULL;
        EXPECT(a && b && ea && eb && ea - a == eb - b && !memcmp(a, b, (size_t)(ea - a)));
        free(out2);
    }
    free(out);
    /* the same through the C API: a pool, a task pool, a method; then the evaluation the
     * command printed */
    {
        char path[4200];
        fb_modelpool *pool;
        fb_taskpool *tpool;
        fb_method *m;
        fb_model *merged, *cli_merged;
        snprintf(path, sizeof path, "%s/modelpool.yaml", fb_test_path("zoo1"));
        REQUIRE_OK(fb_modelpool_load_config(path, &pool));
        snprintf(path, sizeof path, "%s/taskpool.yaml", fb_test_path("zoo1"));
        REQUIRE_OK(fb_taskpool_load(path, &tpool));
        REQUIRE(fb_taskpool_num_tasks(tpool) == 2);
        EXPECT(!strcmp(fb_taskpool_task_name(tpool, 1), "pairs") && !fb_taskpool_task_name(tpool, 2));
        REQUIRE_OK(fb_method_create("clip_layer_wise_adamerging", "{max_steps: 3}", &m));
        fb_run_options ro = {.taskpool = tpool};
        REQUIRE_OK(fb_method_run(m, pool, &ro, &merged));
        REQUIRE_OK(fb_model_load(fb_test_path("ada1.safetensors"), &cli_merged));
        EXPECT(fb_test_models_match(merged, cli_merged, 0));
        /* a request to stop ends a learning method at its next step, nothing returned */
        {
            fb_method *we;
            fb_model *none = NULL;
            REQUIRE_OK(fb_method_create("weight_ensembling_moe", "{max_steps: 50}", &we));
            fb_run_options ri = {.taskpool = tpool, .on_step = interrupt_at_step};
            EXPECT_ERROR(fb_method_run(we, pool, &ri, &none), FB_ERR_INTERRUPTED, "interrupted");
            EXPECT(none == NULL);
            fb_method_free(we);
        }
        fb_task_result res[2];
        REQUIRE_OK(fb_taskpool_evaluate_model(tpool, merged, res));
        char line[256];
        snprintf(line, sizeof line, "  %-24s %8.2f%% %8.4f %8lld", res[1].task, 100 * res[1].accuracy,
                 res[1].loss, (long long)res[1].examples);
        REQUIRE(run_cli(&out, (const char *[]){"method=adamerging", "method.max_steps=3", mp, tp, NULL}) == 0);
        EXPECT(out && strstr(out, line));
        free(out);
        fb_taskpool *none;
        snprintf(path, sizeof path, "%s/none.yaml", fb_test_path("zoo1"));
        EXPECT_ERROR(fb_taskpool_load(path, &none), FB_ERR_IO, "none.yaml");
        EXPECT(none == NULL);
        fb_model_free(merged);
        fb_model_free(cli_merged);
        fb_method_free(m);
        fb_taskpool_free(tpool);
        fb_modelpool_free(pool);
    }
    REQUIRE(run_cli(&out, (const char *[]){"method=fisher_merging", "method.num_fisher_examples=20",
                                          "method.batch_size=8", mp, tp, NULL}) == 0);
    EXPECT(out && strstr(out, "average"));
    free(out);
    REQUIRE(run_cli(&out, (const char *[]){"method=regmean", "method.num_regmean_examples=20",
                                          "method.batch_size=8", mp, tp, NULL}) == 0);
    EXPECT(out && strstr(out, "average"));
    free(out);
    REQUIRE(run_cli(&out, (const char *[]){"method=weighted_ensemble", "method.weights=[3,1]", mp, tp,
                                          NULL}) == 0);
    EXPECT(out && strstr(out, "average"));
    free(out);
    /* an ensemble weighing one model alone scores exactly as that model */
    char *solo = NULL, *dummy = NULL;
    REQUIRE(run_cli(&solo, (const char *[]){"method=weighted_ensemble", "method.weights=[0,1]", mp, tp,
                                           NULL}) == 0);
    REQUIRE(run_cli(&dummy, (const char *[]){"method=dummy", "method.model_name=pairs", mp, tp, NULL}) == 0);
    const char *a1 = solo ? strstr(solo, "  all ") : NULL, *a2 = dummy ? strstr(dummy, "  all ") : NULL;
    EXPECT(a1 && a2 && !strncmp(a1, a2, (size_t)(strchr(a2, '\n') - a2)));
    free(solo);
    /* the max predictor takes the element-wise maximum of the towers' outputs and projects it
     * with _pretrained_'s visual_projection (FusionBench): over copies of one model, with that
     * model as _pretrained_, it is that model */
    char same[8192];
    snprintf(same, sizeof same, "models:\n  _pretrained_: %s/pairs.safetensors\n"
                                "  x: %s/pairs.safetensors\n  y: %s/pairs.safetensors\n",
             fb_test_path("zoo1"), fb_test_path("zoo1"), fb_test_path("zoo1"));
    fb_test_write_file(fb_test_path("same.yaml"), same, strlen(same));
    char same_arg[4200];
    snprintf(same_arg, sizeof same_arg, "modelpool=%s", fb_test_path("same.yaml"));
    REQUIRE(run_cli(&solo, (const char *[]){"method=max_model_predictor", same_arg, tp, NULL}) == 0);
    a1 = solo ? strstr(solo, "  all ") : NULL;
    EXPECT(a1 && a2 && !strncmp(a1, a2, (size_t)(strchr(a2, '\n') - a2)));
    free(solo);
    free(dummy);
    const char *argv_bad0[] = {fb_test_cli, "method=simple_ensemble", mp, NULL};
    char *err0 = NULL;
    EXPECT(fb_test_run(argv_bad0, NULL, &err0) == 2 && err0 && strstr(err0, "ensemble is not one model"));
    free(err0);
    const char *argv_bad1[] = {fb_test_cli, "method=adamerging", mp, NULL};
    char *err = NULL;
    EXPECT(fb_test_run(argv_bad1, NULL, &err) == 2 && err && strstr(err, "learns from task data"));
    free(err);
    const char *argv_bad2[] = {fb_test_cli, "method=fisher_merging", "method.num_fisher_examples=0", mp, tp, NULL};
    EXPECT(fb_test_run(argv_bad2, NULL, &err) != 0 && err && strstr(err, "num_fisher_examples must be positive"));
    free(err);
    /* FusionBench's report schema, for scripts that collect its reports */
    char fb_rep[4200];
    snprintf(fb_rep, sizeof fb_rep, "report_save_path=%s", fb_test_path("fb_report.json"));
    REQUIRE(run_cli(NULL, (const char *[]){"method=task_arithmetic", "report_format=fusionbench", fb_rep,
                                           mp, tp, NULL}) == 0);
    char *fbr = fb_test_read_file(fb_test_path("fb_report.json"), NULL);
    cJSON *j = fbr ? cJSON_Parse(fbr) : NULL;
    const cJSON *info = cJSON_GetObjectItem(j, "model_info"), *avg = cJSON_GetObjectItem(j, "average");
    EXPECT(info && cJSON_GetObjectItem(info, "all_params") &&
           cJSON_GetObjectItem(info, "trainable_params") && avg &&
           cJSON_GetObjectItem(avg, "accuracy") && cJSON_GetObjectItem(avg, "loss"));
    double sum = 0;
    int tasks = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, j)
    {
        if (!strcmp(item->string, "model_info") || !strcmp(item->string, "average")) continue;
        sum += cJSON_GetObjectItem(item, "accuracy")->valuedouble;
        tasks++;
    }
    EXPECT(tasks >= 2 && avg && fabs(sum / tasks - cJSON_GetObjectItem(avg, "accuracy")->valuedouble) < 1e-12);
    EXPECT(!cJSON_GetObjectItem(j, "config") && !cJSON_GetObjectItem(j, "timings_s"));
    cJSON_Delete(j);
    free(fbr);
    /* against PyTorch (tests/reference/ensemble_max.py): the max predictor over two different
     * models, projected by _pretrained_'s visual_projection, on the task pool's own images */
    {
        char path[4200];
        snprintf(path, sizeof path, "%s/taskpool.yaml", fb_test_path("zoo1"));
        fb_taskpool *etp;
        fb_modelpool *epool;
        REQUIRE_OK(fb_taskpool_load(path, &etp));
        snprintf(path, sizeof path, "%s/modelpool.yaml", fb_test_path("zoo1"));
        REQUIRE_OK(fb_modelpool_load_config(path, &epool));
        const fb_model *models[2] = {fb_modelpool_get(epool, "all"), fb_modelpool_get(epool, "pairs")};
        const double w[2] = {0.5, 0.5};
        fb_task_result res[8];
        REQUIRE(models[0] && models[1] && etp->set.num_tasks <= 8);
        REQUIRE_OK(fb_taskpool_evaluate_ensemble(etp, models, 2, w, 1,
                                                 fb_modelpool_get(epool, "_pretrained_"), res, NULL, NULL));
        fb_model *dump;
        REQUIRE_OK(fb_model_create(&dump));
        const int64_t S = etp->set.image_size, C = etp->set.channels, F = fb_taskpool_features(etp);
        for (int t = 0; t < etp->set.num_tasks; t++) {
            const fb_task *task = &etp->set.tasks[t];
            char name[256];
            int64_t n = task->n[etp->split], ishape[4] = {n, C, S, S}, hshape[2] = {task->num_classes, F};
            float *head = malloc((size_t)(task->num_classes * F) * sizeof *head);
            REQUIRE(head && !fb_taskpool_head(etp, t, head));
            snprintf(name, sizeof name, "images.%s", task->name);
            REQUIRE_OK(fb_model_add_tensor(dump, name, FB_F32, 4, ishape, task->x[etp->split], NULL));
            snprintf(name, sizeof name, "labels.%s", task->name);
            REQUIRE_OK(fb_model_add_tensor(dump, name, FB_I32, 1, &n, task->y[etp->split], NULL));
            snprintf(name, sizeof name, "head.%s", task->name);
            REQUIRE_OK(fb_model_add_tensor(dump, name, FB_F32, 2, hshape, head, NULL));
            free(head);
        }
        int64_t one = 1;
        REQUIRE_OK(fb_model_add_tensor(dump, "logit_scale", FB_F32, 1, &one, &etp->logit_scale, NULL));
        REQUIRE_OK(fb_model_save(dump, fb_test_path("ens_inputs.safetensors"), NULL));
        fb_model_free(dump);
        char script[4200];
        snprintf(script, sizeof script, "%s/tests/reference/ensemble_max.py", fb_test_src_dir);
        const char *py[] = {"/usr/bin/python3", script, fb_test_path("zoo1"),
                            fb_test_path("ens_inputs.safetensors"), fb_test_path("ens_expected.json"),
                            "all", "pairs", NULL};
        char *pyerr = NULL;
        int prc = fb_test_run(py, NULL, &pyerr);
        if (prc) fb_test_fail(__FILE__, __LINE__, "ensemble_max.py: exit %d: %s", prc, pyerr);
        free(pyerr);
        char *ej = fb_test_read_file(fb_test_path("ens_expected.json"), NULL);
        cJSON *exp = ej ? cJSON_Parse(ej) : NULL;
        for (int t = 0; exp && t < etp->set.num_tasks; t++) {
            const cJSON *e = cJSON_GetObjectItem(exp, res[t].task);
            double ea = e ? cJSON_GetObjectItem(e, "accuracy")->valuedouble : -1;
            double el = e ? cJSON_GetObjectItem(e, "loss")->valuedouble : -1;
            /* float32 here, float64 there: one example whose top two logits nearly tie may go
             * either way, nothing more */
            double one_example = 1.0 / (double)res[t].examples + 1e-12;
            if (!e || fabs(ea - res[t].accuracy) > one_example || fabs(el - res[t].loss) > 1e-4 * fabs(el))
                fb_test_fail(__FILE__, __LINE__, "%s: accuracy %g loss %g, PyTorch %g %g", res[t].task,
                             res[t].accuracy, res[t].loss, ea, el);
        }
        EXPECT(exp != NULL);
        cJSON_Delete(exp);
        free(ej);
        fb_modelpool_free(epool);
        fb_taskpool_free(etp);
    }
    /* a sweep chosen on the validation split, the choice scored on the test split: the
     * selected run's test score is what evaluating that merge on the test split gives */
    char sweep_dir[4200];
    snprintf(sweep_dir, sizeof sweep_dir, "--sweep-dir=%s", fb_test_path("sweep"));
    REQUIRE(run_cli(&out, (const char *[]){"-m", "method=task_arithmetic", "method.scaling_factor=0.2,0.8",
                                           mp, tp, "--select-on=val", sweep_dir, NULL}) == 0);
    EXPECT(out && strstr(out, "Selected on the validation split: run "));
    free(out);
    char *sj = fb_test_read_file(fb_test_path("sweep/summary.json"), NULL);
    cJSON *sw = sj ? cJSON_Parse(sj) : NULL;
    const cJSON *sel = cJSON_GetObjectItem(sw, "selected");
    int chosen = sel ? cJSON_GetObjectItem(sel, "run")->valueint : -1;
    const cJSON *runs = cJSON_GetObjectItem(sw, "runs");
    double va = cJSON_GetObjectItem(cJSON_GetArrayItem(runs, 0), "accuracy")->valuedouble,
           vb = cJSON_GetObjectItem(cJSON_GetArrayItem(runs, 1), "accuracy")->valuedouble;
    EXPECT(chosen == (vb > va ? 1 : 0));
    REQUIRE(run_cli(&out, (const char *[]){"method=task_arithmetic", chosen ? "method.scaling_factor=0.8"
                                                                            : "method.scaling_factor=0.2",
                                           mp, tp, fb_rep, NULL}) == 0);
    free(out);
    char *direct = fb_test_read_file(fb_test_path("fb_report.json"), NULL);
    cJSON *dj = direct ? cJSON_Parse(direct) : NULL;
    const cJSON *davg = cJSON_GetObjectItem(cJSON_GetObjectItem(dj, "taskpool"), "average");
    EXPECT(sel && davg && cJSON_GetObjectItem(sel, "test_accuracy")->valuedouble ==
                              cJSON_GetObjectItem(davg, "accuracy")->valuedouble);
    cJSON_Delete(dj);
    free(direct);
    cJSON_Delete(sw);
    free(sj);
    /* method=dummy with a model name evaluates that model as it is */
    REQUIRE(run_cli(&out, (const char *[]){"method=dummy", "method.model_name=pairs", mp, tp,
                                          "taskpool.evaluate=[pairs]", NULL}) == 0);
    EXPECT(out && strstr(out, "pairs") && !strstr(out, "  all "));
    free(out);
}

TEST(per_task_models_are_rebuilt_from_masks_and_rescalers)
{
    /* merged = base + tau_uni; task a: mask [1,0,1,1], rescaler 0.5; task b: no data */
    fb_model *base, *merged, *extras;
    REQUIRE_OK(fb_model_create(&base));
    REQUIRE_OK(fb_model_create(&merged));
    REQUIRE_OK(fb_model_create(&extras));
    const float b[4] = {1, 2, 3, 4}, m[4] = {3, 0, 5, 2};
    const uint8_t mask[4] = {1, 0, 1, 1};
    const float r = 0.5f;
    int64_t shape[1] = {4}, one[1] = {1};
    REQUIRE_OK(fb_model_add_tensor(base, "w", FB_F32, 1, shape, b, NULL));
    REQUIRE_OK(fb_model_add_tensor(merged, "w", FB_F32, 1, shape, m, NULL));
    REQUIRE_OK(fb_model_add_tensor(extras, "a/w", FB_BOOL, 1, shape, mask, NULL));
    REQUIRE_OK(fb_model_add_tensor(extras, "a/__rescaler__", FB_F32, 1, one, &r, NULL));
    fb_model *ta = NULL, *tb = NULL;
    REQUIRE_OK(fb_task_model_from_extras(merged, base, extras, "a", &ta));
    REQUIRE_OK(fb_task_model_from_extras(merged, base, extras, "b", &tb));
    EXPECT(tb == NULL); /* nothing for b: the merged model is used */
    REQUIRE(ta);
    float got[4];
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(ta, "w"), got));
    const float want[4] = {1 + 0.5f * 2, 2, 3 + 0.5f * 2, 4 + 0.5f * -2};
    for (int i = 0; i < 4; i++) EXPECT(got[i] == want[i]);
    fb_model_free(ta);
    fb_model_free(base);
    fb_model_free(merged);
    fb_model_free(extras);
}
