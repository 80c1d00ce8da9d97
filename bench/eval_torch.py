"""PyTorch and Pillow side of bench/eval: CLIP-ViT-B/32's image features at the given batch
(tests/reference/clip_torch.py under torch.no_grad, same threads), and Pillow decoding a JPEG
and resizing it as CLIPProcessor does (shortest edge 224, bicubic, centre crop), over the
same number of worker processes as threads.

    /usr/bin/python3 bench/eval_torch.py THREADS REPS BATCH PNG JPEG
"""
import io
import os
import statistics
import sys
import time
from multiprocessing import Pool

import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from clip_torch import B32, clip_forward, clip_params  # noqa: E402

threads, reps, B = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
cfg = B32
g = torch.Generator().manual_seed(0)
params = clip_params(cfg, g)
images = torch.randn(B, 3, 224, 224, generator=g)
times = []
with torch.no_grad():
    clip_forward(params, cfg, images)
    for _ in range(reps):
        t0 = time.perf_counter()
        clip_forward(params, cfg, images)
        times.append(time.perf_counter() - t0)
print("forward", B / statistics.median(times), flush=True)
del params, images

data = b""


def one(_):
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s, l = (w, h) if w <= h else (h, w)
    nl = int(224 * l / s)
    img = img.resize((224, nl) if w <= h else (nl, 224), resample=Image.BICUBIC)
    w, h = img.size
    return img.crop(((w - 224) // 2, (h - 224) // 2, (w - 224) // 2 + 224, (h - 224) // 2 + 224)).tobytes()


N = 256
for kind, path in (("png", sys.argv[4]), ("jpg", sys.argv[5])):
    with open(path, "rb") as f:
        data = f.read()
    times = []
    with Pool(threads) as pool:  # forked after `data` is set
        pool.map(one, range(threads))
        for _ in range(reps):
            t0 = time.perf_counter()
            pool.map(one, range(N), chunksize=8)
            times.append(time.perf_counter() - t0)
    print("decode_" + kind, N / statistics.median(times), flush=True)
