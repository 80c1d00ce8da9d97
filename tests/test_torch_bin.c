/*
 * test_torch_bin.c: PyTorch checkpoints (torch.save's zip format) read without running pickle:
 * every tensor equal, bit for bit, to the same tensors saved as safetensors by the reference
 * script (tied weights, f16, bf16, int64, a 0-d tensor, a transposed tensor saved with its
 * strides, a slice at a storage offset, a Parameter, a module's state dict), sharded .bin
 * checkpoints, safetensors preferred in a folder holding both, and merges from .bin inputs
 * equal to merges from safetensors. Hostile files are in tests/data/bad (bin_*).
 */
#include <stdlib.h>

#include "harness.h"

static const char *ref(const char *name)
{
    static char ring[4][4096];
    static int next;
    char *p = ring[next++ % 4];
    snprintf(p, 4096, "%s/torch_bin/%s", fb_test_ref_dir, name);
    return p;
}

TEST(torch_bin_tensors_equal_their_safetensors_twins)
{
    fb_model *got, *want;
    REQUIRE_OK(fb_model_load(ref("single.bin"), &got));
    REQUIRE_OK(fb_model_load(ref("single.safetensors"), &want));
    EXPECT(fb_model_num_tensors(got) == 10);
    EXPECT(fb_test_models_match(got, want, 0));
    EXPECT(fb_tensor_dtype(fb_model_find(got, "brain")) == FB_BF16);
    EXPECT(fb_tensor_ndim(fb_model_find(got, "scalar")) == 0);
    fb_model_free(got);
    fb_model_free(want);
    /* sharded: pytorch_model.bin.index.json and its shards */
    char single[4096];
    snprintf(single, sizeof single, "%s/sharded_single.safetensors", fb_test_ref_dir);
    REQUIRE_OK(fb_model_load(ref("sharded"), &got));
    REQUIRE_OK(fb_model_load(single, &want));
    EXPECT(fb_test_models_match(got, want, 0));
    fb_model_free(got);
    fb_model_free(want);
    /* a folder with both formats: safetensors, as transformers prefers */
    REQUIRE_OK(fb_model_load(ref("both"), &got));
    float v[3] = {0};
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(got, "w"), v));
    EXPECT(v[0] == 1.0f && v[2] == 1.0f);
    fb_model_free(got);
}

TEST(merges_from_torch_bin_inputs_equal_merges_from_safetensors)
{
    const char *methods[] = {"method=task_arithmetic", "method=ties_merging", "method=magmax"};
    for (int i = 0; i < 3; i++) {
        char *out[2];
        size_t len[2];
        for (int f = 0; f < 2; f++) {
            char pool[4200], save[4200];
            snprintf(pool, sizeof pool, "modelpool=%s",
                     ref(f ? "pool_bin.yaml" : "pool_safetensors.yaml"));
            snprintf(save, sizeof save, "merged_model_save_path=%s",
                     fb_test_path(f ? "from_bin.safetensors" : "from_st.safetensors"));
            const char *argv[] = {fb_test_cli, methods[i], pool, save, NULL};
            char *err = NULL;
            int rc = fb_test_run(argv, NULL, &err);
            if (rc) fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", methods[i], rc, err);
            free(err);
            out[f] = fb_test_read_file(
                fb_test_path(f ? "from_bin.safetensors" : "from_st.safetensors"), &len[f]);
        }
        if (!out[0] || !out[1] || len[0] != len[1] || memcmp(out[0], out[1], len[0]))
            fb_test_fail(__FILE__, __LINE__, "%s: .bin and safetensors inputs merge differently",
                         methods[i]);
        free(out[0]);
        free(out[1]);
    }
}
