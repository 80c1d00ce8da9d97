/*
 * fuzz_common.h: what the checkpoint fuzz targets share: the input as a file, and reading
 * every tensor of what was loaded from it.
 */
#ifndef FB_FUZZ_COMMON_H
#define FB_FUZZ_COMMON_H

#include <fusionbench.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* The fuzz input as a memory-backed file; its fd (close it), path set to its /proc name.
 * -1 if it cannot be made. */
static int fuzz_input_file(const char *name, const uint8_t *data, size_t size, char path[64])
{
    int fd = memfd_create(name, 0);
    if (fd < 0) return -1;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    snprintf(path, 64, "/proc/self/fd/%d", fd);
    return fd;
}

/* Every tensor's bytes, and the float ones (up to 1M entries) converted to f32. */
static void fuzz_read_every_tensor(const fb_model *m)
{
    for (int64_t i = 0; i < fb_model_num_tensors(m); i++) {
        const fb_tensor *t = fb_model_tensor(m, i);
        const void *p;
        if (fb_tensor_data(t, &p) != FB_OK) continue;
        if (fb_dtype_is_float(fb_tensor_dtype(t)) && fb_tensor_numel(t) < (1 << 20)) {
            float *f = malloc((size_t)fb_tensor_numel(t) * 4 + 4);
            if (f) fb_tensor_to_f32(t, f);
            free(f);
        }
    }
}

#endif
