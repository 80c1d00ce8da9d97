/*
 * tasks.h: image classification tasks defined in a taskpool YAML (config/taskpool/NAME.yaml):
 * named data sources (IDX files, scikit-learn's digits, image folders) and tasks built from
 * them by choosing or grouping classes and transforming the images (rotations, flips,
 * inversion, a fixed pixel permutation). Each task gets train/validation/test splits that
 * never share an example: drawn from a seeded permutation of the source (the test split from
 * the source's own test files when it has them). Images come out CLIP-preprocessed as floats
 * [n, channels, size, size].
 *
 *   image_size: 28            # the models' input size (resize + centre crop)
 *   channels: 1
 *   mean: [0.286]             # normalisation per channel
 *   std: [0.353]
 *   seed: 0                   # the split permutations
 *   resample: stb             # stb_image_resize, or clip: CLIPProcessor's Pillow bicubic
 *   storage: float            # or bytes: images kept as bytes (a quarter of the memory),
 *                             #   normalised when read; tasks without transforms only
 *   image_cache: null         # a folder: image folders' preprocessed bytes cached there and
 *                             #   memory-mapped by later runs
 *   sources:
 *     fashion_mnist: {type: idx, train_images: ..., train_labels: ..., test_images: ...,
 *                     test_labels: ..., package: dataset-fashion-mnist}
 *     digits: {type: digits_csv, path: .../digits.csv.gz, package: python3-sklearn}
 *     mine: {type: image_folder, path: DIR}         # or train: DIR, test: DIR
 *   tasks:
 *     fashion_coarse:
 *       source: fashion_mnist
 *       classes: {tops: [0, 2, 4, 6], bottoms: [1, 3], shoes: [5, 7, 9], bags: [8]}
 *       transform: [rot90]
 *       train: 6000
 *       val: 500
 *       test: 1000
 */
#ifndef FB_POOL_TASKS_H
#define FB_POOL_TASKS_H
#include "config/config.h"

enum { FB_SPLIT_TRAIN, FB_SPLIT_VAL, FB_SPLIT_TEST, FB_NUM_SPLITS };
#define FB_SPLIT_BIT(s) (1u << (s))
extern const char *const fb_split_names[FB_NUM_SPLITS];

typedef struct fb_task {
    char *name;
    int64_t num_classes;
    char **class_names;       /* num_classes names */
    int64_t n[FB_NUM_SPLITS]; /* examples per split (0 for splits not loaded) */
    float *x[FB_NUM_SPLITS];  /* [n, channels, size, size], normalised (float storage) */
    /* byte storage: example i is the size x size x channels bytes at
     * pixels[split] + idx[split][i] * size * size * channels (a view of the source's pool) */
    const uint8_t *pixels[FB_NUM_SPLITS];
    int64_t *idx[FB_NUM_SPLITS];
    int32_t *y[FB_NUM_SPLITS]; /* [n] labels in [0, num_classes) */
} fb_task;

typedef struct fb_taskset {
    int64_t image_size, channels;
    float mean[4], std[4];
    int num_tasks;
    fb_task *tasks;
    int resample;           /* FB_RESAMPLE_* */
    int bytes;              /* byte storage: images stay bytes until read (fb_task_image) */
    struct fb_images *held; /* the source pools byte-stored tasks view */
    int num_held;
} fb_taskset;

/* Builds the tasks of a taskpool node (its `sources`, `tasks`, image and split settings),
 * loading the splits in `splits` (FB_SPLIT_BIT mask). Keys other than those tasks.h reads
 * are left to the caller (the taskpool checks them). A missing data file names the Debian
 * package to install when the source says which. `only` (NULL: all) is a sequence of the
 * task names to build; sources no built task uses are not read. */
fb_status fb_taskset_load(const fb_config *node, unsigned splits, const fb_config *only,
                          fb_taskset *out);
void fb_taskset_free(fb_taskset *ts);

/* A path in a config, resolved against the folder of the YAML file it came from (as given when
 * it came from the command line); `what` names it in errors. *out is fb_malloc'd. */
fb_status fb_cfg_path(const fb_config *node, const char *what, char **out);

/* A seeded permutation of [0, n) into p (Fisher-Yates with the counter-based generator). */
void fb_permutation(int64_t *p, int64_t n, uint64_t key);

/* Whether a task has `split` loaded; example i of it as normalised floats [channels, size,
 * size] into dst (either storage). */
int fb_task_has_split(const fb_task *t, int split);
void fb_task_image(const fb_taskset *ts, const fb_task *t, int split, int64_t i, float *dst);
/* Batch `step` of B examples of `split` drawn with replacement for test-time adaptation: slot
 * b is example mix64(key + (step B + b) golden) mod n, a function of (key, step, slot) alone;
 * key = fb_rng_key(seed, task name, stream). Into dst [B, channels, size, size]. */
void fb_task_draw_batch(const fb_taskset *ts, const fb_task *t, int split, uint64_t key,
                        int64_t step, int64_t B, float *dst);

/* The keys of a taskpool node that fb_taskset_load reads. */
int fb_taskset_key(const char *key);

#endif
