/*
 * fuzz_torchbin.c: libFuzzer target for the PyTorch checkpoint reader (ZIP directory, the
 * restricted pickle machine, storages and strides). The input is a whole .bin file; it is
 * loaded and every tensor read, so lazy and gathered tensors both see hostile bytes.
 */
#include "fuzz_common.h"

#include "io/torch_bin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_input_file("fuzz.bin", data, size, path);
    if (fd < 0) return 0;
    fb_model *m;
    if (fb_model_create(&m) == FB_OK && fb_torch_bin_read(path, m) == FB_OK) {
        fuzz_read_every_tensor(m);
    }
    fb_model_free(m);
    close(fd);
    return 0;
}
