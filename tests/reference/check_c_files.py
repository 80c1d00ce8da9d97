"""Checks, with the independent Python reader (st.py) and PyTorch, files the C tests wrote.

    /usr/bin/python3 tests/reference/check_c_files.py REF_DIR C_OUT_DIR
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

ref, out = sys.argv[1], sys.argv[2]
errors = []

# 1. every dtype, byte for byte as the reference wrote it, metadata included
want, want_meta, _ = st.load_raw(os.path.join(ref, "dtypes.safetensors"))
got, got_meta, hlen = st.load_raw(os.path.join(out, "dtypes.safetensors"))
if (8 + hlen) % 8:
    errors.append("header not padded to 8 bytes")
if set(got) != set(want):
    errors.append(f"tensor names differ: {sorted(set(got) ^ set(want))}")
for k in want:
    if k in got and got[k] != want[k]:
        errors.append(f"tensor {k}: dtype, shape or bytes differ")
if got_meta != want_meta:
    errors.append(f"metadata differs: {got_meta} vs {want_meta}")
for k in ["F32", "BF16", "I64"]:
    t = st.to_torch(*got[k])  # readable as torch tensors
    if not torch.equal(t, st.to_torch(*want[k])):
        errors.append(f"{k} reads differently in torch")

# 2. the sharded copy: index + shards, same tensors as the single file
d = os.path.join(out, "sharded_out")
index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
single, _ = st.load(os.path.join(ref, "sharded_single.safetensors"))
files = sorted(set(index["weight_map"].values()))
if len(files) < 2:
    errors.append(f"expected several shards, got {files}")
seen = {}
for f in files:
    tensors, _ = st.load(os.path.join(d, f))
    for k, v in tensors.items():
        if index["weight_map"].get(k) != f:
            errors.append(f"{k} is in {f} but the index says {index['weight_map'].get(k)}")
        seen[k] = v
if set(seen) != set(single):
    errors.append("sharded tensors differ from the single file")
for k, v in single.items():
    if k in seen and not torch.equal(seen[k], v):
        errors.append(f"{k} differs after sharding")
if index["metadata"]["total_size"] != sum(v.numel() * v.element_size() for v in single.values()):
    errors.append("total_size is wrong")

for e in errors:
    print("check_c_files:", e)
sys.exit(1 if errors else 0)
