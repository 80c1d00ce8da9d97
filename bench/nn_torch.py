"""PyTorch side of bench/nn: the same CLIP vision tower (tests/reference/clip_torch.py), the
same shapes and threads; prints 'name forward_img_s train_img_s' per configuration.

    /usr/bin/python3 bench/nn_torch.py THREADS REPS name:hidden:inter:heads:layers:image:patch:channels:proj:batch ...
"""
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from clip_torch import clip_forward, clip_params  # noqa: E402

threads, reps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
for spec in sys.argv[3:]:
    name, *v = spec.split(":")
    E, I, H, L, S, P, C, proj, B = map(int, v)
    cfg = {"hidden_size": E, "intermediate_size": I, "num_attention_heads": H,
           "num_hidden_layers": L, "image_size": S, "patch_size": P, "num_channels": C,
           "projection_dim": proj, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    g = torch.Generator().manual_seed(0)
    params = {k: v.requires_grad_(True) for k, v in clip_params(cfg, g).items()}
    images = torch.randn(B, C, S, S, generator=g)
    W = F.normalize(torch.randn(10, proj or E, generator=g), dim=-1)
    y = torch.randint(0, 10, (B,), generator=g)
    fwd, train = [], []
    with torch.no_grad():
        clip_forward(params, cfg, images)
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.no_grad():
            clip_forward(params, cfg, images)
        fwd.append(time.perf_counter() - t0)
    for _ in range(reps):
        t0 = time.perf_counter()
        f = clip_forward(params, cfg, images)
        loss = F.cross_entropy(10.0 * F.normalize(f, dim=-1) @ W.T, y)
        for p in params.values():
            p.grad = None
        loss.backward()
        train.append(time.perf_counter() - t0)
    print(name, B / statistics.median(fwd), B / statistics.median(train), flush=True)
