"""Reference data for the C tests, computed with PyTorch from the papers' formulas.

    /usr/bin/python3 tests/reference/make_reference.py OUT_DIR

Writes model pools (f32, f16, bf16), the merges each method must produce (computed here with
torch ops in the order FusionBench applies them), dtype and conversion tables, and a sharded
checkpoint, plus cases.json describing every merge case for the C tests.
"""
import collections
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import methods_ref as R  # noqa: E402
import st  # noqa: E402

torch.manual_seed(0)
OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)

# Shapes with awkward sizes: a matrix larger than one 16384-element chunk (so chunk edges are
# crossed), primes, a conv kernel, a 0-d scalar, an empty tensor, and non-float buffers that
# are equal in every model (copied, not merged).
SHAPES = {
    "embeddings.position_ids": None,  # I64 buffer
    "encoder.layers.0.mlp.fc1.weight": (211, 197),
    "encoder.layers.0.mlp.fc1.bias": (211,),
    "encoder.layers.0.mlp.fc2.weight": (13, 211),
    "patch_embedding.weight": (5, 3, 4, 4),
    "logit_scale": (),
    "empty.weight": (0, 7),
    "attention.mask": None,  # BOOL buffer
}
NUM_MODELS = 3


def make_pool(dtype):
    """_pretrained_ + 3 fine-tuned models: base + a task-specific change."""
    base = {}
    for name, shape in SHAPES.items():
        if name == "embeddings.position_ids":
            base[name] = torch.arange(50, dtype=torch.int64).reshape(1, 50)
        elif name == "attention.mask":
            base[name] = torch.rand(4, 4) > 0.5
        else:
            base[name] = (torch.randn(shape) * 0.5).to(dtype)
    models = []
    for _ in range(NUM_MODELS):
        m = {}
        for name, t in base.items():
            if t.dtype.is_floating_point:
                m[name] = (t.float() + torch.randn(t.shape) * 0.1).to(dtype)
            else:
                m[name] = t.clone()
        models.append(m)
    return base, models


# The merges, each from its formula, in f32, in the order FusionBench applies the ops; then
# rounded once to the output dtype.
def simple_average(base, models):
    out = {}
    for k in models[0]:
        acc = models[0][k].float()
        for m in models[1:]:
            acc = acc + m[k].float()
        out[k] = acc / float(len(models))
    return out


def weighted_average(base, models, weights, normalize):
    w = np.asarray(weights, dtype=np.float64)
    if normalize:
        w = w / w.sum()
    wf = [torch.tensor(x, dtype=torch.float32) for x in w]  # torch uses f32 scalars here
    out = {}
    for k in models[0]:
        acc = wf[0] * models[0][k].float()
        for i in range(1, len(models)):
            acc = acc + wf[i] * models[i][k].float()
        out[k] = acc
    return out


def task_arithmetic(base, models, scaling_factor):
    lam = torch.tensor(scaling_factor, dtype=torch.float32)
    out = {}
    for k in base:
        b = base[k].float()
        tau = models[0][k].float() - b
        for m in models[1:]:
            tau = tau + (m[k].float() - b)
        out[k] = b + lam * tau
    return out


def per_tensor(base, rules):
    """Each tensor from the first (pattern, merge) whose pattern is found in its name."""
    import re
    out = {}
    for n in base:
        for pattern, merged in rules:
            if pattern is None or re.search(pattern, n):
                if n in merged:
                    out[n] = merged[n]
                break
    return out


def finish(merged, base):
    """Non-float tensors are copied from the base; floats rounded to the input dtype."""
    return {k: (merged[k].to(base[k].dtype) if base[k].dtype.is_floating_point else base[k])
            for k in base}


# --- TIES's majority rule: entries whose trimmed task vectors cancel exactly take the sign
# most elected entries have. Base 0; model values chosen so that entries 0-3 cancel, and
# positive sums outnumber negative ones.
ties_dir = os.path.join(OUT, "pool_ties")
os.makedirs(ties_dir, exist_ok=True)
vals = [[1.0, 2.0, -4.0, 0.5, 3.0, 3.0, 3.0, -1.0, 2.0, 2.0, 0.25, 5.0],
        [-1.0, -2.0, 4.0, -0.5, 1.0, 2.0, 1.0, -2.0, 1.0, 3.0, 0.5, 1.0],
        [0.0, 0.0, 0.0, 0.0, -1.0, 1.0, 2.0, 0.5, -3.0, 1.0, -0.75, 2.0]]
tbase = {"w": torch.zeros(12)}
tmodels = [{"w": torch.tensor(v)} for v in vals]
st.save(os.path.join(ties_dir, "pretrained.safetensors"), tbase)
for i, m in enumerate(tmodels):
    st.save(os.path.join(ties_dir, f"m{i}.safetensors"), m)
with open(os.path.join(ties_dir, "pool.yaml"), "w") as f:
    f.write("models:\n  _pretrained_: pretrained.safetensors\n")
    for i in range(3):
        f.write(f"  m{i}: m{i}.safetensors\n")


cases = []
for dname, dtype in [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
    pool_dir = os.path.join(OUT, "pool_" + dname)
    os.makedirs(pool_dir, exist_ok=True)
    base, models = make_pool(dtype)
    names = ["task_a", "task_b", "task_c"]
    st.save(os.path.join(pool_dir, "pretrained.safetensors"), base, {"format": "pt"})
    for n, m in zip(names, models):
        st.save(os.path.join(pool_dir, n + ".safetensors"), m, {"format": "pt"})
    with open(os.path.join(pool_dir, "pool.yaml"), "w") as f:
        f.write("models:\n  _pretrained_: pretrained.safetensors\n")
        for n in names:
            f.write(f"  {n}: {n}.safetensors\n")

    runs = [
        ("simple_average", None, [], simple_average(base, models)),
        ("weighted_average", "{weights: [0.5, 0.3, 0.2], normalize: true}",
         ["method.weights=[0.5,0.3,0.2]", "method.normalize=true"],
         weighted_average(base, models, [0.5, 0.3, 0.2], True)),
        ("weighted_average", "{weights: [0.2, 1.0, -0.5], normalize: false}",
         ["method.weights=[0.2,1.0,-0.5]", "method.normalize=false"],
         weighted_average(base, models, [0.2, 1.0, -0.5], False)),
        ("task_arithmetic", "{scaling_factor: 0.3}", ["method.scaling_factor=0.3"],
         task_arithmetic(base, models, 0.3)),
        ("task_arithmetic", "{scaling_factor: 0.7}", ["method.scaling_factor=0.7"],
         task_arithmetic(base, models, 0.7)),
    ]
    pair = os.path.join(pool_dir, "pool_pair.yaml")  # _pretrained_ + one model
    with open(pair, "w") as f:
        f.write("models:\n  _pretrained_: pretrained.safetensors\n  task_a: task_a.safetensors\n")
    two = os.path.join(pool_dir, "pool_two.yaml")  # two models, no base
    with open(two, "w") as f:
        f.write("models:\n  task_a: task_a.safetensors\n  task_b: task_b.safetensors\n")
    dare_opts = dict(p=0.3, rescale=True, only_linear=False, seed=7)
    runs += [
        ("ties_merging", "{scaling_factor: 0.3, threshold: 20}", [],
         R.ties(base, models, 0.3, 20)),
        ("ties_merging", "{scaling_factor: 0.6, threshold: 50, merge_func: mean, "
         "remove_keys: [logit_scale, 'encoder\\.layers\\.0\\.mlp\\.fc1\\.bias']}",
         ["method.scaling_factor=0.6", "method.threshold=50", "method.merge_func=mean",
          "method.remove_keys=[logit_scale,encoder.layers.0.mlp.fc1.bias]"],
         R.ties(base, models, 0.6, 50, "mean",
                remove_keys=["logit_scale", r"encoder\.layers\.0\.mlp\.fc1\.bias"])),
        ("ties_merging", "{threshold: 0.1, merge_func: max}",
         ["method.threshold=0.1", "method.merge_func=max"], R.ties(base, models, 0.3, 0.1, "max")),
        ("dare_task_arithmetic", "{scaling_factor: 0.5, sparsity_ratio: 0.3, seed: 7}",
         ["method.scaling_factor=0.5", "method.sparsity_ratio=0.3", "method.seed=7"],
         R.dare_task_arithmetic(base, models, 0.5, 0.3, seed=7)),
        ("dare_task_arithmetic", "{sparsity_ratio: 0.6, rescale: false, "
         "only_on_linear_weights: true, seed: 3}",
         ["method.sparsity_ratio=0.6", "method.rescale=false", "method.only_on_linear_weights=true",
          "method.seed=3"],
         R.dare_task_arithmetic(base, models, 0.3, 0.6, rescale=False,
                                only_on_linear_weights=True, seed=3)),
        ("dare_simple_average", "{sparsity_ratio: 0.5, seed: 11}",
         ["method.sparsity_ratio=0.5", "method.seed=11"],
         R.dare_task_arithmetic(base, models, 1.0 / 3, 0.5, seed=11)),
        ("dare_ties_merging", "{sparsity_ratio: 0.3, seed: 7, threshold: 40}",
         ["method.sparsity_ratio=0.3", "method.seed=7", "method.threshold=40"],
         R.ties(base, models, 0.5, 40, dare=dare_opts)),
        ("magmax", "{scaling_factor: 0.5}", [], R.magmax(base, models, 0.5)),
        ("linear_interpolation", "{t: 0.25}", ["method.t=0.25"],
         R.linear_interpolation(base, models[0], 0.25), pair),
        ("linear_interpolation", "{t: 0.7}", ["method.t=0.7"],
         R.linear_interpolation(models[0], models[1], 0.7), two),
        ("expo", "{extrapolation_factor: 0.4}", ["method.extrapolation_factor=0.4"],
         R.expo(base, models[0], 0.4), pair),
        # scalars from double reductions: compared with a value-scaled tolerance (rtol)
        ("slerp", "{t: 0.3}", ["method.t=0.3"], R.slerp(models[0], models[1], 0.3), two, 1e-6),
        ("slerp", "{t: 0.6}", ["method.t=0.6"], R.slerp(base, models[0], 0.6), pair, 1e-6),
        ("karcher", "{max_iter: 10}", [], R.karcher(models), None, 1e-5),
        ("model_stock", "{}", [], R.model_stock(base, models), None, 1e-6),
        ("model_stock", "{ignore_keys: [logit_scale, 'patch_embedding\\..*']}",
         ["method.ignore_keys=[logit_scale,patch_embedding..*]"],
         R.model_stock(base, models, ignore_keys=["logit_scale", r"patch_embedding\..*"]), None, 1e-6),
        ("magnitude_diff_pruning", "{prune_ratio: 0.5}", [],
         R.magnitude_diff_pruning(base, models[0], 0.5), pair),
        ("magnitude_diff_pruning", "{prune_ratio: 0.3, rescale: true, extract_names: ['.*weight']}",
         ["method.prune_ratio=0.3", "method.rescale=true", "method.extract_names=[.*weight]"],
         R.magnitude_diff_pruning(base, models[0], 0.3, True, [".*weight"]), pair),
        ("magnitude_diff_pruning", "{prune_ratio: 0.3, prune_type: major, rescale: 2.0}",
         ["method.prune_ratio=0.3", "method.prune_type=major", "method.rescale=2.0"],
         R.magnitude_diff_pruning(base, models[0], 0.3, 2.0, prune_type="major"), pair),
        ("magnitude_diff_pruning", "{prune_ratio: 0.4, prune_type: unstructured, rescale: true}",
         ["method.prune_ratio=0.4", "method.prune_type=unstructured", "method.rescale=true"],
         R.magnitude_diff_pruning(base, models[0], 0.4, True, prune_type="unstructured"), pair),
        ("task_singular_vector", "{alpha: 1.0}", [], R.tsv(base, models, 1.0), None, 1e-5),
        ("task_singular_vector", "{alpha: [0.5, 1.0, 1.5], exclude_keys: ['encoder.*fc2.weight']}",
         ["method.alpha=[0.5,1.0,1.5]", "method.exclude_keys=[encoder.*fc2.weight]"],
         R.tsv(base, models, [0.5, 1.0, 1.5], ["encoder.*fc2.weight"]), None, 1e-5),
        ("iso_c", "{scaling_factor: 1.5}", ["method.scaling_factor=1.5"],
         R.iso(base, models, 1.5), None, 1e-5),
        ("iso_cts", "{scaling_factor: 1.5, common_space_fraction: 0.8}",
         ["method.scaling_factor=1.5"], R.iso(base, models, 1.5, cts=True), None, 1e-5),
        # per-tensor parameters: the first rule whose filter (a regex searched in the name)
        # matches, else the rule without a filter
        ("task_arithmetic",
         "{scaling_factor: [{filter: 'mlp\\.fc1', value: 0.7}, {filter: patch, value: -0.2}, "
         "{value: 0.3}]}",
         ["method.scaling_factor=[{filter: 'mlp\\.fc1', value: 0.7}, {filter: patch, value: -0.2},"
          " {value: 0.3}]"],
         per_tensor(base, [(r"mlp\.fc1", task_arithmetic(base, models, 0.7)),
                           ("patch", task_arithmetic(base, models, -0.2)),
                           (None, task_arithmetic(base, models, 0.3))])),
        ("weighted_average",
         "{weights: [{filter: bias, value: [1, 0, 0]}, {value: [0.2, 0.3, 0.5]}]}",
         ["method.weights=[{filter: bias, value: [1, 0, 0]}, {value: [0.2, 0.3, 0.5]}]"],
         per_tensor(base, [("bias", weighted_average(base, models, [1, 0, 0], True)),
                           (None, weighted_average(base, models, [0.2, 0.3, 0.5], True))])),
        ("breadcrumbs", "{density: 0.8, gamma: 0.05, lambda: 0.7}",
         ["method.density=0.8", "method.gamma=0.05", "method.lambda=0.7"],
         R.sparse_task_arithmetic(base, models, "breadcrumbs", False, density=0.8, gamma=0.05,
                                  lam=0.7)),
        ("breadcrumbs_ties", "{weights: [1.0, 0.5, 2.0], density: 0.6}",
         ["method.weights=[1.0,0.5,2.0]", "method.density=0.6"],
         R.sparse_task_arithmetic(base, models, "breadcrumbs", True, weights=[1.0, 0.5, 2.0],
                                  density=0.6, normalize=True)),
        ("della", "{density: 0.5, epsilon: 0.2, seed: 4}",
         ["method.density=0.5", "method.epsilon=0.2", "method.seed=4"],
         R.sparse_task_arithmetic(base, models, "della", True, density=0.5, epsilon=0.2,
                                  normalize=True, seed=4)),
        ("della_linear", "{density: 0.7, rescale: false, lambda: 0.5}",
         ["method.density=0.7", "method.rescale=false", "method.lambda=0.5"],
         R.sparse_task_arithmetic(base, models, "della", False, density=0.7, rescale=False,
                                  lam=0.5)),
        ("wudi", "{iter_num: 60, lr: 1e-3}", ["method.iter_num=60", "method.lr=1e-3"],
         R.wudi(base, models, 60, 1e-3), None, 1e-6),
        # remove_keys, accepted by every method: those tensors keep the base's values
        ("simple_average", "{remove_keys: [logit_scale, 'encoder.*bias']}",
         ["method.remove_keys=[logit_scale,encoder.*bias]"],
         {**simple_average(base, models),
          **{k: base[k].float() for k in ["logit_scale", "encoder.layers.0.mlp.fc1.bias"]}}),
        ("consensus_task_arithmetic", "{scaling_factor: 0.5, tall_mask_lambda: 0.4}",
         ["method.scaling_factor=0.5", "method.tall_mask_lambda=0.4"],
         R.consensus_task_arithmetic(base, models, 0.5, 0.4, 2)),
        ("consensus_task_arithmetic", "{consensus_threshold: 1}", ["method.consensus_threshold=1"],
         R.consensus_task_arithmetic(base, models, 0.3, 0.6, 1)),
        ("iso_cts", "{common_space_fraction: 0.5}", ["method.common_space_fraction=0.5"],
         R.iso(base, models, 1.0, cts=True, common_space_fraction=0.5), None, 1e-5),
    ]
    # methods with extras (per-task masks, rescalers): expected extras saved beside
    extra_runs = [
        ("tall_mask", "{tall_mask_lambda: 0.5}", ["method.tall_mask_lambda=0.5"],
         R.tall_mask(base, models, names, 0.5)),
        ("emr_merging", None, [], R.emr(base, models, names)),
    ]
    for method, params, overrides, (merged, extras) in extra_runs:
        exp = os.path.join(pool_dir, f"expected_{method}.safetensors")
        st.save(exp, finish(merged, base))
        st.save(os.path.join(pool_dir, f"expected_{method}.masks.safetensors"), extras)
        cases.append({"pool": os.path.join(pool_dir, "pool.yaml"), "dtype": dname,
                      "method": method, "params": params, "overrides": overrides,
                      "expected": exp, "rtol": None,
                      "expected_extras": os.path.join(pool_dir, f"expected_{method}.masks.safetensors")})
    for i, run in enumerate(runs):
        method, params, overrides, merged = run[:4]
        pool_yaml = run[4] if len(run) > 4 and run[4] else os.path.join(pool_dir, "pool.yaml")
        rtol = run[5] if len(run) > 5 else None
        exp = os.path.join(pool_dir, f"expected_{i}_{method}.safetensors")
        st.save(exp, finish(merged, base))
        cases.append({"pool": pool_yaml, "dtype": dname,
                      "method": method, "params": params, "overrides": overrides,
                      "expected": exp, "rtol": rtol})
    # Output in another dtype: computed in f32, rounded once to bf16.
    if dname == "f32":
        exp = os.path.join(pool_dir, "expected_ta_as_bf16.safetensors")
        merged = task_arithmetic(base, models, 0.3)
        st.save(exp, {k: (v.to(torch.bfloat16) if base[k].dtype.is_floating_point else base[k])
                      for k, v in merged.items()})
        cases.append({"pool": os.path.join(pool_dir, "pool.yaml"), "dtype": "f32",
                      "out_dtype": "bf16", "method": "task_arithmetic",
                      "params": "{scaling_factor: 0.3}", "overrides": ["dtype=bf16"],
                      "expected": exp})

for i, (params, thr, mf) in enumerate([("{threshold: 100, scaling_factor: 1.0}", 100, "sum"),
                                       ("{threshold: 100, scaling_factor: 1.0, merge_func: max}",
                                        100, "max")]):
    exp = os.path.join(ties_dir, f"expected_{i}.safetensors")
    st.save(exp, finish(R.ties(tbase, tmodels, 1.0, thr, mf), tbase))
    cases.append({"pool": os.path.join(ties_dir, "pool.yaml"), "dtype": "f32",
                  "method": "ties_merging", "params": params,
                  "overrides": ["method.threshold=100", "method.scaling_factor=1.0"]
                  + (["method.merge_func=max"] if mf == "max" else []), "expected": exp})

# --- TIES at scale, the paths a small pool never takes. "skewed": 48 chunks of 16384 entries
# whose task vectors are 1000x smaller in the chunks the C code samples first (0 and 32), so
# the sample's estimate of the cut is far off and the exact radix passes must find it.
# "cancel": 150000 entries whose trimmed vectors cancel exactly and a positive majority, more
# entries waiting for the majority than the C code keeps to patch, so it merges again;
# "cancel50": the same trimmed to half, where the sample foresees them and the majority is
# counted in a pass of its own before the merge.
def ties_pool(name, models_vals):
    d = os.path.join(OUT, "pool_ties_" + name)
    os.makedirs(d, exist_ok=True)
    base = {"w": torch.zeros(models_vals[0].numel())}
    ms = [{"w": v} for v in models_vals]
    st.save(os.path.join(d, "pretrained.safetensors"), base)
    for i, m in enumerate(ms):
        st.save(os.path.join(d, f"m{i}.safetensors"), m)
    with open(os.path.join(d, "pool.yaml"), "w") as f:
        f.write("models:\n  _pretrained_: pretrained.safetensors\n")
        for i in range(len(ms)):
            f.write(f"  m{i}: m{i}.safetensors\n")
    return d, base, ms


CH = 16384
skew = []
for k in range(3):
    v = torch.randn(48 * CH)
    for c in (0, 32):
        v[c * CH:(c + 1) * CH] *= 1e-3
    skew.append(v)
x = torch.randn(200000)
cancel = [x.clone(), x.clone(), torch.zeros(200000)]
cancel[1][:150000] = -x[:150000]
cancel[0][150000:] = x[150000:].abs()
cancel[1][150000:] = x[150000:].abs()
# "crowd4", "crowd6": task vectors of +-1 and +-2 only (as bf16 task vectors crowd a few
# values), so many entries of several models lie at the cut and many trimmed sums cancel: the
# C code counts the majority exactly in its window pass (4 models), or (6: an entry may wait
# on more models than it follows) falls back to two outputs / a majority pass. "dense": every
# |tau| in [1, 1.01), half of them cancelling, so every entry waits on every model's cut and
# the table of such entries fills (the fallback again).
def crowded(n, seed):
    g = torch.Generator().manual_seed(seed)
    mag = torch.where(torch.rand(n, 200000, generator=g) < 0.6, 1.0, 2.0)
    return list(mag * torch.where(torch.rand(n, 200000, generator=g) < 0.5, -1.0, 1.0))


def dense(n, seed):
    g = torch.Generator().manual_seed(seed)
    mag = 1.0 + 0.01 * torch.rand(n, 200000, generator=g)
    v = mag * torch.where(torch.rand(n, 200000, generator=g) < 0.5, -1.0, 1.0)
    v[1, :100000] = -v[0, :100000]  # half of them cancel, so the sample asks for the count
    return list(v)


crowd4, crowd6, dense3 = crowded(4, 41), crowded(6, 61), dense(3, 31)
dare5 = dict(p=0.3, rescale=True, only_linear=False, seed=5)
for name, vals, method, params, thr, lam, mf, dare in [
        ("crowd4", crowd4, "ties_merging", "{threshold: 30}", 30, 0.3, "sum", None),
        ("crowd4", crowd4, "ties_merging", "{threshold: 30, merge_func: max}", 30, 0.3, "max", None),
        ("crowd6", crowd6, "ties_merging", "{threshold: 30, merge_func: mean}", 30, 0.3, "mean", None),
        ("crowd6", crowd6, "dare_ties_merging", "{threshold: 30, sparsity_ratio: 0.3, seed: 5}",
         30, 0.5, "sum", dare5),
        ("dense", dense3, "ties_merging", "{threshold: 20}", 20, 0.3, "sum", None),
        ("skewed", skew, "ties_merging", "{threshold: 20}", 20, 0.3, "sum", None),
        ("cancel", cancel, "ties_merging", "{threshold: 100, scaling_factor: 1.0, merge_func: mean}",
         100, 1.0, "mean", None),
        ("cancel50", cancel, "ties_merging", "{threshold: 50}", 50, 0.3, "sum", None),
        ("cancel50", cancel, "dare_ties_merging", "{threshold: 50, sparsity_ratio: 0.3, seed: 5}",
         50, 0.5, "sum", dare5)]:
    d, b, ms = ties_pool(name, vals)
    exp = os.path.join(d, f"expected_{method}_{mf}.safetensors")
    st.save(exp, finish(R.ties(b, ms, lam, thr, mf, dare=dare), b))
    overrides = [f"method.threshold={thr}", f"method.scaling_factor={lam}", f"method.merge_func={mf}"]
    if dare:
        overrides += ["method.sparsity_ratio=0.3", "method.seed=5"]
    cases.append({"pool": os.path.join(d, "pool.yaml"), "dtype": "f32", "method": method,
                  "params": params, "overrides": overrides, "expected": exp})

# MagMax on crowded task vectors: equal magnitudes of both signs everywhere, so which model
# wins a tie decides most entries (FusionBench: the later one)
d, b, ms = ties_pool("crowd4", crowd4)
exp = os.path.join(d, "expected_magmax.safetensors")
st.save(exp, finish(R.magmax(b, ms, 0.5), b))
cases.append({"pool": os.path.join(d, "pool.yaml"), "dtype": "f32", "method": "magmax",
              "params": "{scaling_factor: 0.5}", "overrides": ["method.scaling_factor=0.5"],
              "expected": exp})

# --- restructuring: a Llama-layout pool (4 layers) for depth up-scaling and passthrough ------
ll_dir = os.path.join(OUT, "pool_llama")
os.makedirs(ll_dir, exist_ok=True)


def llama(seed):
    g = torch.Generator().manual_seed(seed)
    m = {"model.embed_tokens.weight": torch.randn(10, 4, generator=g)}
    for i in range(4):
        m[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(4, 4, generator=g)
        m[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(8, 4, generator=g)
        m[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(4, generator=g)
    m["model.norm.weight"] = torch.randn(4, generator=g)
    m["lm_head.weight"] = torch.randn(10, 4, generator=g)
    return m


A, B = llama(1), llama(2)
st.save(os.path.join(ll_dir, "a.safetensors"), A)
st.save(os.path.join(ll_dir, "b.safetensors"), B)
with open(os.path.join(ll_dir, "pool_one.yaml"), "w") as f:
    f.write("models:\n  a: a.safetensors\n")
with open(os.path.join(ll_dir, "pool.yaml"), "w") as f:
    f.write("models:\n  a: a.safetensors\n  b: b.safetensors\n")


def restack(rest_from, layers):
    """rest_from's non-layer tensors, then layers [(model, index, scale)] renumbered."""
    out = {k: v for k, v in rest_from.items() if ".layers." not in k}
    for new, (m, old, scale) in enumerate(layers):
        for k, v in m.items():
            pre = f"model.layers.{old}."
            if k.startswith(pre):
                out[f"model.layers.{new}." + k[len(pre):]] = v * f32(scale) if scale != 1 else v
    return out


def f32(x):
    return torch.tensor(x, dtype=torch.float32)


for i, (method, params, overrides, pool, expected) in enumerate([
    ("depth_upscaling", "{layer_indices: [0, 1, 'range(1,4)']}",
     ["method.layer_indices=[0,1,'range(1,4)']"], "pool_one.yaml",
     restack(A, [(A, 0, 1), (A, 1, 1), (A, 1, 1), (A, 2, 1), (A, 3, 1)])),
    ("passthrough", "{slices: [{model: a, layer_range: [0, 2]}, "
     "{sources: [{model: b, layer_range: [1, 4], parameters: {scale: 0.5}}]}]}",
     ["method.slices=[{model: a, layer_range: [0, 2]}, {model: b, layer_range: [1, 4], scale: 0.5}]"],
     "pool.yaml",
     restack(A, [(A, 0, 1), (A, 1, 1), (B, 1, 0.5), (B, 2, 0.5), (B, 3, 0.5)])),
]):
    exp = os.path.join(ll_dir, f"expected_{i}.safetensors")
    st.save(exp, expected)
    cases.append({"pool": os.path.join(ll_dir, pool), "dtype": "f32", "method": method,
                  "params": params, "overrides": overrides, "expected": exp, "rtol": None})

with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(cases, f, indent=1)

# --- dtypes: one tensor of each, with the values the C reader must see as f32 -------------
special = [0.0, -0.0, 1.0, -2.5, 65504.0, 6.103515625e-05, 5.960464477539063e-08,
           float("inf"), float("-inf"), 3.140625, -1e-3, 1e5]
dt = {}
for name in ["F64", "F32", "F16", "BF16"]:
    dt[name] = torch.tensor(special, dtype=torch.float64).to(st.TORCH_DTYPES[name])
dt["I64"] = torch.tensor([-(2**62), -1, 0, 1, 2**62], dtype=torch.int64)
dt["I32"] = torch.tensor([-(2**31), -1, 0, 2**31 - 1], dtype=torch.int32)
dt["I16"] = torch.tensor([-32768, -1, 0, 32767], dtype=torch.int16)
dt["I8"] = torch.tensor([-128, -1, 0, 127], dtype=torch.int8).reshape(2, 2)
dt["U8"] = torch.tensor([0, 1, 200, 255], dtype=torch.uint8)
dt["BOOL"] = torch.tensor([True, False, True], dtype=torch.bool)
raw = {k: v for k, v in dt.items()}
raw["U16"] = ("U16", [3], np.array([0, 1, 65535], dtype=np.uint16).tobytes())
raw["U32"] = ("U32", [2], np.array([7, 2**32 - 1], dtype=np.uint32).tobytes())
raw["U64"] = ("U64", [2], np.array([9, 2**64 - 1], dtype=np.uint64).tobytes())


# F8: every byte, decoded here from the format definitions (OCP FP8: E4M3 "fn" with bias 7
# and no infinities, E5M2 with bias 15 like IEEE half).
def e4m3(b):
    s = -1.0 if b & 0x80 else 1.0
    e, m = (b >> 3) & 0xF, b & 7
    if e == 15 and m == 7:
        return float("nan")
    if e == 0:
        return s * m / 8.0 * 2.0 ** -6
    return s * (1 + m / 8.0) * 2.0 ** (e - 7)


def e5m2(b):
    s = -1.0 if b & 0x80 else 1.0
    e, m = (b >> 2) & 0x1F, b & 3
    if e == 31:
        return s * float("inf") if m == 0 else float("nan")
    if e == 0:
        return s * m / 4.0 * 2.0 ** -14
    return s * (1 + m / 4.0) * 2.0 ** (e - 15)


allbytes = bytes(range(256))
raw["F8_E4M3"] = ("F8_E4M3", [256], allbytes)
raw["F8_E5M2"] = ("F8_E5M2", [16, 16], allbytes)
st.save(os.path.join(OUT, "dtypes.safetensors"), raw, {"written_by": "make_reference.py",
                                                       "quote\"and\\slash": "x\ny"})
f8 = {"F8_E4M3": torch.tensor([e4m3(b) for b in range(256)], dtype=torch.float32),
      "F8_E5M2": torch.tensor([e5m2(b) for b in range(256)], dtype=torch.float32)}
f32_of = {k: dt[k].float() for k in ["F64", "F32", "F16", "BF16"]}
f32_of.update(f8)
st.save(os.path.join(OUT, "dtypes_as_f32.safetensors"), f32_of)

# --- conversions: every f16 and bf16 bit pattern to f32, and f32 -> f16/bf16 by torch -----
all16 = torch.arange(65536, dtype=torch.int32).to(torch.int16)
conv = {
    "f16_bits": all16.clone(),
    "f16_as_f32": all16.view(torch.float16).float(),
    "bf16_bits": all16.clone(),
    "bf16_as_f32": all16.view(torch.bfloat16).float(),
}
# f32 inputs: random bit patterns, values next to every rounding boundary of both formats,
# overflow and subnormal ranges, and exact ties.
g = torch.Generator().manual_seed(1)
rnd = torch.randint(-(2**31), 2**31 - 1, (200000,), generator=g, dtype=torch.int64).to(torch.int32)
ties = []
vals = all16.view(torch.float16).float().double()
finite = vals[torch.isfinite(vals)].sort().values.unique()
mid = (finite[1:] + finite[:-1]) / 2
ties.append(mid.float())
bvals = all16.view(torch.bfloat16).float().double()
bfinite = bvals[torch.isfinite(bvals)].sort().values.unique()
ties.append(((bfinite[1:] + bfinite[:-1]) / 2).float())
src = torch.cat([rnd.view(torch.float32),
                 torch.tensor([65504.0, 65519.99, 65520.0, 65536.0, 1e-8, 2.9802322e-08,
                               2.9802326e-08, -0.0, 3e38, float("inf"), float("nan")])]
                + ties)
src = src[~torch.isnan(src)]  # NaN payloads are compared separately
conv["f32_src"] = src
conv["f32_to_f16"] = src.to(torch.float16)
conv["f32_to_bf16"] = src.to(torch.bfloat16)
st.save(os.path.join(OUT, "conversions.safetensors"), conv)

# --- a sharded checkpoint (Hugging Face layout) and the same model in one file --------------
sh = os.path.join(OUT, "sharded")
os.makedirs(sh, exist_ok=True)
model = {f"layers.{i}.weight": torch.randn(17, 9) for i in range(5)}
model["norm.bias"] = torch.randn(9)
names = list(model)
parts = [names[0:2], names[2:4], names[4:]]
weight_map = {}
for i, part in enumerate(parts):
    fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
    # shards list their tensors in another order than the index, as real ones may
    st.save(os.path.join(sh, fname), {k: model[k] for k in reversed(part)}, {"format": "pt"})
    for k in part:
        weight_map[k] = fname
with open(os.path.join(sh, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(v.numel() * 4 for v in model.values())},
               "weight_map": weight_map}, f, indent=2)
st.save(os.path.join(OUT, "sharded_single.safetensors"), model)

# --- PyTorch checkpoints (torch.save's zip format): the same tensors as safetensors, to read
# both and compare; tied weights, f16/bf16/int, a transposed tensor saved as such, a slice
# with a storage offset, a Parameter, a module's state dict (its _metadata), and sharded .bin
tb = os.path.join(OUT, "torch_bin")
os.makedirs(tb, exist_ok=True)
g = torch.Generator().manual_seed(41)
lin = torch.nn.Linear(6, 5)
sd = collections.OrderedDict(lin.state_dict())  # keeps the module's _metadata attribute
sd._metadata = lin.state_dict()._metadata
sd["tied.weight"] = sd["weight"]  # the same storage twice
sd["half"] = torch.randn(4, 3, generator=g).half()
sd["brain"] = torch.randn(7, generator=g).bfloat16()
sd["transposed"] = torch.randn(5, 3, generator=g).t()  # strides (1, 3)
sd["slice"] = torch.arange(20, dtype=torch.float32)[4:16].view(3, 4)  # offset 4 in a shared storage
sd["ids"] = torch.arange(9, dtype=torch.int64)
sd["scalar"] = torch.tensor(2.5)
sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
torch.save(sd, os.path.join(tb, "single.bin"))
st.save(os.path.join(tb, "single.safetensors"),
        {k: v.detach().contiguous() for k, v in sd.items()})
# sharded, as transformers writes it: pytorch_model-0000i-of-0000N.bin + index
shard_dir = os.path.join(tb, "sharded")
os.makedirs(shard_dir, exist_ok=True)
weight_map = {}
for i, part in enumerate([names[0:3], names[3:]]):
    fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
    torch.save({k: model[k] for k in part}, os.path.join(shard_dir, fname))
    for k in part:
        weight_map[k] = fname
with open(os.path.join(shard_dir, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
# a folder with both: safetensors wins (these hold different values to tell them apart)
both = os.path.join(tb, "both")
os.makedirs(both, exist_ok=True)
torch.save({"w": torch.zeros(3)}, os.path.join(both, "pytorch_model.bin"))
st.save(os.path.join(both, "model.safetensors"), {"w": torch.ones(3)})
# a .bin pool and the same pool in safetensors, for merges from either
for k in range(3):
    m = {"a.weight": torch.randn(33, 17, generator=g), "a.bias": torch.randn(17, generator=g)}
    torch.save(m, os.path.join(tb, f"m{k}.bin"))
    st.save(os.path.join(tb, f"m{k}.safetensors"), m)
for ext in ("bin", "safetensors"):
    with open(os.path.join(tb, f"pool_{ext}.yaml"), "w") as f:
        f.write("models:\n  _pretrained_: m0.%s\n  a: m1.%s\n  b: m2.%s\n" % (ext, ext, ext))
print(f"make_reference: {len(cases)} merge cases and format data in {OUT}")
