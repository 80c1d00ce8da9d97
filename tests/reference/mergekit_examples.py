"""mergekit's own example configurations (its examples/ folder), run unchanged.

    /usr/bin/python3 tests/reference/mergekit_examples.py MERGEKIT_CHECKOUT [FUSION_BENCH]

Every model an example names is made as a tiny Llama-layout checkpoint of 40 layers (hidden
16, MLP 24, vocabulary 32, float16; hidden 8 would leave ties.yml's density 0.1 of a norm no
entry, which mergekit refuses too): hub ids (org/name) in a hub cache made for the run
(HF_HUB_CACHE), other names as folders in the working folder. Then `fusion_bench mergekit
EXAMPLE OUT` runs on each file as it is, and the output is checked: its tensors, its dtype, and
its layer count (the frankenmerge's 44). Prints one row per example.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from mergekit_plan import llama_shapes  # noqa: E402

MK = sys.argv[1]
CLI = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "build",
    "fusion_bench")
EXAMPLES = os.path.join(MK, "examples")
work = tempfile.mkdtemp()
hub = os.path.join(work, "hub")
torch.manual_seed(0)
shapes = llama_shapes(16, 24, 32, 40)
base = {n: torch.randn(s) * 0.1 for n, s in shapes.items()}


def write_model(folder):
    os.makedirs(folder, exist_ok=True)
    st.save(os.path.join(folder, "model.safetensors"),
            {n: (t + torch.randn(t.shape) * 0.01).half() for n, t in base.items()})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "num_hidden_layers": 40, "hidden_size": 16,
                   "torch_dtype": "float16"}, f)


refs = set()
for name in sorted(os.listdir(EXAMPLES)):
    if name.endswith((".yml", ".yaml")):
        text = open(os.path.join(EXAMPLES, name)).read()
        refs.update(re.findall(r"(?:model|base_model):\s*([^\s#]+)", text))
for ref in sorted(refs):
    if "/" in ref:  # a hub id: a snapshot in the cache, found by refs/main
        org, repo = ref.split("/")
        root = os.path.join(hub, f"models--{org}--{repo}")
        commit = "%040x" % (abs(hash(ref)) % (1 << 160))
        write_model(os.path.join(root, "snapshots", commit))
        os.makedirs(os.path.join(root, "refs"), exist_ok=True)
        with open(os.path.join(root, "refs", "main"), "w") as f:
            f.write(commit)
    else:
        write_model(os.path.join(work, ref))

env = dict(os.environ, HF_HUB_CACHE=hub)
print(f"{'example':32s} {'exit':>4s} {'tensors':>7s} {'layers':>6s} {'dtype':>6s}  message")
for name in sorted(os.listdir(EXAMPLES)):
    if not name.endswith((".yml", ".yaml")):
        continue
    out = os.path.join(work, "out-" + name)
    r = subprocess.run([CLI, "mergekit", os.path.join(EXAMPLES, name), out], cwd=work, env=env,
                       capture_output=True, text=True)
    tensors = layers = dtype = "-"
    if r.returncode == 0:
        raw, _, _ = st.load_raw(os.path.join(out, "model.safetensors"))
        tensors = len(raw)
        dtype = sorted({e[0] for e in raw.values()})[0]
        layers = json.load(open(os.path.join(out, "config.json")))["num_hidden_layers"]
    msg = (r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout) else ""
    print(f"{name:32s} {r.returncode:4d} {tensors!s:>7s} {layers!s:>6s} {dtype:>6s}  {msg}")
