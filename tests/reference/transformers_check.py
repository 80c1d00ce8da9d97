"""Checks tests/reference/clip_text_ref.py's reference numbers (which the C tests compare the C
engine with) against transformers' own CLIP classes, where transformers is installed (the
device machine's image has it; Debian does not package it, so this is not part of make test):

    python3 tests/reference/transformers_check.py build/ref/clip

It loads the test hub cache through huggingface_hub (HF_HUB_CACHE, offline) by its id, and
compares, printing the largest differences:
  - token ids of the test texts (transformers' CLIP tokenizers, slow and fast where present),
  - text features of the padded batch (CLIPModel's text tower + text_projection; also with the
    legacy eos_token_id = 2 config),
  - FusionBench's zero-shot heads (templates per class, normalised, averaged, normalised),
  - accuracy and loss of the pretrained model and of task arithmetic (0.3) on the test images,
    read through CLIPImageProcessor,
  - CLIPImageProcessor's bytes for the resize cases (shortest edge, bicubic, centre crop).
Exit status 1 if a number is off by more than its tolerance.
"""
import glob
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REF = os.path.abspath(sys.argv[1])
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["HF_HUB_CACHE"] = os.path.join(REF, "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_text_ref import read_task  # noqa: E402

failures = []


def report(what, diff, tol):
    ok = diff <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {diff:.3g} (tolerance {tol:g})")
    if not ok:
        failures.append(what)


print("transformers", transformers.__version__, "torch", torch.__version__)
cases = json.load(open(os.path.join(REF, "cases.json"), encoding="utf-8"))
REPO = "openai/clip-vit-base-patch32"
model = CLIPModel.from_pretrained(REPO).eval()
snap = glob.glob(os.path.join(REF, "hub", "models--openai--clip-vit-base-patch32", "snapshots", "*"))[0]

# --- tokenizers


def load_each(names, source):
    """{class name: instance from source} for those of the classes this transformers has."""
    got = {}
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is None:
            print(f"skip {name}: not in this transformers")
            continue
        try:
            got[name] = cls.from_pretrained(source)
        except Exception as e:  # a missing optional dependency, say
            print(f"skip {name}: {type(e).__name__}: {e}")
    return got


tokenizers = load_each(("CLIPTokenizer", "CLIPTokenizerFast"), REPO)
for name, tok in tokenizers.items():
    bad = []
    for c in cases["tokens"]:
        ids = tok(c["text"])["input_ids"]
        if ids != c["ids"]:
            bad.append((c["text"], ids, c["ids"]))
    print(f"{'ok  ' if not bad else 'DIFF'} {name}: {len(cases['tokens']) - len(bad)} of "
          f"{len(cases['tokens'])} texts give the reference's ids")
    for text, got, want in bad:
        print(f"     {text!r}\n       transformers {got}\n       reference    {want}")


# --- text features
def text_features(m, ids, mask):
    out = m.text_model(input_ids=ids, attention_mask=mask)
    return m.text_projection(out.pooler_output)


fc = cases["features"]
ids = torch.tensor(fc["padded"])
mask = torch.tensor([[1] * len(s) + [0] * (ids.shape[1] - len(s)) for s in fc["ids"]])
with torch.no_grad():
    got = text_features(model, ids, mask)
report("text features (padded batch)", (got - torch.tensor(fc["features"])).abs().max().item(), 1e-5)
legacy_cfg = CLIPConfig.from_pretrained(os.path.join(REF, "config_legacy_eos.json"))
legacy = CLIPModel.from_pretrained(REPO, config=legacy_cfg).eval()
with torch.no_grad():
    got = text_features(legacy, ids, mask)
report("text features, legacy eos_token_id 2", (got - torch.tensor(fc["legacy"])).abs().max().item(), 1e-5)

# --- FusionBench's zero-shot heads, with transformers' tokenizer (the first one loaded)
tok = next(iter(tokenizers.values()))
heads = {}
for t, want in cases["heads"].items():
    names, templates = read_task(t)
    rows = []
    with torch.no_grad():
        for c in names:
            b = tok([x.replace("{c}", c) for x in templates], padding=True, return_tensors="pt")
            e = text_features(model, b["input_ids"], b["attention_mask"])
            e = e / e.norm(p=2, dim=-1, keepdim=True)
            e = e.mean(dim=0)
            rows.append(e / e.norm(p=2, dim=-1, keepdim=True))
    heads[t] = torch.stack(rows)
    report(f"zero-shot head {t}", (heads[t] - torch.tensor(want)).abs().max().item(), 1e-5)

# --- accuracy and loss through CLIPImageProcessor
processors = load_each(("CLIPImageProcessor", "CLIPImageProcessorFast"), snap)
proc = processors.get("CLIPImageProcessor") or next(iter(processors.values()))
pretrained = {k: v.clone() for k, v in model.state_dict().items()}
tasks = list(cases["heads"])
fine = {t: load_file(glob.glob(os.path.join(REF, "hub", f"models--tanganke--clip-vit-base-patch32_{t}",
                                            "snapshots", "*", "model.safetensors"))[0]) for t in tasks}
merged = dict(pretrained)
for n in fine[tasks[0]]:
    merged[n] = pretrained[n] + 0.3 * sum(fine[t][n] - pretrained[n] for t in tasks)
scale = model.logit_scale.exp().item()
for mname, sd in (("pretrained", pretrained), ("task_arithmetic", merged)):
    model.load_state_dict(sd)
    for t in tasks:
        xs, ys = [], []
        for label in range(10):
            for p in sorted(glob.glob(os.path.join(REF, "data", t, "test", str(label), "*.png"))):
                xs.append(Image.open(p).convert("RGB"))
                ys.append(label)
        x = proc(images=xs, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            f = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        f = f / f.norm(p=2, dim=-1, keepdim=True)
        logits = scale * f @ heads[t].T
        y = torch.tensor(ys)
        loss = F.cross_entropy(logits.double(), y).item()
        acc = (logits.argmax(-1) == y).double().mean().item()
        want = cases["eval"][mname][t]
        report(f"{mname} on {t}: loss", abs(loss - want["loss"]), 1e-4)
        report(f"{mname} on {t}: accuracy", abs(acc - want["accuracy"]), 0)
model.load_state_dict(pretrained)

# --- CLIPImageProcessor's resizing, bytes
R = load_file(os.path.join(REF, "resize.safetensors"))
for name, p in processors.items():
    worst, n = 0, 0
    for key in sorted(k for k in R if k.startswith("in_")):
        px = R[key].numpy()
        img = Image.fromarray(px if px.shape[2] == 3 else px[:, :, 0], "RGB" if px.shape[2] == 3 else "L")
        for size in (224, 32):
            want = R[f"out_{key[3:]}_{size}"].float()
            out = p(images=img.convert("RGB"), size={"shortest_edge": size},
                    crop_size={"height": size, "width": size}, do_normalize=False, do_rescale=False,
                    return_tensors="pt")["pixel_values"][0]
            got = out.permute(1, 2, 0).float()
            if want.shape[2] == 1:
                got = got[:, :, :1]
            worst = max(worst, (got - want).abs().max().item())
            n += 1
    print(f"info {name}: {n} resize cases, largest byte difference {worst:g}")

print(f"{len(failures)} checks failed" if failures else "all checks passed")
sys.exit(1 if failures else 0)
