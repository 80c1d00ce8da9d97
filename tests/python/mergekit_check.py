"""fusionbench_c.mergekit from Python: a mergekit configuration of the reference pool against
PyTorch's result (tests/reference/mergekit_ref.py), an extracted adapter, and errors.

    /usr/bin/python3 tests/python/mergekit_check.py SRC_DIR REF_DIR TMP_DIR
Prints "ok ..." when every check passes."""
import os
import sys

src, ref, tmp = sys.argv[1:4]
sys.path.insert(0, os.path.join(src, "tests", "reference"))
import st  # noqa: E402
import torch  # noqa: E402

from fusionbench_c import FusionBenchError, mergekit  # noqa: E402

pool = os.path.join(ref, "mergekit", "f32")
os.chdir(pool)  # the configurations name the pool's folders
out = os.path.join(tmp, "ties")
mergekit.run("ties_f32.yml", out)
got, _, _ = st.load_raw(os.path.join(out, "model.safetensors"))
want, _, _ = st.load_raw("ties_f32.expected.safetensors")
assert set(got) == set(want), "tensor names differ"
for n in want:
    g, w = st.to_torch(*got[n]).float(), st.to_torch(*want[n]).float()
    assert (g - w).abs().max() <= 1e-6 * w.abs().max(), n

mergekit.run("dare_ties.yml", os.path.join(tmp, "dry"), random_seed=7, dry_run=True)
assert not os.path.exists(os.path.join(tmp, "dry")), "a dry run wrote"

adapter = os.path.join(tmp, "adapter")
mergekit.extract_lora("a", "base", adapter, max_rank=3, exclude=[r"layers\.3\."],
                      skip_undecomposable=True)
raw, _, _ = st.load_raw(os.path.join(adapter, "adapter_model.safetensors"))
a = st.to_torch(*raw["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"])
assert a.shape == torch.Size([3, 16]), a.shape
assert not any("layers.3." in n or "layernorm" in n for n in raw), "excluded modules kept"

try:
    mergekit.run(os.path.join(tmp, "missing.yml"), os.path.join(tmp, "x"))
    raise AssertionError("a missing configuration did not raise")
except FusionBenchError as e:
    assert "missing.yml" in str(e), str(e)
print("ok mergekit: ties as PyTorch, dry run, extract_lora, errors")
