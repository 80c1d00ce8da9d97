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
    char **class_names;        /* num_classes names */
    int64_t n[FB_NUM_SPLITS];  /* examples per split (0 for splits not loaded) */
    float *x[FB_NUM_SPLITS];   /* [n, channels, size, size], normalised */
    int32_t *y[FB_NUM_SPLITS]; /* [n] labels in [0, num_classes) */
} fb_task;

typedef struct fb_taskset {
    int64_t image_size, channels;
    float mean[4], std[4];
    int num_tasks;
    fb_task *tasks;
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

/* The keys of a taskpool node that fb_taskset_load reads. */
int fb_taskset_key(const char *key);

#endif
