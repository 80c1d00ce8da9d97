"""Reference for Weight-Ensembling MoE (tests/test_wemoe.c), computed with PyTorch from the
semantics of FusionBench's WeightEnsemblingMoE and its test-time adaptation (fusion_bench/
models/we_moe.py, fusion_bench/method/we_moe/clip_we_moe.py and we_moe.py, read for their
semantics; this is an independent implementation):

    /usr/bin/python3 tests/reference/wemoe_ref.py OUT_DIR

Writes OUT_DIR/wemoe/: a tiny CLIP-layout vision tower as _pretrained_ and three fine-tunes, a
pool file, and per router depth (0, 1, 2) an upscaled model under FusionBench's names (random
routers, so that routing differs per image), images, a cosine head, and:
  - the image features with routing per image and with batch_reduce,
  - the routers' gradients of the head's mean prediction entropy (both routings),
  - the routers after one torch.optim.Adam step on that loss.
It also writes the model FusionBench's construction gives (task arithmetic at init_lambda for
the rest, the pretrained MLP as base_model, task vectors) for the method's own check.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from clip_torch import clip_forward, clip_params, save_pool  # noqa: E402

g = torch.Generator().manual_seed(23)
CFG = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
       "num_hidden_layers": 2, "image_size": 16, "patch_size": 4, "num_channels": 3,
       "projection_dim": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
E, D, L = 3, CFG["hidden_size"], CFG["num_hidden_layers"]
PARTS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
LR = 0.01
LOGIT_SCALE = 20.0


def gate_shapes(depth, Din=D):
    return {0: [("weight", (E,))],
            1: [("fc.weight", (E, Din)), ("fc.bias", (E,))],
            2: [("fc1.weight", (Din, Din)), ("fc1.bias", (Din,)), ("fc2.weight", (E, Din)),
                ("fc2.bias", (E,))]}[depth]


def router(gate, depth, x):
    """the gate's output for hidden states x [B, T, D] (Depth_0: its weight)"""
    if depth == 0:
        return gate["weight"]
    if depth == 1:
        return F.linear(x, gate["fc.weight"], gate["fc.bias"])
    return F.linear(F.relu(F.linear(x, gate["fc1.weight"], gate["fc1.bias"])),
                    gate["fc2.weight"], gate["fc2.bias"])


def mlp(x, p):
    h = F.linear(x, p["fc1.weight"], p["fc1.bias"])
    return F.linear(h * torch.sigmoid(1.702 * h), p["fc2.weight"], p["fc2.bias"])


def merge(base, tvs, r):
    """WeightEnsemblingMoE.merge_weights: the base plus each expert's weighted task vector, in
    expert order"""
    out = {}
    for k in PARTS:
        m = base[k]
        for i, tv in enumerate(tvs):
            m = m + r[i] * tv[k]
        out[k] = m
    return out


def position_code(layer, dim):
    """the sparse variant's layer code: sin(l w_i) then cos(l w_i), w_i = 10000^(-2i/dim)"""
    i = np.arange(dim // 2)
    w = 1 / np.power(10000, (2 * i) / dim)
    return torch.from_numpy(np.concatenate([np.sin(layer * w), np.cos(layer * w)])).float()


def moe_mlp(x, base, tvs, gate, depth, batch_reduce, pe=None):
    """WeightEnsemblingMoE.forward with batch_first: merged weights base + sum_i r_i tau_i;
    pe: the shared router's layer code, put before x"""
    gin = x if pe is None else torch.cat((pe.expand(x.shape[0], x.shape[1], pe.numel()), x), -1)
    r = router(gate, depth, gin)
    if depth == 0:
        merged = merge(base, tvs, r)
        return mlp(x, merged)
    r = r.mean(dim=1)  # over tokens
    if batch_reduce:
        r = r.mean(dim=0)
        merged = merge(base, tvs, r)
        return mlp(x, merged)
    outs = []
    for b in range(x.shape[0]):
        merged = merge(base, tvs, r[b])
        outs.append(mlp(x[b:b + 1], merged))
    return torch.cat(outs, 0)


def forward(P, moe, images, depth, batch_reduce, cfg=CFG, pe_dim=0):
    """the tower with every layer's MLP replaced: the linear hook computes the whole MLP when
    it sees fc1's input, and fc2 returns that output"""
    vm = "vision_model.encoder.layers."
    ids = {}
    for l in range(cfg["num_hidden_layers"]):
        ids[id(P[f"{vm}{l}.mlp.fc1.weight"])] = ("fc1", l)
        ids[id(P[f"{vm}{l}.mlp.fc2.weight"])] = ("fc2", l)

    done = {}

    def linear(x, W, b=None):
        tag = ids.get(id(W))
        if tag is None:
            return F.linear(x, W, b)
        kind, l = tag
        if kind == "fc2":  # the MLP's output, computed when fc1 saw its input
            return done.pop(l)
        base, tvs, gate = moe[l]
        pe = position_code(l, pe_dim) if pe_dim else None
        done[l] = moe_mlp(x, base, tvs, gate, depth, batch_reduce, pe)
        return x[..., :1].expand(*x.shape[:-1], cfg["intermediate_size"])

    return clip_forward(P, cfg, images, linear=linear)


def entropy_loss(logits):
    p = torch.softmax(logits, dim=-1)
    return -(p * torch.log(p + 1e-8)).sum(-1).mean()


def main():
    OUT = os.path.join(sys.argv[1], "wemoe")
    os.makedirs(OUT, exist_ok=True)
    base = clip_params(CFG, g)
    fines = [{n: t + 0.05 * (m + 1) * torch.randn(t.shape, generator=g) for n, t in base.items()}
             for m in range(E)]
    save_pool(OUT, CFG, dict(zip(["_pretrained_", "a", "b", "c"], [base] + fines)))
    images = torch.randn(4, 3, 16, 16, generator=g)
    head = F.normalize(torch.randn(5, CFG["projection_dim"], generator=g), dim=-1)
    st.save(os.path.join(OUT, "inputs.safetensors"), {"images": images, "head": head})

    # FusionBench's construction at init_lambda 0.3 (routers aside): the method's check
    lam = 0.3
    built = {}
    for n, t in base.items():
        if ".mlp." in n and n.startswith("vision_model.encoder.layers."):
            pre, part = n.split(".mlp.")
            built[f"{pre}.mlp.base_model.{part}"] = t
            for i, P in enumerate(fines):
                built[f"{pre}.mlp.task_vectors.{i}.{part}"] = P[n] - t
        else:
            tv = None
            for P in fines:
                tv = P[n] - t if tv is None else tv + (P[n] - t)
            built[n] = t + tv * lam
    st.save(os.path.join(OUT, "constructed.safetensors"), built)
    # the sparse variant's task vectors: FusionBench's _magnitude_prune at tv_prune_ratio 0.9
    sparse = {}
    for n, t in built.items():
        if ".task_vectors." in n:
            a = t.abs()
            t = t * (a > a.quantile(0.9))
        sparse[n] = t
    st.save(os.path.join(OUT, "constructed_sparse.safetensors"), sparse)

    cases = {}
    PE = 4  # the shared router's position code (FusionBench's sparse variant)
    for case_name, depth, shared in (("0", 0, False), ("1", 1, False), ("2", 2, False),
                                     ("shared", 2, True)):
        P = {n: t.clone() for n, t in built.items() if ".mlp." not in n}
        moe, tensors = [], dict(built)
        gates, params = [], []
        shared_gate = None
        for l in range(L):
            pre = f"vision_model.encoder.layers.{l}.mlp."
            P[pre + "fc1.weight"] = built[pre + "base_model.fc1.weight"]  # hook keys only
            P[pre + "fc1.bias"] = built[pre + "base_model.fc1.bias"]
            P[pre + "fc2.weight"] = built[pre + "base_model.fc2.weight"]
            P[pre + "fc2.bias"] = built[pre + "base_model.fc2.bias"]
            b = {k: built[pre + "base_model." + k] for k in PARTS}
            tvs = [{k: built[f"{pre}task_vectors.{i}.{k}"] for k in PARTS} for i in range(E)]
            gate = shared_gate or {}
            for k, shape in gate_shapes(depth, D + PE if shared else D):
                if k not in gate:
                    if k.endswith("weight") and len(shape) == 2:
                        v = 0.3 * torch.randn(shape, generator=g)
                    else:
                        v = 0.3 + 0.2 * torch.randn(shape, generator=g)
                    gate[k] = v.requires_grad_(True)
                    params.append(gate[k])
                tensors[pre + "gate." + k] = gate[k].detach().clone()
                gates.append((pre + "gate." + k, gate[k]))
            if shared:
                shared_gate = gate
            moe.append((b, tvs, gate))
        meta = {"fusionbench_c.structure": "weight_ensembling_moe",
                "wemoe.num_experts": str(E), "wemoe.router_hidden_layers": str(depth),
                "wemoe.batch_reduce": "false"}
        if shared:
            meta.update({"wemoe.shared_gate": "true", "wemoe.position_encoding_dim": str(PE)})
        st.save(os.path.join(OUT, f"model{case_name}.safetensors"), tensors, metadata=meta)
        case = {}
        for br in (False, True):
            for _, v in gates:
                v.grad = None
            feats = forward(P, moe, images, depth, br, pe_dim=PE if shared else 0)
            logits = LOGIT_SCALE * F.normalize(feats, dim=-1) @ head.T
            loss = entropy_loss(logits)
            loss.backward()
            key = "batch" if br else "image"
            case["features_" + key] = feats.detach().reshape(-1).tolist()
            case["loss_" + key] = loss.item()
            case["grads_" + key] = {n: v.grad.reshape(-1).tolist() for n, v in gates}
            if br:  # one Adam step on the batch-reduced loss (FusionBench's adaptation)
                opt = torch.optim.Adam(params, lr=LR)
                opt.step()
                case["after_step"] = {n: v.detach().reshape(-1).tolist() for n, v in gates}
        cases[case_name] = case
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"lr": LR, "logit_scale": LOGIT_SCALE, "cases": cases}, f)


if __name__ == "__main__":
    main()
