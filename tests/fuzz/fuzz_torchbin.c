/*
 * fuzz_torchbin.c: libFuzzer target for the PyTorch checkpoint reader (ZIP directory, the
 * restricted pickle machine, storages and strides). The input is a whole .bin file; it is
 * loaded and every tensor read, so lazy and gathered tensors both see hostile bytes.
 */
#include <fusionbench.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io/torch_bin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.bin", 0);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    fb_model *m;
    if (fb_model_create(&m) == FB_OK && fb_torch_bin_read(path, m) == FB_OK) {
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
    fb_model_free(m);
    close(fd);
    return 0;
}
