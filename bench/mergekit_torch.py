"""The PyTorch baseline of bench/scale's mergekit rows: mergekit's way of merging, on the same
checkpoints, with mergekit's own per-tensor code.

    /usr/bin/python3 bench/mergekit_torch.py METHOD POOL_YAML OUT_DIR REPORT_JSON SHARD_BYTES MERGEKIT

METHOD: ties or dare_ties, every model at weight 0.5 and density 0.5 (bench/scale's mergekit
configuration). MERGEKIT: a checkout (git archive HEAD mergekit | tar -x -C DIR). As mergekit
does it: tensor by tensor, each model's tensor read from its shard (pread into a fresh buffer),
in the checkpoints' dtype (no `dtype:` in the configuration, so bf16), task vectors stacked,
sparsified and masked by GTATask.execute with mergekit's sparsify (taken from its source by
tests/reference/mergekit_src.py), and the output kept in memory until a shard of SHARD_BYTES is
full, as mergekit's TensorWriter does. Writes REPORT_JSON (peak RSS, /proc/self/io).
"""
import json
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
sys.path.insert(0, HERE)
import mergekit_src  # noqa: E402
import scale_torch  # noqa: E402
import st  # noqa: E402


class Checkpoint:
    """A sharded folder read tensor by tensor (its index's weight_map and shard headers)."""

    def __init__(self, folder):
        with open(os.path.join(folder, "model.safetensors.index.json")) as f:
            wm = json.load(f)["weight_map"]
        self.where = {}
        for shard in sorted(set(wm.values())):
            path = os.path.join(folder, shard)
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            for name, e in header.items():
                a, b = e["data_offsets"]
                self.where[name] = (path, 8 + n + a, b - a, e["dtype"], e["shape"])
        self.names = list(wm)

    def tensor(self, name):
        path, off, size, dt, shape = self.where[name]
        buf = bytearray(size)
        with open(path, "rb") as fh:
            fh.seek(off)
            fh.readinto(memoryview(buf))
        return torch.frombuffer(buf, dtype=scale_torch.DTYPES[dt]).reshape(shape)


def main():
    method, pool_yaml, out_dir, report, shard_bytes, checkout = sys.argv[1:7]
    shard_bytes = int(float(shard_bytes))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    mergekit_src.use(checkout)
    sp = mergekit_src.load("sparsify.py", {"rescaled_masked_tensor", "magnitude", "bernoulli",
                                           "magnitude_outliers", "della_magprune", "sparsify"})
    sp["SparsificationMethod"] = types.SimpleNamespace(
        magnitude="magnitude", random="random", magnitude_outliers="magnitude_outliers",
        della_magprune="della_magprune")
    sp["RescaleNorm"] = types.SimpleNamespace(l1="l1", l2="l2", linf="linf")
    sp["torch"] = torch  # the real torch.bernoulli: mergekit's own random masks
    gta = mergekit_src.load("merge_methods/generalized_task_arithmetic.py",
                            {"GTATask", "get_task_vectors", "get_mask"},
                            {"sparsify": sp["sparsify"], "RescaleNorm": sp["RescaleNorm"]})
    kind = {"ties": ("magnitude", "sum", True, None), "dare_ties": ("random", "sum", False, "l1")}
    spars, cons, normalize, rescale = kind[method]
    paths = scale_torch.read_pool(pool_yaml)
    base_name = "_pretrained_"
    ckpts = {k: Checkpoint(v) for k, v in paths.items()}
    models = [k for k in paths if k != base_name]
    tparams = {k: {"weight": 0.5, "density": 0.5} for k in models}
    info = types.SimpleNamespace(is_embed=False, optional=False, name="")
    self = types.SimpleNamespace(
        method=types.SimpleNamespace(sparsification_method=spars, consensus_method=cons),
        weight_info=info, base_model=base_name,
        tensor_parameters=types.SimpleNamespace(data=tparams), int8_mask=False,
        normalize=normalize, lambda_=1.0, rescale_norm=rescale)
    os.makedirs(out_dir, exist_ok=True)
    shard, size, nshards, weight_map = {}, 0, 0, {}

    def flush():
        nonlocal shard, size, nshards
        nshards += 1
        fname = f"model-{nshards:05d}.safetensors"
        st.save(os.path.join(out_dir, fname), shard)
        weight_map.update({n: fname for n in shard})
        shard, size = {}, 0

    for name in ckpts[base_name].names:
        tensors = {k: ckpts[k].tensor(name) for k in [base_name] + models}
        info.name = name
        out = gta["GTATask"].execute(self, tensors) if tensors[base_name].is_floating_point() \
            else tensors[base_name]
        b = out.numel() * out.element_size()
        if shard and size + b > shard_bytes:
            flush()
        shard[name] = out
        size += b
    if shard:
        flush()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    scale_torch.write_report(report)


if __name__ == "__main__":
    main()
