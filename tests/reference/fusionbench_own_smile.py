"""FusionBench's own SmileMoELinear on the SMILE reference pool, against the reference features
that tests/test_smile.c holds FusionBench-C's upscaled model to.

    git -C FUSION_BENCH_REPO archive HEAD fusion_bench/models/smile_moe | tar -x -C DIR
    /usr/bin/python3 tests/reference/fusionbench_own_smile.py DIR REF_DIR

REF_DIR is `make test`'s build/ref (tests/reference/smile_ref.py wrote REF_DIR/smile). The
module files (linear_from_module.py, utils/) are executed from their source with their
relative imports resolved by hand (FusionBench itself is not installed here). For each case of
REF_DIR/smile/cases.json, every linear layer is built as FusionBench's SmileMoELinear from the
pool's nn.Linear layers (layers it refuses, ExpertNotTrainedError, stay plain), the tower run
with them (clip_torch's forward), and the features compared with the case's. Prints one row
per case: the largest difference relative to the features' largest value.
"""
import json
import os
import sys
import types

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st  # noqa: E402
from clip_torch import clip_forward  # noqa: E402

FB, REF = sys.argv[1], sys.argv[2]
SM = os.path.join(REF, "smile")
root = os.path.join(FB, "fusion_bench", "models", "smile_moe")


def module_from(path, name, extra, drop=""):
    """The module at path, executed with `extra` predefined and the import line `drop` (a
    relative import the predefined names stand for) removed."""
    mod = types.ModuleType(name)
    mod.__dict__.update(extra)
    src = open(path).read()
    if drop:
        assert drop in src, (path, drop)
        src = src.replace(drop, "")
    exec(compile(src, path, "exec"), mod.__dict__)
    return mod


svd_utils = module_from(os.path.join(root, "utils", "svd_utils.py"), "svd_utils", {})
utils = module_from(os.path.join(root, "utils", "__init__.py"), "utils", {"svd": svd_utils.svd},
                    "from .svd_utils import svd")
lfm = module_from(os.path.join(root, "linear_from_module.py"), "linear_from_module",
                  {"_is_all_zeros": utils._is_all_zeros, "svd": svd_utils.svd},
                  "from .utils import _is_all_zeros, svd")

cfg = json.load(open(os.path.join(SM, "config.json")))
base = st.load(os.path.join(SM, "_pretrained_.safetensors"))[0]
fines = [st.load(os.path.join(SM, m + ".safetensors"))[0] for m in ("a", "b", "c")]
images = st.load(os.path.join(SM, "images.safetensors"))[0]["images"]
cases = json.load(open(os.path.join(SM, "cases.json")))


def linear_module(P, prefix):
    w = P[prefix + ".weight"]
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=prefix + ".bias" in P)
    lin.weight.data = w.clone()
    if lin.bias is not None:
        lin.bias.data = P[prefix + ".bias"].clone()
    return lin


for name, case in cases.items():
    p = case["params"]
    layers = {}
    for n, w0 in base.items():
        if not (n.endswith(".weight") and w0.dim() == 2 and "embed" not in n):
            continue
        prefix = n[:-len(".weight")]
        try:
            moe = lfm.SmileMoELinear(linear_module(base, prefix),
                                     [linear_module(P, prefix) for P in fines],
                                     gate_k=p["gate_k"], k=p["k"], top_k=p["top_k"],
                                     routing_use_diff=p["routing_use_diff"])
        except lfm.ExpertNotTrainedError:
            continue
        layers[id(w0)] = moe
    P = dict(base)
    if p["average_experts"]:
        lin = {n[:-len(".weight")] for n, t in base.items() if n.endswith(".weight") and t.dim() == 2 and "embed" not in n}
        for n in base:
            parent = n.rsplit(".", 1)[0]
            if parent in lin:
                continue
            if not any(m.startswith(parent + ".") and "." in m[len(parent) + 1:] for m in base):
                P[n] = sum(Q[n] for Q in fines) / len(fines)
    ids = {id(P[n]): id(base[n]) for n in P}

    def linear(x, W, b=None):
        m = layers.get(ids.get(id(W), id(W)))
        return m(x) if m is not None else F.linear(x, W, b)

    with torch.no_grad():
        theirs = clip_forward(P, cfg, images, linear=linear)
    want = torch.tensor(case["features"])
    scale = want.abs().max().item()
    print(f"{name:20s} FusionBench's SmileMoELinear vs the reference: "
          f"{(theirs - want).abs().max().item() / scale:.2e}")
