"""PyTorch side of bench/adamerging: one AdaMerging step as FusionBench takes it (merged
parameters as a function of the layer-wise coefficients, every task's batch forward through
the CLIP tower, summed entropy, backward to the coefficients, Adam step), same shapes and
threads; prints 'name seconds_per_step peak_rss_mb' per configuration.

    /usr/bin/python3 bench/adamerging_torch.py THREADS REPS MODELS TASKS BATCH name:hidden:inter:heads:layers:image:patch:channels:proj ...
"""
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from clip_torch import clip_forward, clip_params  # noqa: E402

threads, reps, K, T, B = map(int, sys.argv[1:6])
torch.set_num_threads(threads)
for spec in sys.argv[6:]:
    name, *v = spec.split(":")
    E, I, H, L, S, P, C, proj = map(int, v)
    cfg = {"hidden_size": E, "intermediate_size": I, "num_attention_heads": H,
           "num_hidden_layers": L, "image_size": S, "patch_size": P, "num_channels": C,
           "projection_dim": proj, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    g = torch.Generator().manual_seed(0)
    theta0 = clip_params(cfg, g)
    taus = [{n: 0.01 * torch.randn(p.shape, generator=g) for n, p in theta0.items()} for _ in range(K)]
    names = list(theta0)
    lam = torch.full((K, len(names)), 0.3, requires_grad=True)
    opt = torch.optim.Adam([lam], lr=1e-3)
    batches = [torch.randn(B, C, S, S, generator=g) for _ in range(T)]
    heads = [F.normalize(torch.randn(10, proj or E, generator=g), dim=-1) for _ in range(T)]
    times = []
    for r in range(reps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        merged = {n: theta0[n] + sum(lam[k, l] * taus[k][n] for k in range(K)) for l, n in enumerate(names)}
        loss = 0
        for x, W in zip(batches, heads):
            p = F.softmax(100.0 * F.normalize(clip_forward(merged, cfg, x), dim=-1) @ W.T, dim=-1)
            loss = loss + (-(p * torch.log(p)).sum(-1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if r:
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(name, statistics.median(times), rss, flush=True)
