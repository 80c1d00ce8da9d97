"""mergekit's own per-tensor code on the reference cases, against FusionBench-C's outputs.

    git -C MERGEKIT_REPO archive HEAD mergekit | tar -x -C DIR
    /usr/bin/python3 tests/reference/mergekit_own.py DIR REF_DIR [OUT_DIR]

REF_DIR is `make test`'s build/ref (tests/reference/mergekit_ref.py wrote REF_DIR/mergekit).
Each case is run with `fusion_bench mergekit` into OUT_DIR (default: a temporary folder) and
recomputed tensor by tensor with mergekit's functions and Task.execute methods, taken from its
source files with Python's ast module (its framework, pydantic and the task graph, is not
installed here; a namespace object stands in for `self`). Parameters per tensor come from
mergekit_ref.plan (mergekit's ConfigReader semantics). mergekit's torch.bernoulli calls are
redirected to the project's counter-based generator, so DARE's and DELLA's masks are the same
draws. Prints one row per case: the largest difference relative to the tensor's largest value.
"""
import json
import os
import subprocess
import sys
import tempfile
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import methods_ref as R  # noqa: E402
import mergekit_plan as P  # noqa: E402
import mergekit_src  # noqa: E402
from mergekit_src import BERNOULLI, load  # noqa: E402
import st  # noqa: E402

MK, REF = sys.argv[1], sys.argv[2]
OUT = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp()
os.makedirs(OUT, exist_ok=True)
CLI = os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "fusion_bench")
mergekit_src.use(MK)


sp = load("sparsify.py", {"SparsificationMethod", "RescaleNorm", "rescaled_masked_tensor",
                          "magnitude", "magnitude_outliers", "bernoulli", "della_magprune",
                          "sparsify"})
# the enums as plain strings (their classes are str Enums in mergekit)
sp["SparsificationMethod"] = types.SimpleNamespace(magnitude="magnitude", random="random",
                                                   magnitude_outliers="magnitude_outliers",
                                                   della_magprune="della_magprune")
sp["RescaleNorm"] = types.SimpleNamespace(l1="l1", l2="l2", linf="linf")
gta = load("merge_methods/generalized_task_arithmetic.py", {"GTATask", "get_task_vectors", "get_mask"},
           {"sparsify": sp["sparsify"], "RescaleNorm": sp["RescaleNorm"]})
rect = lambda weight_info, tensors: None  # noqa: E731  (shapes agree here)
lin = load("merge_methods/linear.py", {"LinearMergeTask"}, {"rectify_embed_sizes": rect})
slerp_ns = load("merge_methods/slerp.py", {"slerp", "lerp", "maybe_torch", "normalize"})
nus = load("merge_methods/nuslerp.py", {"nuslerp", "NuSlerpTask"}, {"rectify_embed_sizes": rect})
msl = load("merge_methods/multislerp.py", {"multislerp"})
kar = load("merge_methods/karcher.py", {"karcher_merge_tensors"})
stock = load("merge_methods/model_stock.py", {"ModelStockMergeTask"}, {"rectify_embed_sizes": rect})
sce = load("merge_methods/sce.py", {"sce_merge", "sce_weight", "sce_mask"},
           {"sign_consensus_mask": gta["get_mask"]})
ram = load("merge_methods/ram.py", {"ram_merge", "ramplus_tl_merge", "_prepare_ram_vectors"})
near = load("merge_methods/nearswap.py", {"nearswap_merge"})
fusion = load("merge_methods/arcee_fusion.py", {"DynamicThresholdFusion", "ArceeFusionMergeTask"},
              {"rectify_embed_sizes": rect})
GTA_KIND = {"task_arithmetic": (None, None), "ties": ("magnitude", "sum"),
            "dare_ties": ("random", "sum"), "dare_linear": ("random", None),
            "breadcrumbs": ("magnitude_outliers", None),
            "breadcrumbs_ties": ("magnitude_outliers", "sum"),
            "della": ("della_magprune", "sum"), "della_linear": ("della_magprune", None)}


def own(method, name, ins, gp, bi, seed):
    """One output tensor by mergekit's code. ins: [(model, tensor, tensor params)]."""
    models = [m for m, _, _ in ins]
    tensors = {m: t for m, t, _ in ins}
    tparams = {m: tp for m, _, tp in ins}
    base = models[bi] if bi is not None else None
    info = types.SimpleNamespace(name=name, is_embed=False, optional=False)
    if method in GTA_KIND:
        kind, cons = GTA_KIND[method]
        others = [m for m in models if m != base]
        calls = [0]  # get_task_vectors keeps the pool order: call k sparsifies model k

        def task_sparsify(tensor, density, method, rescale_norm=None, **kw):
            BERNOULLI.key = R.rng_key(seed, name, calls[0])
            calls[0] += 1
            return sp["sparsify"](tensor, density=density, method=method, rescale_norm=rescale_norm, **kw)

        gta["sparsify"] = task_sparsify
        self = types.SimpleNamespace(
            method=types.SimpleNamespace(sparsification_method=kind, consensus_method=cons),
            weight_info=info, base_model=base, tensor_parameters=types.SimpleNamespace(data=tparams),
            int8_mask=gp["int8_mask"], normalize=gp["normalize"], lambda_=gp["lambda"],
            rescale_norm="l1" if gp["rescale"] else None)
        return gta["GTATask"].execute(self, dict(tensors))
    if method == "linear":
        self = types.SimpleNamespace(tensor_parameters=tparams, normalize=gp["normalize"], weight_info=info)
        return lin["LinearMergeTask"].execute(self, dict(tensors))
    if method == "slerp":
        other = [m for m in models if m != base][0]
        return slerp_ns["slerp"](gp["t"], tensors[base], tensors[other]).float()
    if method == "nuslerp":
        self = types.SimpleNamespace(tensor_parameters=tparams, weight_info=info, base_model=base,
                                     row_wise=gp["nuslerp_row_wise"], flatten=gp["nuslerp_flatten"])
        return nus["NuSlerpTask"].execute(self, {m: t.clone() for m, t in tensors.items()})
    if method == "multislerp":
        others = [m for m in models if m != base]
        return msl["multislerp"]([tensors[m] for m in others], [tparams[m]["weight"] for m in others],
                                 tensors[base] if base else None, gp["normalize_weights"], gp["eps"])
    if method == "karcher":
        ts = [tensors[m] for m in models]
        return kar["karcher_merge_tensors"](ts, [1.0 / len(ts)] * len(ts), gp["max_iter"], gp["tol"])
    if method == "model_stock":
        self = types.SimpleNamespace(base_model=base, weight_info=info, filter_wise=gp["filter_wise"])
        self.get_rectified_weights = lambda t: stock["ModelStockMergeTask"].get_rectified_weights(self, t)
        return stock["ModelStockMergeTask"].execute(self, dict(tensors))
    others = [m for m in models if m != base]
    if method == "sce":
        return sce["sce_merge"]([tensors[m] for m in others], tensors[base], gp["int8_mask"], gp["select_topk"])
    if method == "ram":
        return ram["ram_merge"]([tensors[m] for m in others], tensors[base], gp["epsilon"])
    if method == "ramplus_tl":
        return ram["ramplus_tl_merge"]([tensors[m] for m in others], tensors[base], gp["r"],
                                       gp["alpha"], gp["epsilon"])
    if method == "nearswap":
        return near["nearswap_merge"]([tensors[m] for m in others], tensors[base], gp["t"])
    if method == "arcee_fusion":
        self = types.SimpleNamespace(base_model=base, weight_info=info)
        self._compute_importance = lambda p, b: fusion["ArceeFusionMergeTask"]._compute_importance(self, p, b)
        return fusion["ArceeFusionMergeTask"].execute(self, dict(tensors))
    if method == "passthrough":
        return None
    raise ValueError(method)


print(f"{'case':26s} {'tensors':>7s} {'max |ours - mergekit| / max|x|':>32s}")
for c in json.load(open(os.path.join(REF, "mergekit", "cases.json"))):
    name, pool = c["name"], c["pool"]
    if name in ("multi", "lora_input") or pool == "vocab":  # a chain; an adapter; tokenizers
        continue
    d = os.path.join(REF, "mergekit", pool)
    out = os.path.join(OUT, name)
    subprocess.run(["rm", "-rf", out])
    subprocess.run([CLI, "mergekit", name + ".yml", out, "--random-seed", str(c["seed"])],
                   cwd=d, check=True, capture_output=True)
    cfg = P.read_config(os.path.join(d, name + ".yml"))
    got, _, _ = st.load_raw(os.path.join(out, "model.safetensors"))
    pool32 = {m: {n: st.to_torch(*e).float() for n, e in st.load_raw(os.path.join(d, m, "model.safetensors"))[0].items()}
              for m in ("base", "a", "b", "c")}
    worst, count = 0.0, 0
    for oname, ins, gp, bi in P.plan(cfg, pool32):
        ts = [(m, pool32[m][n], tp) for m, n, tp in ins]
        r = own(cfg["merge_method"], oname, ts, gp, bi, c["seed"])
        if r is None:
            continue
        g = st.to_torch(*got[oname]).float()
        r = r.float().to(torch.bfloat16).float() if got[oname][0] == "BF16" else r.float()
        worst = max(worst, ((g - r).abs().max() / r.abs().max().clamp(min=1e-30)).item())
        count += 1
    print(f"{name:26s} {count:7d} {worst:32.2e}")
