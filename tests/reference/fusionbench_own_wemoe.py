"""FusionBench's own WeightEnsemblingMoE and SparseWeightEnsemblingMoE_ShardGate on the WEMoE
reference pool, against the reference values tests/test_wemoe.c holds FusionBench-C to.

    git -C FUSION_BENCH_REPO archive HEAD fusion_bench/models/we_moe.py \\
        fusion_bench/models/sparse_we_moe.py | tar -x -C DIR
    /usr/bin/python3 tests/reference/fusionbench_own_wemoe.py DIR REF_DIR

REF_DIR is `make test`'s build/ref (tests/reference/wemoe_ref.py wrote REF_DIR/wemoe). The two
module files are executed from their source, their imports of FusionBench's helpers replaced by
small stand-ins (attribute access by dotted path, type aliases, tqdm; torch.func's
functional_call from torch.nn.utils.stateless on Debian's torch 1.13). For each case of
REF_DIR/wemoe/cases.json, every layer's MLP becomes FusionBench's module built from the pool's
MLPs (CLIPMLP's fc1, quick GELU, fc2), its router set from the case's saved model, the tower run
(clip_torch's forward) with routing per image and per batch; the features, the entropy loss,
the routers' gradients and one torch.optim.Adam step are compared with the case's. The sparse
variant's magnitude pruning (tv_prune_ratio 0.9) is compared with constructed_sparse. Prints
one row per comparison: the largest difference relative to the largest reference value.
"""
import json
import os
import sys
import types
from typing import TypeVar

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st  # noqa: E402
from clip_torch import clip_forward  # noqa: E402

FB, REF = sys.argv[1], sys.argv[2]
W = os.path.join(REF, "wemoe")
root = os.path.join(FB, "fusion_bench", "models")


def get_attr(obj, names):
    for n in names:
        obj = getattr(obj, n)
    return obj


def set_attr(obj, names, val):
    setattr(get_attr(obj, names[:-1]), names[-1], val)


def del_attr(obj, names):
    delattr(get_attr(obj, names[:-1]), names[-1])


def stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


stub("fusion_bench")
stub("fusion_bench.models")
stub("fusion_bench.models.utils", get_attr=get_attr, set_attr=set_attr, del_attr=del_attr)
stub("fusion_bench.utils")
stub("fusion_bench.utils.type", StateDictType=dict, TorchModelType=TypeVar("TorchModelType"))
stub("fusion_bench.utils.state_dict_arithmetic", state_dict_sub=None,
     state_dict_weighted_sum=None)
if not hasattr(torch, "func"):  # torch 1.13 (Debian 12): functional_call lives elsewhere
    from torch.nn.utils.stateless import functional_call as _functional_call

    torch.func = stub("torch.func", functional_call=_functional_call)
stub("tqdm")
stub("tqdm.auto", tqdm=lambda it, *a, **k: it)


def module_from(path, name):
    mod = types.ModuleType(name)
    exec(compile(open(path).read(), path, "exec"), mod.__dict__)
    return mod


we_moe = module_from(os.path.join(root, "we_moe.py"), "we_moe")
sparse_we_moe = module_from(os.path.join(root, "sparse_we_moe.py"), "sparse_we_moe")

cfg = json.load(open(os.path.join(W, "config.json")))
D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
base = st.load(os.path.join(W, "_pretrained_.safetensors"))[0]
fines = [st.load(os.path.join(W, m + ".safetensors"))[0] for m in ("a", "b", "c")]
built = st.load(os.path.join(W, "constructed.safetensors"))[0]
inputs = st.load(os.path.join(W, "inputs.safetensors"))[0]
ref = json.load(open(os.path.join(W, "cases.json")))
images, head = inputs["images"], inputs["head"]


class MLP(torch.nn.Module):
    """transformers' CLIPMLP with quick GELU"""

    def __init__(self, P, pre):
        super().__init__()
        w1, w2 = P[pre + "fc1.weight"], P[pre + "fc2.weight"]
        self.fc1 = torch.nn.Linear(w1.shape[1], w1.shape[0])
        self.fc2 = torch.nn.Linear(w2.shape[1], w2.shape[0])
        for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
            get_attr(self, n.split(".")).data = P[pre + n].clone()

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))


def report(what, got, want):
    got, want = got.detach().reshape(-1), torch.tensor(want).reshape(-1)
    rel = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    print(f"{what:60s} {rel:.2e}")
    return rel


worst = 0.0
for key, case in ref["cases"].items():
    depth = 2 if key == "shared" else int(key)
    saved = st.load(os.path.join(W, f"model{key}.safetensors"))[0]
    for br in (False, True):
        mods = []
        shared = None
        if key == "shared":
            shared = sparse_we_moe.construct_weight_ensembling_gate(D + 4, 3, 0.3, depth)
        for l in range(L):
            pre = f"vision_model.encoder.layers.{l}.mlp."
            b = MLP(base, pre)
            experts = [MLP(P, pre) for P in fines]
            if shared is None:
                m = we_moe.WeightEnsemblingMoE(D, b, experts, init_lambda=0.3, batch_first=True,
                                               router_hidden_layers=depth, batch_reduce=br)
            else:
                m = sparse_we_moe.SparseWeightEnsemblingMoE_ShardGate(
                    D, b, experts, init_lambda=0.3, batch_first=True, router_hidden_layers=depth,
                    batch_reduce=br, num_layers=L, layer_idx=l, tv_prune_ratio=0,
                    sharedgate=shared, position_encoding=True, position_encoding_dim=4)
                # (its _magnitude_prune zeroes each tensor's smallest entry even at ratio 0:
                # the case's task vectors are the unpruned ones)
                for i, tv in enumerate(m.task_vectors):
                    for n, p in tv.named_parameters():
                        p.data = saved[f"{pre}task_vectors.{i}.{n}"].clone()
            for n, p in m.gate.named_parameters():
                p.data = saved[pre + "gate." + n].clone()
            mods.append(m)
        P = {n: t for n, t in built.items() if ".mlp." not in n}
        ids, done = {}, {}
        for l in range(L):
            pre = f"vision_model.encoder.layers.{l}.mlp."
            for part in ("fc1", "fc2"):
                P[pre + part + ".weight"] = built[pre + "base_model." + part + ".weight"]
                P[pre + part + ".bias"] = built[pre + "base_model." + part + ".bias"]
                ids[id(P[pre + part + ".weight"])] = (part, l)

        def linear(x, Wt, bias=None):
            tag = ids.get(id(Wt))
            if tag is None:
                return F.linear(x, Wt, bias)
            if tag[0] == "fc2":
                return done.pop(tag[1])
            done[tag[1]] = mods[tag[1]](x)
            return x[..., :1].expand(*x.shape[:-1], cfg["intermediate_size"])

        feats = clip_forward(P, cfg, images, linear=linear)
        logits = ref["logit_scale"] * F.normalize(feats, dim=-1) @ head.T
        p = torch.softmax(logits, -1)
        loss = -(p * torch.log(p + 1e-8)).sum(-1).mean()
        loss.backward()
        kind = "batch" if br else "image"
        worst = max(worst, report(f"{key}: features, routing per {kind}", feats,
                                  case["features_" + kind]))
        params = {}
        for l, m in enumerate(mods):
            for n, p in m.gate.named_parameters():
                name = f"vision_model.encoder.layers.{l}.mlp.gate.{n}"
                worst = max(worst, report(f"{key} {kind}: d {name[-34:]}", p.grad,
                                          case["grads_" + kind][name]))
                params[id(p)] = p
        if br:
            torch.optim.Adam(list(params.values()), lr=ref["lr"]).step()
            for l, m in enumerate(mods):
                for n, p in m.gate.named_parameters():
                    name = f"vision_model.encoder.layers.{l}.mlp.gate.{n}"
                    worst = max(worst, report(f"{key}: {name[-34:]} after Adam", p,
                                              case["after_step"][name]))

# the sparse variant's task vectors
sparse = st.load(os.path.join(W, "constructed_sparse.safetensors"))[0]
for l in range(L):
    pre = f"vision_model.encoder.layers.{l}.mlp."
    m = sparse_we_moe.SparseWeightEnsemblingMoE(D, MLP(base, pre), [MLP(P, pre) for P in fines],
                                                router_hidden_layers=2, tv_prune_ratio=0.9)
    for i, tv in enumerate(m.task_vectors):
        for n, p in tv.named_parameters():
            worst = max(worst, report(f"pruned {pre}task_vectors.{i}.{n}"[-60:], p,
                                      sparse[f"{pre}task_vectors.{i}.{n}"].tolist()))
print(f"largest relative difference: {worst:.2e}")
