"""mergekit's planning, as its config.py and plan.py define it (read for the semantics, written
independently): parameter settings (scalars, gradients, {filter, value} lists) and their
precedence (source > slice > top level), `models:` normalised into one slice with the base
appended, t per layer, and the output tensors of slices. Shared by mergekit_ref.py and
mergekit_own.py; the pool layout (model.layers.N..., embeddings first, norm and lm_head last)
is mergekit_ref.py's.
"""
import json

H, I, V, L = 16, 24, 40, 4


def llama_shapes(H, I, V, L):
    """A Llama state dict's names and shapes: embeddings, L layers, final norm, lm_head."""
    shapes = {"model.embed_tokens.weight": (V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (H, H), p + "self_attn.k_proj.weight": (H, H),
                       p + "self_attn.v_proj.weight": (H, H), p + "self_attn.o_proj.weight": (H, H),
                       p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                       p + "mlp.down_proj.weight": (H, I), p + "input_layernorm.weight": (H,),
                       p + "post_attention_layernorm.weight": (H,)})
    shapes["model.norm.weight"] = (H,)
    shapes["lm_head.weight"] = (V, H)
    return shapes


SHAPES = llama_shapes(H, I, V, L)


def read_config(path):
    """A case's configuration, from the JSON copy mergekit_ref.py writes beside its YAML."""
    with open(path[:-4] + ".json") as f:
        return json.load(f)


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def evaluate(setting, tensor, t):
    if setting is None:
        return None
    if not isinstance(setting, list):
        return setting
    if all(is_num(e) for e in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    if all(not isinstance(e, dict) for e in setting):
        return setting[int(t * (len(setting) - 1))]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or f in tensor:
            return evaluate(cond["value"], tensor, t)
    return None


def layer_of(name):
    parts = name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
        return int(parts[2]), ".".join(parts[3:])
    return None, None


GLOBAL = {
    "linear": {"normalize": True}, "slerp": {"t": None},
    "nuslerp": {"nuslerp_row_wise": False, "nuslerp_flatten": True},
    "multislerp": {"normalize_weights": True, "eps": 1e-8}, "karcher": {"max_iter": 10, "tol": 1e-5},
    "passthrough": {}, "model_stock": {"filter_wise": False}, "arcee_fusion": {},
    "nearswap": {"t": None}, "sce": {"select_topk": 1.0, "int8_mask": False},
    "ram": {"epsilon": 1e-5}, "ramplus_tl": {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5},
}
GTA = {  # name: (sparsify, consensus, normalize, rescale)
    "task_arithmetic": (None, False, False, False), "ties": ("magnitude", True, True, False),
    "dare_ties": ("random", True, False, True), "dare_linear": ("random", False, False, True),
    "breadcrumbs": ("outliers", False, False, False),
    "breadcrumbs_ties": ("outliers", True, False, False),
    "della": ("della", True, True, True), "della_linear": ("della", False, False, True),
}
for g, (_, _, nz, rs) in GTA.items():
    GLOBAL[g] = {"int8_mask": False, "normalize": nz, "rescale": rs, "lambda": 1.0}
TENSOR = {"linear": {"weight": None}, "nuslerp": {"weight": None}, "multislerp": {"weight": None},
          "passthrough": {"scale": None}}
for g in GTA:
    TENSOR[g] = {"weight": None, "density": 1.0}
TENSOR["breadcrumbs"]["gamma"] = TENSOR["breadcrumbs_ties"]["gamma"] = 0.01
TENSOR["della"]["epsilon"] = TENSOR["della_linear"]["epsilon"] = 0.15
BASE_SEPARATE = {"slerp", "nuslerp", "multislerp", "model_stock", "arcee_fusion", "nearswap",
                 "sce", "ram", "ramplus_tl"} | set(GTA)


def plan(cfg, pool):
    """[(out_name, [(model, in_name, tensor params)], global params, base_index)]"""
    method = cfg["merge_method"]
    names = list(pool["base"])
    L = 1 + max(layer_of(n)[0] for n in names if layer_of(n)[0] is not None)

    def layer_names(i):
        return [n for n in names if layer_of(n)[0] == i]
    base = cfg.get("base_model")
    top = cfg.get("parameters") or {}
    if "models" in cfg:
        srcs = [{"model": m["model"], "layer_range": [0, L], "parameters": m.get("parameters")}
                for m in cfg["models"]]
        if base and base not in [s["model"] for s in srcs]:
            srcs.append({"model": base, "layer_range": [0, L], "parameters": None})
        slices = [{"sources": srcs}]
        identity = True
    else:
        slices = cfg["slices"]
        identity = False

    def param(sl, model, tensor, t, name):
        if model is not None:
            for s in sl["sources"]:
                if s["model"] == model and s.get("parameters") and name in s["parameters"]:
                    v = evaluate(s["parameters"][name], tensor, t)
                    if v is not None:
                        return v
        for level in (sl.get("parameters") or {}, top):
            if name in level:
                v = evaluate(level[name], tensor, t)
                if v is not None:
                    return v
        return None

    def entry(sl, out, ins, t):
        gp = {}
        for k, d in GLOBAL[method].items():
            v = param(sl, None, out, t, k)
            gp[k] = d if v is None else v
        b = sl.get("base_model") or base
        inputs = []
        for s, nm in zip(sl["sources"], ins):
            tp = {}
            for k, d in TENSOR.get(method, {}).items():
                v = param(sl, s["model"], nm, t, k)
                tp[k] = d if v is None else v
            inputs.append((s["model"], nm, tp))
        bi = [s["model"] for s in sl["sources"]].index(b) if b in [s["model"] for s in sl["sources"]] else None
        return (out, inputs, gp, bi)

    res = []
    if identity:
        sl = slices[0]
        for n in names:
            li, _ = layer_of(n)
            t = 0.0 if li is None else li / (L - 1)
            res.append(entry(sl, n, [n] * len(sl["sources"]), t))
        return res
    pre = [n for n in names if layer_of(n)[0] is None and "embed" in n]
    post = [n for n in names if layer_of(n)[0] is None and "embed" not in n]
    for n in pre:
        res.append(entry(slices[0], n, [n] * len(slices[0]["sources"]), 0.0))
    out_layer = 0
    for sl in slices:
        lo0, hi0 = sl["sources"][0]["layer_range"]
        num = hi0 - lo0
        for idx in range(num):
            t = idx / (num - 1) if num > 1 else 1
            for rest in [k[len(f"model.layers.{lo0 + idx}."):] for k in layer_names(lo0 + idx)]:
                out = f"model.layers.{out_layer}.{rest}"
                ins = [f"model.layers.{s['layer_range'][0] + idx}.{rest}" for s in sl["sources"]]
                res.append(entry(sl, out, ins, t))
            out_layer += 1
    for n in post:
        res.append(entry(slices[-1], n, [n] * len(slices[-1]["sources"]), 0.0))
    return res


