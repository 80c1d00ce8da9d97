"""PyTorch side of bench/smile: a CLIP-ViT-B/32-sized tower whose linear layers compute as
FusionBench's SmileMoELinear (8 experts, k 32, gate_k 16, top_k 1; tests/reference/smile_ref.py's
SmileLinear, which follows it) under torch.no_grad, same threads. Prints
'smile images_per_s peak_rss_mb'.

    /usr/bin/python3 bench/smile_torch.py THREADS REPS BATCH
"""
import os
import resource
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
from clip_torch import B32, clip_forward, clip_params  # noqa: E402
from smile_ref import SmileLinear  # noqa: E402

threads, reps, B = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
cfg = B32
g = torch.Generator().manual_seed(0)
P = clip_params(cfg, g)
E, k, gk = 8, 32, 16
layers = {}
for n, w0 in P.items():
    if n.endswith(".weight") and w0.dim() == 2 and "encoder.layers" in n:
        lay = SmileLinear.__new__(SmileLinear)
        out, inp = w0.shape
        lay.w0, lay.b0, lay.top_k, lay.gk = w0, P[n[:-7] + ".bias"], 1, gk
        lay.gate = torch.randn(E * gk, inp, generator=g) * 0.05
        lay.experts = [(torch.randn(out, k, generator=g) * 0.05, torch.randn(k, inp, generator=g) * 0.005,
                        torch.randn(out, generator=g) * 0.005) for _ in range(E)]
        layers[id(w0)] = lay


def linear(x, W, b=None):
    lay = layers.get(id(W))
    return lay(x, W, b) if lay else torch.nn.functional.linear(x, W, b)


images = torch.randn(B, 3, 224, 224, generator=g)
times = []
with torch.no_grad():
    clip_forward(P, cfg, images, linear=linear)
    for _ in range(reps):
        t0 = time.perf_counter()
        clip_forward(P, cfg, images, linear=linear)
        times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("smile", B / statistics.median(times), peak, flush=True)
