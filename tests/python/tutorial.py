"""FusionBench's seed tutorial through fusionbench_c, with only its import lines changed, each
result compared with plain PyTorch (tests/reference/methods_ref.py). Then TIES, one of
FusionBench's method YAML files, state dicts of numpy arrays, paths, errors and Ctrl-C.
Run by tests/test_python.c: tutorial.py SRC_DIR TMP_DIR; prints "ok N" on success."""
import os
import sys

import torch
from torch import nn

SRC, TMP = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import methods_ref as R  # noqa: E402

# ---- FusionBench's tutorial; only these two import lines differ ---------------------------
from fusionbench_c.method import (SimpleAverageAlgorithm, TaskArithmeticAlgorithm,  # noqa: E402
                                  TiesMergingAlgorithm, WeightedAverageAlgorithm)
from fusionbench_c.modelpool import BaseModelPool  # noqa: E402


def mlp():
    return nn.Sequential(nn.Linear(768, 3072), nn.ReLU(), nn.Linear(3072, 768))


torch.manual_seed(0)
model_pool = BaseModelPool({"model_1": mlp(), "model_2": mlp(), "model_3": mlp()})
merged_avg = SimpleAverageAlgorithm().run(model_pool)
merged_wavg = WeightedAverageAlgorithm(weights=[0.5, 0.3, 0.2], normalize=True).run(model_pool)
pool_with_pretrained = BaseModelPool({"_pretrained_": mlp(), "model_1": mlp(), "model_2": mlp(),
                                      "model_3": mlp()})
merged_ta = TaskArithmeticAlgorithm(scaling_factor=0.3).run(pool_with_pretrained)
# --------------------------------------------------------------------------------------------

checks = 0


# plain PyTorch, in float32, in the order FusionBench's functions apply the operations
def simple_average(models):
    return {k: sum((m[k].float() for m in models[1:]), models[0][k].float()) / len(models)
            for k in models[0]}


def weighted_average(models, weights, normalize):
    w = torch.tensor(weights, dtype=torch.float64)
    w = [x.float() for x in (w / w.sum() if normalize else w)]
    return {k: sum((w[i] * models[i][k].float() for i in range(1, len(models))),
                   w[0] * models[0][k].float()) for k in models[0]}


def task_arithmetic(base, models, lam):
    lam = torch.tensor(lam, dtype=torch.float32)
    return {k: base[k].float() + lam * sum((m[k].float() - base[k].float() for m in models[1:]),
                                           models[0][k].float() - base[k].float())
            for k in base}


def same(got, want, what, tol=0.0):
    """Every tensor equal (tol 0: bitwise) to the PyTorch computation."""
    global checks
    got_sd = got.state_dict() if isinstance(got, nn.Module) else got
    assert set(got_sd) == set(want), f"{what}: tensors {sorted(got_sd)} vs {sorted(want)}"
    for k in want:
        g, w = got_sd[k], want[k]
        g = torch.as_tensor(g)
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what} {k}: {g.shape} {g.dtype}"
        err = (g.double() - w.double()).abs().max().item()
        assert err <= tol, f"{what} {k}: max error {err} > {tol}"
    checks += 1


def sds(pool, names):
    return [pool.load_model(n).state_dict() for n in names]


ms = sds(model_pool, ["model_1", "model_2", "model_3"])
base = pool_with_pretrained.load_model("_pretrained_").state_dict()
tms = sds(pool_with_pretrained, ["model_1", "model_2", "model_3"])

assert isinstance(merged_avg, nn.Sequential) and merged_avg is not model_pool.load_model("model_1")
same(merged_avg, simple_average(ms), "simple average")
same(merged_wavg, weighted_average(ms, [0.5, 0.3, 0.2], True), "weighted average")
same(merged_ta, task_arithmetic(base, tms, 0.3), "task arithmetic")
# the module works: its forward pass is the merged weights'
x = torch.randn(4, 768)
with torch.no_grad():
    y = merged_ta(x)
    w = task_arithmetic(base, tms, 0.3)
    F = torch.nn.functional
    want = F.linear(torch.relu(F.linear(x, w["0.weight"], w["0.bias"])), w["2.weight"], w["2.bias"])
assert torch.equal(y, want)
checks += 1

# the merged parameters are the C library's memory, never an input's: changing them changes
# no input, and they outlive everything but the module
import gc  # noqa: E402
inputs = {t.data_ptr() for m in pool_with_pretrained._models.values() for t in m.state_dict().values()}
assert not inputs & {t.data_ptr() for t in merged_ta.state_dict().values()}
before = base["0.weight"].clone()
with torch.no_grad():
    merged_ta[0].weight.add_(1.0)
gc.collect()
assert torch.equal(base["0.weight"], before) and merged_ta[0].weight.requires_grad
checks += 1

# TIES: FusionBench's constructor arguments
ties = TiesMergingAlgorithm(scaling_factor=0.3, threshold=20, remove_keys=[], merge_func="sum")
same(ties.run(pool_with_pretrained), R.ties(base, tms, 0.3, 20), "ties", tol=0)

# FusionBench's own YAML for TIES, unchanged (config/method/ties_merging.yaml's values)
from fusionbench_c import load_algorithm_from_config  # noqa: E402
yaml_path = os.path.join(TMP, "ties.yaml")
with open(yaml_path, "w") as f:
    f.write("_target_: fusion_bench.method.TiesMergingAlgorithm\n"
            "scaling_factor: 0.5\nthreshold: 30\nremove_keys: []\nmerge_func: mean\n")
algo = load_algorithm_from_config(yaml_path)
assert type(algo).__name__ == "TiesMergingAlgorithm", type(algo)
same(algo.run(pool_with_pretrained), R.ties(base, tms, 0.5, 30, "mean"), "ties from yaml")
algo = load_algorithm_from_config(os.path.join(SRC, "config", "method", "task_arithmetic.yaml"))
assert type(algo).__name__ == "TaskArithmeticAlgorithm"
same(algo.run(pool_with_pretrained), task_arithmetic(base, tms, 0.3), "the shipped yaml")

# state dicts of torch tensors come back as state dicts; of numpy arrays, as numpy
import numpy as np  # noqa: E402
sd_pool = {"_pretrained_": base, "a": tms[0], "b": tms[1], "c": tms[2]}
out = TaskArithmeticAlgorithm(scaling_factor=0.3).run(sd_pool)
assert isinstance(out, dict) and isinstance(out["0.weight"], torch.Tensor)
same(out, task_arithmetic(base, tms, 0.3), "state dict pool")
np_pool = {k: {n: t.numpy() for n, t in v.items()} for k, v in sd_pool.items()}
out = TaskArithmeticAlgorithm(scaling_factor=0.3).run(np_pool)
assert isinstance(out["0.weight"], np.ndarray)
same({k: torch.from_numpy(v) for k, v in out.items()}, task_arithmetic(base, tms, 0.3), "numpy")

# half precision inputs are borrowed as they are and merged as the C library merges them
bf = {k: {n: t.to(torch.bfloat16) for n, t in v.items()} for k, v in sd_pool.items()}
out = SimpleAverageAlgorithm().run({k: v for k, v in bf.items() if k != "_pretrained_"})
assert out["0.weight"].dtype == torch.bfloat16
want = {k: v.to(torch.bfloat16) for k, v in simple_average([bf["a"], bf["b"], bf["c"]]).items()}
same(out, want, "bf16")

# paths in, a file out
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import st  # noqa: E402
paths = {}
for k, v in sd_pool.items():
    paths[k] = os.path.join(TMP, f"{k}.safetensors")
    st.save(paths[k], {n: t.contiguous() for n, t in v.items()})
dest = os.path.join(TMP, "merged.safetensors")
assert TaskArithmeticAlgorithm(scaling_factor=0.3).run(BaseModelPool(paths), path=dest) == dest
same(st.load(dest)[0], task_arithmetic(base, tms, 0.3), "paths to a file")
out = TaskArithmeticAlgorithm(scaling_factor=0.3).run(paths)
same({k: torch.from_numpy(v) for k, v in out.items()}, task_arithmetic(base, tms, 0.3), "paths")

# errors: C's message, raised before any work; the inputs untouched
from fusionbench_c import FusionBenchError  # noqa: E402
for bad, needle in [(lambda: TiesMergingAlgorithm(threshold="many"), "threshold"),
                    (lambda: TaskArithmeticAlgorithm(scaling=0.3), "scaling"),
                    (lambda: TaskArithmeticAlgorithm().run(model_pool), "_pretrained_"),
                    (lambda: SimpleAverageAlgorithm().run({"a": os.path.join(TMP, "nope")}),
                     "nope"),
                    (lambda: load_algorithm_from_config({"_target_": "fusion_bench.method.Nope"}),
                     "Nope")]:
    try:
        bad()
    except FusionBenchError as e:
        assert needle in str(e), f"'{needle}' not in: {e}"
        checks += 1
    else:
        raise AssertionError(f"no error for {needle}")
assert not os.path.exists(os.path.join(TMP, "nope"))

# Ctrl-C during a long merge: KeyboardInterrupt, no output, no temporary left
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
child = r"""
import signal, sys, torch
# as in a terminal, even when this suite runs in the background (where SIGINT starts ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
from fusionbench_c.method import TiesMergingAlgorithm
torch.manual_seed(0)
pool = {n: {f"t{i}": torch.randn(1 << 20) for i in range(96)} for n in ["_pretrained_", "a", "b", "c"]}
print("started", flush=True)
try:
    TiesMergingAlgorithm(threshold=20).run(pool, path=sys.argv[1])
    print("done", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""
for k, delay in enumerate([0.0, 0.1, 0.3]):  # as the merge starts, and while it runs
    outdir = os.path.join(TMP, f"interrupt{k}")
    os.mkdir(outdir)
    p = subprocess.Popen([sys.executable, "-c", child, os.path.join(outdir, "m.safetensors")],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "started"
    time.sleep(delay)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    rest = p.communicate(timeout=120)[0].strip()
    assert rest == "interrupted" and p.returncode == 0, (delay, rest, p.returncode)
    assert time.monotonic() - t0 < 5, "the merge did not stop at its next tensor"
    assert os.listdir(outdir) == [], (delay, os.listdir(outdir))
    checks += 1
print("ok", checks)
