"""FusionBench's MaxModelPredictor on CLIP towers, in plain PyTorch, for one test: the
element-wise maximum of the towers' outputs (before visual_projection), projected by the base
model's visual_projection, normalised, against each task's head, times the logit scale.

    ensemble_max.py ZOO_DIR INPUTS.safetensors OUT.json MODEL [MODEL ...]

INPUTS holds images.<task>, labels.<task>, head.<task> and logit_scale (written by the C test
from its task pool); ZOO_DIR has config.json and the models (MODEL.safetensors, and
_pretrained_.safetensors for the projection). OUT gets {task: {accuracy, loss}}."""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from clip_torch import clip_forward  # noqa: E402

zoo, inputs, out_path, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
cfg = json.load(open(os.path.join(zoo, "config.json")))
tower_cfg = dict(cfg, projection_dim=0)  # the tower's output, before the projection
data = st.load(inputs)[0]
models = [st.load(os.path.join(zoo, n + ".safetensors"))[0] for n in names]
proj = st.load(os.path.join(zoo, "_pretrained_.safetensors"))[0]["visual_projection.weight"]
scale = float(data["logit_scale"][0])
result = {}
for key in data:
    if not key.startswith("images."):
        continue
    task = key[len("images."):]
    x = data[key].double()
    with torch.no_grad():
        pooled = torch.stack([clip_forward({k: v.double() for k, v in m.items()}, tower_cfg, x)
                              for m in models]).max(dim=0).values
        logits = scale * F.normalize(pooled @ proj.double().T, dim=-1) @ data["head." + task].double().T
    y = data["labels." + task].long()
    result[task] = {"accuracy": (logits.argmax(-1) == y).double().mean().item(),
                    "loss": F.cross_entropy(logits, y).item()}
json.dump(result, open(out_path, "w"))
