"""Reference for SMILE upscaling (tests/test_smile.c), computed with PyTorch from the semantics
of FusionBench's SmileUpscalingAlgorithm and SmileMoELinear (fusion_bench/method/
smile_upscaling/smile_upscaling.py, fusion_bench/models/smile_moe/linear_from_module.py, read
for their semantics; this is an independent implementation):

    /usr/bin/python3 tests/reference/smile_ref.py OUT_DIR

Writes OUT_DIR/smile/: a tiny CLIP-layout vision tower (with visual_projection) as
_pretrained_ and three fine-tunes in which one layer (layers.1.mlp.fc2) is left as the base's
(FusionBench keeps such a layer plain), a pool file, images, and per case the image features
of the upscaled model.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from clip_torch import clip_forward, clip_params, save_pool  # noqa: E402

OUT = os.path.join(sys.argv[1], "smile")
os.makedirs(OUT, exist_ok=True)
g = torch.Generator().manual_seed(11)
CFG = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
       "num_hidden_layers": 2, "image_size": 16, "patch_size": 4, "num_channels": 3,
       "projection_dim": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
CASES = [
    {"name": "top2", "k": 4, "gate_k": 2, "top_k": 2, "routing_use_diff": True, "average_experts": False},
    {"name": "top1_weights_avg", "k": 3, "gate_k": 1, "top_k": 1, "routing_use_diff": False,
     "average_experts": True},
    {"name": "three_experts", "k": 8, "gate_k": 4, "top_k": 3, "routing_use_diff": True,
     "average_experts": False},
]


def linear_names(P):
    return [n[:-len(".weight")] for n, t in P.items()
            if n.endswith(".weight") and t.dim() == 2 and "embed" not in n]


def svd(w):
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return u.float(), s.float(), vh.T.float()


class SmileLinear:
    """FusionBench's SmileMoELinear: the pretrained layer plus the top_k of E rank-k experts."""

    def __init__(self, w0, b0, ws, bs, k, gate_k, top_k, use_diff):
        self.w0, self.b0, self.top_k = w0, b0, top_k
        diffs = [w - w0 for w in ws]
        gates, self.experts = [], []
        for i, d in enumerate(diffs):
            u, s, v = svd(d)
            gv = v if use_diff else svd(ws[i])[2]
            gates.append(gv[:, :gate_k].T)
            bias = None if b0 is None else bs[i] - b0
            self.experts.append((u[:, :k], (s[:k] * v[:, :k]).T, bias))
        self.gk = gate_k
        self.gate = torch.stack(gates).reshape(len(ws) * gate_k, -1)

    def __call__(self, x, W, b):
        out = F.linear(x, self.w0, self.b0)
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        E = len(self.experts)
        if E == 1:
            logits = torch.ones(h.shape[0], 1)
        else:
            logits = F.linear(h, self.gate).view(h.shape[0], E, self.gk).norm(p=2, dim=2)
        p = F.softmax(logits, dim=1)
        w, sel = torch.topk(p, self.top_k, dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        acc = torch.zeros(h.shape[0], self.w0.shape[0])
        for i, (u, svh, bias) in enumerate(self.experts):
            rows, slot = torch.where(sel == i)
            if rows.numel() == 0:
                continue
            y = F.linear(F.linear(h[rows], svh), u, bias) * w[rows, slot, None]
            acc.index_add_(0, rows, y)
        return out + acc.reshape(*shape[:-1], -1)


def main():
    base = clip_params(CFG, g)
    fines = []
    for m in range(3):
        P = {n: t + 0.05 * (m + 1) * torch.randn(t.shape, generator=g) for n, t in base.items()}
        for n in ("vision_model.encoder.layers.1.mlp.fc2.weight",
                  "vision_model.encoder.layers.1.mlp.fc2.bias"):
            P[n] = base[n].clone()
        fines.append(P)
    save_pool(OUT, CFG, dict(zip(["_pretrained_", "a", "b", "c"], [base] + fines)))
    images = torch.randn(5, 3, 16, 16, generator=g)
    st.save(os.path.join(OUT, "images.safetensors"), {"images": images})
    out = {}
    for case in CASES:
        layers = {}
        for ln in linear_names(base):
            w0, b0 = base[ln + ".weight"], base.get(ln + ".bias")
            ws = [P[ln + ".weight"] for P in fines]
            if all(torch.equal(w, w0) for w in ws):
                continue
            bs = None if b0 is None else [P[ln + ".bias"] for P in fines]
            layers[id(w0)] = SmileLinear(w0, b0, ws, bs, case["k"], case["gate_k"], case["top_k"],
                                         case["routing_use_diff"])
        P = dict(base)
        if case["average_experts"]:  # the other leaf modules: the fine-tunes' mean
            for n in base:
                parent = n.rsplit(".", 1)[0]
                if parent in linear_names(base):
                    continue
                leaf = not any(m.startswith(parent + ".") and "." in m[len(parent) + 1:] for m in base)
                if leaf:  # (a module's own parameter beside sub-modules stays the base's)
                    P[n] = sum(Q[n] for Q in fines) / len(fines)
        ids = {id(P[n]): id(base[n]) for n in P}

        def linear(x, W, b=None):
            lay = layers.get(ids.get(id(W), id(W)))
            return lay(x, W, b) if lay else F.linear(x, W, b)

        with torch.no_grad():
            feats = clip_forward(P, CFG, images, linear=linear)
        out[case["name"]] = {"params": {k: v for k, v in case.items() if k != "name"},
                             "features": feats.tolist(), "upscaled": len(layers)}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
