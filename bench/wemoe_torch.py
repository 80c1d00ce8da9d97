"""PyTorch side of bench/wemoe: one Weight-Ensembling MoE adaptation step on a CLIP-ViT-B/32-sized
tower (8 experts, FusionBench's Depth_2 router, batch_reduce) computed as FusionBench's
WeightEnsemblingMoE computes it (tests/reference/wemoe_ref.py's moe_mlp, which follows it): the
forward pass of a batch, the entropy of its cosine-head predictions, backward to the routers
(everything else frozen), one torch.optim.Adam step. Same threads. Prints
'wemoe seconds_per_step peak_rss_mb'.

    /usr/bin/python3 bench/wemoe_torch.py THREADS REPS BATCH
"""
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
from clip_torch import B32, clip_params  # noqa: E402
from wemoe_ref import PARTS, entropy_loss, forward  # noqa: E402

threads, reps, B = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
cfg = B32
g = torch.Generator().manual_seed(0)
P = clip_params(cfg, g)
E, D, K = 8, cfg["hidden_size"], 10
moe, gates = [], []
for l in range(cfg["num_hidden_layers"]):
    pre = f"vision_model.encoder.layers.{l}.mlp."
    base = {k: P[pre + k] for k in PARTS}
    tvs = [{k: 0.01 * torch.randn(base[k].shape, generator=g) for k in PARTS} for _ in range(E)]
    gate = {"fc1.weight": 0.01 * torch.randn(D, D, generator=g), "fc1.bias": torch.zeros(D),
            "fc2.weight": 0.01 * torch.randn(E, D, generator=g), "fc2.bias": torch.full((E,), 0.3)}
    for v in gate.values():
        v.requires_grad_(True)
        gates.append(v)
    moe.append((base, tvs, gate))
head = F.normalize(torch.randn(K, cfg["projection_dim"], generator=g), dim=-1)
images = torch.randn(B, 3, 224, 224, generator=g)
opt = torch.optim.Adam(gates, lr=1e-4)


def step():
    feats = forward(P, moe, images, 2, True, cfg)
    loss = entropy_loss(100.0 * F.normalize(feats, dim=-1) @ head.T)
    loss.backward()
    opt.step()
    opt.zero_grad()


step()
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("wemoe", statistics.median(times), peak, flush=True)
