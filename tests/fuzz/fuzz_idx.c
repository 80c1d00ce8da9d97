/*
 * fuzz_idx.c: libFuzzer target for the dataset readers that parse bytes: IDX files (plain or
 * gzip) and scikit-learn's digits CSV (plain; gzip goes through the same inflater as IDX).
 * The first byte picks the reader; the rest is the file.
 */
#include <stdint.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "io/dataset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (data[0] & 1) {
        fb_images d;
        if (fb_digits_parse((const char *)data + 1, size - 1, "fuzz.csv", &d) == FB_OK) {
            /* every label and pixel the parser accepted is in range */
            for (int64_t i = 0; i < d.n; i++)
                if (d.labels[i] < 0 || d.labels[i] > 9) abort();
            fb_images_free(&d);
        }
        return 0;
    }
    int nd;
    int64_t dims[4];
    uint8_t *payload = NULL;
    if (fb_idx_parse(data + 1, size - 1, "fuzz.idx", &nd, dims, &payload) == FB_OK) {
        uint64_t n = 1;
        for (int i = 0; i < nd; i++) n *= (uint64_t)dims[i];
        volatile uint8_t sink = 0;
        for (uint64_t i = 0; i < n; i++) sink ^= payload[i]; /* ASan checks the size claimed */
        (void)sink;
        fb_free(payload);
    }
    return 0;
}
