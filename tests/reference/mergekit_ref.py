"""Reference merges for `fusion_bench mergekit`, computed with PyTorch from mergekit's
formulas (its config.py, plan.py, sparsify.py and merge_methods/, read for their semantics;
this is an independent implementation, not mergekit's code).

    /usr/bin/python3 tests/reference/mergekit_ref.py OUT_DIR

Writes OUT_DIR/mergekit/: a tiny Llama-layout pool in f32 and bf16 (base, a, b, c: 4 layers,
each a Hugging Face folder with config.json and tokenizer files), one mergekit configuration
per case (model paths relative to that folder: run from there), the merged model each case
must produce, and cases.json. Arithmetic is float32 (inputs widened once, the result rounded
once to the output dtype), as FusionBench-C computes; random masks use the project's
counter-based generator (methods_ref.rng_uniform) in place of torch.bernoulli.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import methods_ref as R  # noqa: E402
from mergekit_plan import (BASE_SEPARATE, GTA, L, SHAPES, H, I, V,  # noqa: E402,F401
                           llama_shapes, plan)
import st  # noqa: E402

OUT = os.path.join(sys.argv[1], "mergekit")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(1234)

MODELS = ["base", "a", "b", "c"]
def make_pool32(shapes, steps=None):
    base = {n: torch.randn(s) * 0.1 for n, s in shapes.items()}
    pool = {"base": base}
    for k, m in enumerate(MODELS[1:]):
        pool[m] = {n: t + torch.randn(t.shape) * 0.02 * (k + 1) for n, t in base.items()}
    return pool


MODELS = ["base", "a", "b", "c"]
POOL32 = make_pool32(SHAPES)


def write_pool(folder, dtype, pool32=None, dims=(H, I, V, L)):
    pool32 = pool32 or POOL32
    pool = {}
    for m in MODELS:
        d = os.path.join(OUT, folder, m)
        os.makedirs(d, exist_ok=True)
        tensors = {n: t.to(dtype) for n, t in pool32[m].items()}
        st.save(os.path.join(d, "model.safetensors"), tensors, {"format": "pt"})
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dims[0],
               "intermediate_size": dims[1], "num_hidden_layers": dims[3], "vocab_size": dims[2],
               "torch_dtype": "float32" if dtype == torch.float32 else "bfloat16"}
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 64, "tokenizer_class": "LlamaTokenizer",
                       "source": m}, f)
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump({"version": "1.0", "source": m, "added_tokens": [],
                       "model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(dims[2])}}}, f)
        pool[m] = {n: t.float() for n, t in tensors.items()}
    return pool


POOLS = {"f32": write_pool("f32", torch.float32), "bf16": write_pool("bf16", torch.bfloat16)}
# tensors of several 16384-element chunks, in bf16 (many equal magnitudes: ties at the cuts)
BIG = (128, 320, 300, 2)
POOLS["big"] = write_pool("big", torch.bfloat16, make_pool32(llama_shapes(*BIG)), BIG)

# ---------------------------------------------------------------------- the methods --

def l1_rescale(orig, masked):
    before, after = orig.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def sparsify(kind, x, name, k, density, gamma, eps, rescale, seed):
    if kind is None or density >= 1:
        return x
    n = x.numel()
    flat = x.reshape(-1)
    if kind == "magnitude":
        kk = int(density * n)
        order = torch.sort(flat.abs(), descending=True, stable=True).indices  # ties: lower index first
        mask = torch.zeros(n)
        mask[order[:kk]] = 1
    elif kind == "random":
        u = R.rng_uniform(R.rng_key(seed, name, k), n)
        mask = (u < torch.tensor(density, dtype=torch.float32)).float()
    elif kind == "outliers":
        target, top = int(density * n), int(gamma * n)
        bot = n - target - top
        if bot < 0:
            top += bot
            bot = 0
        order = torch.sort(flat.abs(), stable=True).indices
        mask = torch.zeros(n)
        mask[order[bot:n - top]] = 1  # FusionBench-C: top == 0 drops nothing (docs/mergekit.md)
    elif kind == "della":
        rows = x.reshape(1, -1) if x.dim() < 2 else x
        u = R.rng_uniform(R.rng_key(seed, name, k), n).reshape(rows.shape)
        mask = torch.zeros(rows.shape)
        lo = torch.tensor(density - eps, dtype=torch.float32)
        span = torch.tensor(2.0 * eps, dtype=torch.float32)
        for r in range(rows.shape[0]):
            row = rows[r]
            order = sorted(range(row.numel()), key=lambda j: (abs(row[j].item()), j))
            for rank, j in enumerate(order):
                norm = torch.tensor(rank / (row.numel() - 1) if row.numel() > 1 else 0.0,
                                    dtype=torch.float32)
                p = lo + norm * span
                mask[r, j] = float(u[r, j] < p)
        mask = mask.reshape(-1)
    masked = (flat * mask).reshape(x.shape)
    return l1_rescale(x, masked) if rescale else masked


def gta(method, base, xs, tps, gp, name, seed):
    kind, consensus, _, _ = GTA[method]
    deltas, ws = [], []
    for k, (x, tp) in enumerate(zip(xs, tps)):
        d = sparsify(kind, x - base, name, k, tp["density"], tp.get("gamma", 0),
                     tp.get("epsilon", 0), gp["rescale"], seed)
        deltas.append(d)
        ws.append(tp["weight"])
    deltas = torch.stack(deltas)
    w = torch.tensor(ws, dtype=torch.float32).reshape(-1, *([1] * base.dim()))
    wd = deltas * w
    if consensus:
        maj = (wd.sum(0) >= 0).float() * 2 - 1
        mask = (wd.sign() == maj).float()
        mixed = (wd * mask).sum(0)
        div = (w * mask).sum(0)
        div[div == 0] = 1
    else:
        mixed = wd.sum(0)
        div = w.sum(0)
        if div.abs() < 1e-8:
            div = torch.ones_like(div)
    if gp["normalize"]:
        mixed = mixed / div
    if gp["lambda"] != 1:
        mixed = mixed * gp["lambda"]
    return base + mixed


def nuslerp_vecs(t, v0, v1):
    def nrm(x):
        return x / x.double().norm(dim=-1, keepdim=True).clamp(min=1e-7).float()
    cos = (nrm(v0).double() * nrm(v1).double()).sum(-1, keepdim=True)
    theta = torch.acos(cos.clamp(-1, 1))
    s = torch.sin(theta)
    res = (torch.sin((1 - t) * theta) * v0.double() + torch.sin(t * theta) * v1.double()) / s
    col = s.abs() < 1e-8
    lerp = (1 - t) * v0.double() + t * v1.double()
    return torch.where(col, lerp, res).float()


def nuslerp(base, xs, tps, gp):
    w0, w1 = tps[0]["weight"], tps[1]["weight"]
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    v0, v1 = (xs[0] - base, xs[1] - base) if base is not None else (xs[0], xs[1])
    shape = v0.shape
    if gp["nuslerp_flatten"] or v0.dim() <= 1:
        r = nuslerp_vecs(t, v0.reshape(-1), v1.reshape(-1)).reshape(shape)
    elif not gp["nuslerp_row_wise"]:
        r = nuslerp_vecs(t, v0, v1)
    else:
        r = nuslerp_vecs(t, v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1)
    return r + base if base is not None else r


def multislerp(base, xs, tps, gp):
    if len(xs) == 1:
        return xs[0]
    ts = torch.stack(xs).double()
    if base is not None:
        ts = ts - base.double()
    flat = ts.reshape(ts.shape[0], -1)
    w = torch.tensor([tp["weight"] for tp in tps], dtype=torch.float64)
    if gp["normalize_weights"]:
        w = w / w.sum()
    eps = gp["eps"]
    norms = flat.norm(dim=-1, keepdim=True)
    unit = flat / (norms + eps)
    mean = (unit * w.reshape(-1, 1)).sum(0)
    mean = mean / mean.norm()
    dots = (unit * mean).sum(-1, keepdim=True)
    tan = ((unit - dots * mean) * w.reshape(-1, 1)).sum(0)
    tn = tan.norm() + eps
    res = (mean * torch.cos(tn) + tan * (torch.sin(tn) / tn)) * (norms.squeeze(-1) * w).sum()
    res = res.reshape(ts.shape[1:]).float()
    return res + base if base is not None else res


def model_stock(base, xs, gp):
    shape = base.shape
    if gp["filter_wise"]:
        b = base.reshape(-1, shape[-1]) if base.dim() >= 1 else base.reshape(1, -1)
        ws = [x.reshape(b.shape) for x in xs]
    else:
        b = base.reshape(1, -1)
        ws = [x.reshape(1, -1) for x in xs]
    offs = [(w - b).double() for w in ws]
    cs = []
    for i in range(len(offs)):
        for j in range(i + 1, len(offs)):
            npd = offs[i].norm(dim=-1) * offs[j].norm(dim=-1)
            cs.append(((offs[i] * offs[j]).sum(-1) / npd.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cs).mean(0).unsqueeze(-1)
    n = len(ws)
    t = (n * c / (1 + (n - 1) * c)).float()
    avg = sum(ws) / n
    return (t * avg + (1 - t) * b).reshape(shape)


def sce(base, xs, gp):
    tvs = torch.stack([x - base for x in xs])
    k_frac = gp["select_topk"]
    if k_frac < 1:
        var = tvs.var(dim=0, unbiased=False)
        k = int(torch.count_nonzero(var) * k_frac)
        mask = torch.zeros(var.numel())
        if k > 0:
            mask[torch.topk(var.abs().reshape(-1), k).indices] = 1
        tvs = tvs * mask.reshape(var.shape)
    maj = (tvs.sum(0) >= 0).float() * 2 - 1
    erase = (tvs.sign() == maj).float()
    w = (tvs.double() ** 2).mean(dim=list(range(1, tvs.dim())))
    w = w / w.sum() if abs(w.sum().item()) >= 1e-6 else torch.ones_like(w) / w.numel()
    w = w.float().reshape(-1, *([1] * base.dim()))
    ew = w * erase
    return base + (tvs * ew).sum(0) / ew.sum(0).clamp(min=1e-6)


def ram(base, xs, gp, plus):
    eps = gp["epsilon"]
    tv = torch.stack([x - base for x in xs]).reshape(len(xs), -1)
    nz = tv.abs() > eps
    cnt = nz.sum(0, keepdim=True)
    ov, un = cnt > 1, cnt == 1
    tvz = tv * nz
    if plus:
        shared = (nz & ov).sum(1).float()
        uniq = (nz & un).sum(1).float()
        rho = shared / uniq.clamp(min=eps)
        lam = 1 + gp["r"] * rho.clamp(min=0, max=gp["alpha"])
        merged = (tvz * un * lam.unsqueeze(-1) + tvz * ov / cnt.clamp(min=1)).sum(0)
    else:
        merged = (tvz * un + tvz * ov / cnt.clamp(min=1)).sum(0)
    return base + merged.reshape(base.shape)


def arcee_fusion(base, x):
    diff = (x - base).abs()
    p = torch.softmax(x.double(), dim=-1).float() + 1e-8
    q = torch.softmax(base.double(), dim=-1).float() + 1e-8
    kl = (p.double() * torch.log(p / q).double()).sum(-1).float()
    imp = diff * kl.unsqueeze(-1) if x.dim() >= 1 else diff * kl
    s = torch.sort(imp.reshape(-1)).values
    idx = (torch.tensor([0.5, 0.25, 0.75]) * (s.numel() - 1)).long()
    med, q1, q3 = s[idx[0]], s[idx[1]], s[idx[2]]
    thr = med + 1.5 * (q3 - q1)
    return base + (x - base) * (imp >= thr).float()


def merge(cfg, pool, seed=0):
    method = cfg["merge_method"]
    out = {}
    for name, inputs, gp, bi in plan(cfg, pool):
        ts = [pool[m][nm] for m, nm, _ in inputs]
        tps = [tp for _, _, tp in inputs]
        if method in BASE_SEPARATE and bi is not None:
            base = ts[bi]
            xs = [t for i, t in enumerate(ts) if i != bi]
            tps = [tp for i, tp in enumerate(tps) if i != bi]
        else:
            base, xs = None, ts
        if method in GTA:
            r = gta(method, base, xs, tps, gp, name, seed)
        elif method == "linear":
            w = torch.tensor([tp["weight"] for tp in tps], dtype=torch.float32)
            r = (torch.stack(xs) * w.reshape(-1, *([1] * xs[0].dim()))).sum(0)
            if gp["normalize"]:
                r = r / w.sum()
        elif method == "slerp":
            r = R.slerp({name: base}, {name: xs[0]}, float(gp["t"]))[name]
        elif method == "nuslerp":
            r = nuslerp(base, xs, tps, gp)
        elif method == "multislerp":
            r = multislerp(base, xs, tps, gp)
        elif method == "karcher":
            r = R.karcher([{name: x} for x in xs], gp["max_iter"], gp["tol"])[name]
        elif method == "passthrough":
            r = xs[0] * tps[0]["scale"] if tps[0]["scale"] is not None else xs[0]
        elif method == "model_stock":
            r = model_stock(base, xs, gp)
        elif method == "sce":
            r = sce(base, xs, gp)
        elif method in ("ram", "ramplus_tl"):
            r = ram(base, xs, gp, method == "ramplus_tl")
        elif method == "nearswap":
            w = (gp["t"] / (base - xs[0]).abs().clamp(min=1e-6)).clamp(0, 1)
            r = w * xs[0] + (1 - w) * base
        elif method == "arcee_fusion":
            r = arcee_fusion(base, xs[0])
        else:
            raise ValueError(method)
        out[name] = r
    return out


# ------------------------------------------------------------------------------ cases --

def yaml_value(v, indent):
    """A small YAML writer for the configs (so the test does not need PyYAML)."""
    pad = " " * indent
    if isinstance(v, dict):
        if not v:
            return " {}\n"
        s = "\n"
        for k, x in v.items():
            s += f"{pad}{k}:{yaml_value(x, indent + 2)}"
        return s
    if isinstance(v, list):
        if all(not isinstance(e, (dict, list)) for e in v):
            return " [" + ", ".join(scalar(e) for e in v) + "]\n"
        s = "\n"
        for e in v:
            body = yaml_value(e, indent + 2)
            s += f"{pad}-" + (" " + body.lstrip() if isinstance(e, dict) else body)
        return s
    return " " + scalar(v) + "\n"


def scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    return str(v)


def to_yaml(cfg):
    return "".join(f"{k}:{yaml_value(v, 2)}" for k, v in cfg.items())


CASES = []


def case(name, cfg, pool="f32", dtype=None, seed=0, extra=None):
    p = dict(POOLS[pool])
    text = to_yaml(cfg)  # model names are the pool's folder names: run from its folder
    with open(os.path.join(OUT, pool, name + ".yml"), "w") as f:
        f.write(text)
    with open(os.path.join(OUT, pool, name + ".json"), "w") as f:
        json.dump(cfg, f)
    res = merge(cfg, p, seed)
    out_dtype = dtype or (torch.float32 if pool == "f32" else torch.bfloat16)
    st.save(os.path.join(OUT, pool, name + ".expected.safetensors"),
            {n: t.to(out_dtype) for n, t in res.items()})
    CASES.append({"name": name, "pool": pool, "seed": seed, **(extra or {})})


W3 = [{"model": "a", "parameters": {"weight": 0.5}}, {"model": "b", "parameters": {"weight": 0.3}},
      {"model": "c", "parameters": {"weight": 0.2}}]

case("linear", {"models": W3, "merge_method": "linear", "dtype": "float32"})
case("linear_filters", {
    "models": [{"model": "a", "parameters": {"weight": [{"filter": "self_attn", "value": [0.2, 0.8]},
                                                        {"value": 0.5}]}},
               {"model": "b", "parameters": {"weight": [0.1, 0.9, 0.4]}},
               {"model": "c"}],
    "merge_method": "linear", "parameters": {"weight": 0.25, "normalize": False}})
case("slerp_gradient", {
    "slices": [{"sources": [{"model": "base", "layer_range": [0, 4]},
                            {"model": "a", "layer_range": [0, 4]}]}],
    "merge_method": "slerp", "base_model": "base",
    "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                         {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]},
    "dtype": "bfloat16"}, pool="bf16")
TIES_MODELS = [{"model": "base"},
               {"model": "a", "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
               {"model": "b", "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
               {"model": "c", "parameters": {"density": 0.33, "weight": [{"filter": "mlp", "value": 0.5},
                                                                        {"value": 0}]}}]
for pool in ("f32", "bf16"):
    case("ties_" + pool, {"models": TIES_MODELS, "merge_method": "ties", "base_model": "base",
                          "parameters": {"normalize": True, "int8_mask": True}}, pool=pool)
case("task_arithmetic", {"models": W3, "merge_method": "task_arithmetic", "base_model": "base",
                         "parameters": {"lambda": 0.8}})
GTA_MODELS = [{"model": "a", "parameters": {"weight": 0.6, "density": 0.5}},
              {"model": "b", "parameters": {"weight": 0.4, "density": [0.3, 0.7]}},
              {"model": "c", "parameters": {"weight": 0.3, "density": 0.6}}]
for m in ("dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"):
    params = {"gamma": 0.05} if "breadcrumbs" in m else {"epsilon": 0.1} if "della" in m else {}
    case(m, {"models": GTA_MODELS, "merge_method": m, "base_model": "base",
             "parameters": params}, seed=7)
case("nuslerp", {"models": [{"model": "a", "parameters": {"weight": 0.3}},
                            {"model": "b", "parameters": {"weight": 0.7}}],
                 "merge_method": "nuslerp", "base_model": "base"})
case("nuslerp_rows", {"models": [{"model": "a", "parameters": {"weight": 0.3}},
                                 {"model": "b", "parameters": {"weight": 0.7}}],
                      "merge_method": "nuslerp",
                      "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}})
case("multislerp", {"models": W3, "merge_method": "multislerp", "base_model": "base"})
case("karcher", {"models": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
                 "merge_method": "karcher"})
case("model_stock", {"models": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
                     "merge_method": "model_stock", "base_model": "base"})
case("model_stock_filter_wise", {"models": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
                                 "merge_method": "model_stock", "base_model": "base",
                                 "parameters": {"filter_wise": True}})
case("sce", {"models": [{"model": "a"}, {"model": "b"}, {"model": "c"}], "merge_method": "sce",
             "base_model": "base", "parameters": {"select_topk": 0.5}})
case("ram", {"models": [{"model": "a"}, {"model": "b"}, {"model": "c"}], "merge_method": "ram",
             "base_model": "base", "parameters": {"epsilon": 0.02}})
case("ramplus_tl", {"models": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
                    "merge_method": "ramplus_tl", "base_model": "base",
                    "parameters": {"epsilon": 0.03, "r": 0.5, "alpha": 0.4}})
case("nearswap", {"models": [{"model": "a"}], "merge_method": "nearswap", "base_model": "base",
                  "parameters": {"t": 0.01}})
case("arcee_fusion", {"models": [{"model": "a"}], "merge_method": "arcee_fusion",
                      "base_model": "base"})
case("passthrough", {
    "slices": [{"sources": [{"model": "a", "layer_range": [0, 3]}]},
               {"sources": [{"model": "b", "layer_range": [1, 4], "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"value": 1.0}]}}]}],
    "merge_method": "passthrough", "dtype": "bfloat16"}, pool="bf16", extra={"layers": 6})
case("slices_precedence", {
    "slices": [{"sources": [{"model": "base", "layer_range": [0, 2]},
                            {"model": "a", "layer_range": [0, 2], "parameters": {"weight": 0.9}},
                            {"model": "b", "layer_range": [2, 4]}],
                "parameters": {"weight": [0.1, 0.6]}},
               {"sources": [{"model": "base", "layer_range": [2, 4]},
                            {"model": "a", "layer_range": [2, 4]},
                            {"model": "b", "layer_range": [0, 2], "parameters": {"weight": [{"filter": "mlp", "value": 2.0}]}}]}],
    "merge_method": "task_arithmetic", "base_model": "base", "parameters": {"weight": 0.3}})

BIG_MODELS = [{"model": "a", "parameters": {"weight": 0.6, "density": 0.3}},
              {"model": "b", "parameters": {"weight": 0.4, "density": [0.2, 0.7]}},
              {"model": "c", "parameters": {"weight": 0.3, "density": 0.55}}]
for m in ("ties", "breadcrumbs_ties", "dare_ties", "task_arithmetic"):
    params = {"gamma": 0.02, "rescale": True} if "breadcrumbs" in m else {}
    case(m + "_big", {"models": BIG_MODELS, "merge_method": m, "base_model": "base",
                      "parameters": params}, pool="big", seed=3)

# tokenizer_source with vocabularies that differ (mergekit's PermutedEmbeddings): base has
# t0..t39; a adds the added token "<y>" at 40; b swaps t3 and t4, adds "<y>" at 40 and a plain
# "t40" at 41. Rows are rebuilt in the output tokenizer's order: a model's own row for each
# token, else the one holder's, else the base's, else the mean of the holders' (here "<y>" for
# the base: a's and b's). union: the base's tokens, then new plain ones (t40), then new added
# ones (<y>).
VOC = os.path.join(OUT, "vocab")
vocabs = {"base": {f"t{i}": i for i in range(40)},
          "a": dict({f"t{i}": i for i in range(40)}, **{"<y>": 40}),
          "b": dict({f"t{i}": (4 if i == 3 else 3 if i == 4 else i) for i in range(40)},
                    **{"<y>": 40, "t40": 41})}
vpool = {}
for m, voc in vocabs.items():
    d = os.path.join(VOC, m)
    os.makedirs(d, exist_ok=True)
    rows = len(voc)
    tensors = {n: torch.randn((rows, H) if ("embed" in n or "lm_head" in n) else shp) * 0.1
               for n, shp in SHAPES.items()}
    vpool[m] = tensors
    st.save(os.path.join(d, "model.safetensors"), tensors)
    plain = {t: i for t, i in voc.items() if not t.startswith("<")}
    added = [{"id": i, "content": t, "special": True} for t, i in voc.items() if t.startswith("<")]
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump({"model": {"type": "BPE", "vocab": plain}, "added_tokens": added, "source": m}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "num_hidden_layers": L, "vocab_size": rows}, f)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": {str(e["id"]): {"content": e["content"], "special": True}
                                            for e in added}, "source": m}, f)


def permuted(out_vocab, models, base):
    """Each model's embedding rows in out_vocab's order, as PermutedEmbeddings builds them."""
    res = {}
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        V = len(out_vocab)
        p = {m: {i: vocabs[m].get(t, -1) for t, i in out_vocab.items()} for m in models}
        default = {}
        for t, i in out_vocab.items():
            have = [m for m in models if p[m][i] >= 0]
            if len(have) == 1:
                default[i] = vpool[have[0]][n][p[have[0]][i]]
            elif base in have:
                default[i] = vpool[base][n][p[base][i]]
            elif have:
                default[i] = sum(vpool[m][n][p[m][i]] for m in have) / len(have)
        for m in models:
            res[(m, n)] = torch.stack([vpool[m][n][p[m][i]] if p[m][i] >= 0 else default[i]
                                       for i in range(V)])
    return res


W = {"base": 0.2, "a": 0.5, "b": 0.3}
union = dict(vocabs["base"], **{"t40": 40, "<y>": 41})
for src, out_vocab in (("base", vocabs["base"]), ("b", vocabs["b"]), ("union", union)):
    name = "vocab_" + src
    cfg = {"models": [{"model": m, "parameters": {"weight": w}} for m, w in W.items()],
           "merge_method": "linear", "base_model": "base", "tokenizer_source": src}
    with open(os.path.join(VOC, name + ".yml"), "w") as f:
        f.write(to_yaml(cfg))
    per = permuted(out_vocab, list(W), "base")
    expect = {}
    for n in SHAPES:
        xs = {m: per[(m, n)] if (m, n) in per else vpool[m][n] for m in W}
        expect[n] = sum(W[m] * xs[m] for m in W) / sum(W.values())
    st.save(os.path.join(VOC, name + ".expected.safetensors"), expect)
    CASES.append({"name": name, "pool": "vocab", "seed": 0, "vocab_size": len(out_vocab),
                  **({"added": [["t40", 40, False], ["<y>", 41, True]]} if src == "union" else {})})

# A PEFT LoRA adapter written here (PEFT's layout), applied to base as a merge input:
# linear with weight 1 gives W + (alpha / r) B A (embeddings: + (alpha / r) (B A)^T).
ADAPTER = os.path.join(OUT, "f32", "adapter_x")
os.makedirs(ADAPTER, exist_ok=True)
ad, expect = {}, {n: t.clone() for n, t in POOLS["f32"]["base"].items()}
RANKS = {"model.layers.1.mlp.down_proj": (2, 3.0)}  # rank_pattern / alpha_pattern
for n, shape in SHAPES.items():
    mod = n[:-len(".weight")]
    if len(shape) != 2 or "lm_head" in n:
        continue
    r, alpha = RANKS.get(mod, (4, 8.0))
    if "embed" in n:
        A, B = torch.randn(r, shape[0]) * 0.1, torch.randn(shape[1], r) * 0.1
        ad[f"base_model.model.{mod}.lora_embedding_A"] = A
        ad[f"base_model.model.{mod}.lora_embedding_B"] = B
        expect[n] = expect[n] + (B @ A).T * (alpha / r)
    else:
        A, B = torch.randn(r, shape[1]) * 0.1, torch.randn(shape[0], r) * 0.1
        ad[f"base_model.model.{mod}.lora_A.weight"] = A
        ad[f"base_model.model.{mod}.lora_B.weight"] = B
        expect[n] = expect[n] + (B @ A) * (alpha / r)
head = torch.randn(V, H)
ad["base_model.model.lm_head.weight"] = head  # modules_to_save: replaces the base's
expect["lm_head.weight"] = head
st.save(os.path.join(ADAPTER, "adapter_model.safetensors"), ad)
with open(os.path.join(ADAPTER, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": False,
               "rank_pattern": {"layers.1.mlp.down_proj": 2},
               "alpha_pattern": {"layers.1.mlp.down_proj": 3.0},
               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                  "up_proj", "down_proj", "embed_tokens"],
               "modules_to_save": ["lm_head"], "fan_in_fan_out": False}, f)
with open(os.path.join(OUT, "f32", "lora_input.yml"), "w") as f:
    f.write(to_yaml({"models": [{"model": "base+adapter_x", "parameters": {"weight": 1.0}}],
                     "merge_method": "linear"}))
st.save(os.path.join(OUT, "f32", "lora_input.expected.safetensors"), expect)
CASES.append({"name": "lora_input", "pool": "f32", "seed": 0})

# Singular values of each linear weight's task vector (a - base), for the extraction test.
svd = {}
for n, shape in SHAPES.items():
    if len(shape) == 2 and "embed" not in n and "lm_head" not in n:
        d = (POOLS["f32"]["a"][n] - POOLS["f32"]["base"][n]).double()
        svd[n] = torch.linalg.svdvals(d).tolist()
with open(os.path.join(OUT, "svd_a.json"), "w") as f:
    json.dump(svd, f)

# mergekit-multi: a linear intermediate, then ties on it
inter = merge({"models": W3[:2], "merge_method": "linear"}, POOLS["f32"])
multi_pool = dict(POOLS["f32"], first=inter)
with open(os.path.join(OUT, "f32", "multi.yml"), "w") as f:
    f.write("name: first\n" + to_yaml({"models": W3[:2], "merge_method": "linear"}) + "---\n" +
            to_yaml({"models": [{"model": "first", "parameters": {"weight": 0.7, "density": 0.6}},
                                {"model": "c", "parameters": {"weight": 0.5, "density": 0.8}}],
                     "merge_method": "ties", "base_model": "base"}))
res = merge({"models": [{"model": "first", "parameters": {"weight": 0.7, "density": 0.6}},
                        {"model": "c", "parameters": {"weight": 0.5, "density": 0.8}}],
             "merge_method": "ties", "base_model": "base"}, multi_pool)
st.save(os.path.join(OUT, "f32", "multi.expected.safetensors"), res)
CASES.append({"name": "multi", "pool": "f32", "seed": 0})

with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(CASES, f, indent=1)
print(f"mergekit reference: {len(CASES)} cases")
