/*
 * torch_bin.h: PyTorch checkpoints (torch.save's zip format) read without running pickle.
 */
#ifndef FB_IO_TORCH_BIN_H
#define FB_IO_TORCH_BIN_H

#include "fusionbench.h"

/* Adds the tensors of the state dict in `path` (pytorch_model.bin) to model, lazily where they
 * are contiguous. A pickle that names anything a state dict does not need is refused by name,
 * without running it; every error names the file and the tensor or byte. */
fb_status fb_torch_bin_read(const char *path, fb_model *model);

#endif
