"""Benchmark: fusionbench_c beside FusionBench's own merging functions (PyTorch), on models
already in memory as torch.nn.Modules, as FusionBench's Python users have them.

    /usr/bin/python3 bench/python_merge.py --fusion-bench DIR [--models 8] [--reps 3]

DIR is a checkout of tanganke/fusion_bench (fusion_bench/utils/state_dict_arithmetic.py and
fusion_bench/method/ties_merging/ties_merging_utils.py are imported from it, with small stubs
for the framework they import). Each run is its own process: it builds the models (a CLIP
ViT-B/32 vision tower's tensor shapes, 87.8M float32 parameters each, seeded), records its
resident memory, merges, and reports the merge's wall time and its peak memory above the
inputs (VmHWM - VmRSS before the merge). FusionBench's runs get an address-space limit
(--limit-gb, default 20 of this machine's 24) so a merge that would not fit fails with an
allocation error instead of swapping.
Prints a markdown table of medians."""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def vit_b32_shapes():
    d, f = 768, 3072
    s = {"conv1.weight": (d, 3, 32, 32), "class_embedding": (d,), "pos.weight": (50, d),
         "pre_ln.weight": (d,), "pre_ln.bias": (d,), "post_ln.weight": (d,), "post_ln.bias": (d,),
         "proj.weight": (512, d)}
    for i in range(12):
        p = f"layers.{i}."
        for n in ("q", "k", "v", "o"):
            s[p + n + ".weight"], s[p + n + ".bias"] = (d, d), (d,)
        for n in ("ln1", "ln2"):
            s[p + n + ".weight"], s[p + n + ".bias"] = (d,), (d,)
        s[p + "fc1.weight"], s[p + "fc1.bias"] = (f, d), (f,)
        s[p + "fc2.weight"], s[p + "fc2.bias"] = (d, f), (d,)
    return s


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(impl, method, n, fb_dir):
    import torch
    from torch import nn
    torch.set_num_threads(os.cpu_count())

    class Tower(nn.Module):
        def __init__(self, seed):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            for name, shape in vit_b32_shapes().items():
                t = torch.randn(shape, generator=g) * 0.02
                self.register_parameter(name.replace(".", "_"), nn.Parameter(t, requires_grad=False))

    base = Tower(0)
    models = [Tower(1 + i) for i in range(n)]
    model_mb = sum(p.numel() for p in base.parameters()) * 4 / 2**20
    if impl == "fusion_bench":
        import types
        sys.path.insert(0, fb_dir)
        # stubs for the framework the two pure-PyTorch files import
        for name in ("fusion_bench", "fusion_bench.utils", "fusion_bench.method",
                     "fusion_bench.method.ties_merging"):
            m = types.ModuleType(name)
            m.__path__ = [os.path.join(fb_dir, *name.split("."))]
            sys.modules[name] = m
        ty = types.ModuleType("fusion_bench.utils.type")
        ty.StateDictType = ty.TorchModelType = ty.BoolStateDictType = object
        sys.modules["fusion_bench.utils.type"] = ty
        tq = types.ModuleType("tqdm.auto")
        tq.tqdm = lambda x, *a, **k: x
        sys.modules.setdefault("tqdm", types.ModuleType("tqdm"))
        sys.modules["tqdm.auto"] = tq
        import importlib
        sda = importlib.import_module("fusion_bench.utils.state_dict_arithmetic")
        tmu = importlib.import_module("fusion_bench.method.ties_merging.ties_merging_utils")
    else:
        sys.path.insert(0, os.path.join(HERE, "..", "python"))
        from fusionbench_c.method import TaskArithmeticAlgorithm, TiesMergingAlgorithm
        pool = {"_pretrained_": base}
        pool.update({f"m{i}": m for i, m in enumerate(models)})
    rss0 = status_kb("VmRSS")
    t0 = time.perf_counter()
    try:
        if impl == "fusion_bench" and method == "task_arithmetic":
            # FusionBench's task_arithmetic_merge, step by step, with its own functions
            with torch.no_grad():
                pre = base.state_dict(keep_vars=True)
                tv = None
                for m in models:
                    d = sda.state_dict_sub(m.state_dict(keep_vars=True), pre)
                    tv = d if tv is None else sda.state_dict_add(tv, d)
                tv = sda.state_dict_mul(tv, 0.3)
                # FusionBench adds (pretrained, task vector); its type check then rejects the
                # Tensor after the Parameter, so the operands go the other way round (the
                # same sums: float addition commutes)
                merged = sda.state_dict_add(tv, pre)
                base.load_state_dict(merged)  # as task_arithmetic_merge ends
                result = base
        elif impl == "fusion_bench":
            # FusionBench's TiesMergingAlgorithm.run, with its own functions
            with torch.no_grad():
                ft = [m.state_dict(keep_vars=True) for m in models]
                ptm = base.state_dict(keep_vars=True)
                flat_ft = torch.vstack([tmu.state_dict_to_vector(c, []) for c in ft])
                flat_ptm = tmu.state_dict_to_vector(ptm, [])
                tv = flat_ft - flat_ptm
                merged_tv = tmu.ties_merging(tv, reset_thresh=20, merge_func="sum")
                merged = flat_ptm + 0.3 * merged_tv
                state_dict = tmu.vector_to_state_dict(merged, ptm, remove_keys=[])
                base.load_state_dict(state_dict)  # as TiesMergingAlgorithm.run ends
                result = base
        elif method == "task_arithmetic":
            result = TaskArithmeticAlgorithm(scaling_factor=0.3).run(pool)
        else:
            result = TiesMergingAlgorithm(scaling_factor=0.3, threshold=20).run(pool)
    except (MemoryError, RuntimeError) as e:  # torch's allocator raises RuntimeError
        if not isinstance(e, MemoryError) and "allocate memory" not in str(e):
            raise
        print("result oom %.1f" % model_mb)
        return
    dt = time.perf_counter() - t0
    peak = (status_kb("VmHWM") - rss0) / 1024
    del result
    print("result %.4f %.1f %.1f" % (dt, peak, model_mb))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fusion-bench", required=True, help="a checkout of tanganke/fusion_bench")
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--limit-gb", type=float, default=20.0)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        if a.child[0] == "fusion_bench":
            lim = int(a.limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        child(a.child[0], a.child[1], a.models, a.fusion_bench)
        return
    rows = {}
    for method in ("task_arithmetic", "ties_merging"):
        for rep in range(a.reps):  # interleaved, so both see the same machine state
            for impl in ("fusionbench_c", "fusion_bench"):
                r = subprocess.run([sys.executable, __file__, "--fusion-bench", a.fusion_bench,
                                    "--models", str(a.models), "--limit-gb", str(a.limit_gb),
                                    "--child", impl, method], capture_output=True, text=True)
                line = [x for x in r.stdout.splitlines() if x.startswith("result")]
                if r.returncode or not line:
                    sys.exit(f"{impl} {method}: rc {r.returncode}\n{r.stdout}{r.stderr[-2000:]}")
                rows.setdefault((method, impl), []).append(line[0].split()[1:])
    print(f"{a.models} models of {rows[('task_arithmetic', 'fusionbench_c')][0][2]} MB "
          f"(ViT-B/32 vision tower shapes, float32) in memory; {os.cpu_count()} threads; "
          f"median of {a.reps} runs\n")
    print("| method | implementation | time (s) | peak above inputs (MB) | peak / one model | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for method in ("task_arithmetic", "ties_merging"):
        med = {}
        for impl in ("fusionbench_c", "fusion_bench"):
            rs = rows[(method, impl)]
            if rs[0][0] == "oom":
                med[impl] = None
                continue
            med[impl] = (statistics.median(float(r[0]) for r in rs),
                         statistics.median(float(r[1]) for r in rs), float(rs[0][2]))
        for impl in ("fusionbench_c", "fusion_bench"):
            m = med[impl]
            name = "fusionbench_c" if impl == "fusionbench_c" else "FusionBench (PyTorch)"
            if m is None:
                print(f"| {method} | {name} | out of memory under a {a.limit_gb:g} GB limit | | | |")
                continue
            other = med["fusion_bench"]
            sp = f"{other[0] / m[0]:.1f}x" if impl == "fusionbench_c" and other else ""
            print(f"| {method} | {name} | {m[0]:.2f} | {m[1]:.0f} | {m[1] / m[2]:.2f} | {sp} |")


if __name__ == "__main__":
    main()
