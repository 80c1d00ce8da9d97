"""The PyTorch baseline of bench/scale: what FusionBench does with a model pool, on the same
checkpoints: load every state dict into memory, merge them there, save the result.

    /usr/bin/python3 bench/scale_torch.py METHOD POOL_YAML OUT_DIR REPORT_JSON

METHOD: task_arithmetic (scaling_factor 0.3), ties_merging (0.3, top 20%, sum) or
dare_ties_merging (p 0.5 with rescaling, then TIES at 0.5), with FusionBench's defaults and its
way of computing: task vectors as state dicts, TIES on the flattened vectors of all models
(state_dict_to_vector, kthvalue), in the checkpoints' dtype. Writes the merged model as a
sharded bf16 folder and REPORT_JSON with the peak RSS (VmHWM) and /proc/self/io counters.
"""
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import st  # noqa: E402

SHARD = 2_000_000_000


def read_pool(path):
    models, base = {}, os.path.dirname(os.path.abspath(path))
    for line in open(path):
        line = line.strip()
        if ":" in line and not line.startswith("models"):
            name, rel = (x.strip() for x in line.split(":", 1))
            models[name] = os.path.join(base, rel)
    return models


DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def load_checkpoint(folder):
    """Every tensor of every shard in memory, as safetensors' load_file gives them: one read
    per shard into a buffer the tensors then view (no second copy)."""
    sd = {}
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".safetensors"):
            continue
        with open(os.path.join(folder, f), "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            size = os.fstat(fh.fileno()).st_size - 8 - n
            buf = bytearray(size)
            fh.readinto(memoryview(buf))
        for name, e in header.items():
            a, b = e["data_offsets"]
            dt = DTYPES[e["dtype"]]
            count = (b - a) // torch.tensor([], dtype=dt).element_size()
            sd[name] = torch.frombuffer(buf, dtype=dt, count=count, offset=a).reshape(e["shape"])
    return sd


def memory_available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def flatten(sd, names):
    return torch.cat([sd[n].reshape(-1) for n in names])


def unflatten(vec, like, names):
    out, off = {}, 0
    for n in names:
        k = like[n].numel()
        out[n] = vec[off:off + k].reshape(like[n].shape)
        off += k
    return out


def ties(base, task_vectors, names, lam, k=0.2):
    """FusionBench's ties_merging: the task vectors of every model flattened into one matrix,
    the top-k by kthvalue, elected signs (the majority for zeros), the disjoint sum."""
    m = torch.vstack([flatten(tv, names) for tv in task_vectors])
    d = m.shape[1]
    kth = d - int(d * k)
    cut, _ = m.abs().kthvalue(kth, dim=1, keepdim=True)
    m = m * (m.abs() >= cut)
    sign = torch.sign(m.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    agree = torch.where(sign.unsqueeze(0) > 0, m > 0, m < 0)
    merged = (m * agree).sum(dim=0)
    tv = unflatten(merged, base, names)
    return {n: (base[n].float() + lam * tv[n].float()).to(base[n].dtype) for n in names}


def write_report(path, extra=None):
    """The peak RSS (VmHWM) and /proc/self/io counters, as fusion_bench's report has them."""
    rep = dict(extra or {})
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            rep["peak_rss_bytes"] = int(line.split()[1]) * 1024
    io = {}
    for line in open("/proc/self/io"):
        k, v = line.split(":")
        io[k] = int(v)
    rep["io"] = {"bytes_read": io["rchar"], "bytes_written": io["wchar"],
                 "storage_bytes_read": io["read_bytes"],
                 "storage_bytes_written": io["write_bytes"]}
    with open(path, "w") as f:
        json.dump(rep, f, indent=1)


def main():
    method, pool_yaml, out_dir, report = sys.argv[1:5]
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # Debian's torch starts with one
    paths = read_pool(pool_yaml)
    inputs = sum(os.path.getsize(os.path.join(p, f)) for p in paths.values()
                 for f in os.listdir(p) if f.endswith(".safetensors"))
    # what the state dicts and (TIES) the flattened matrices take, measured on small runs:
    # task arithmetic ~2.4x the inputs; TIES ~5x (task vectors, their flat copies, |.|, masks)
    need = inputs * (2.4 if method == "task_arithmetic" else 5.0)
    if need > 0.9 * memory_available():
        print(f"scale_torch.py: {method} would need about {need / 1e9:.0f} GB, "
              f"{memory_available() / 1e9:.0f} GB are available: not run", file=sys.stderr)
        sys.exit(3)
    base = load_checkpoint(paths.pop("_pretrained_"))
    models = [load_checkpoint(p) for p in paths.values()]
    names = list(base)
    if method == "task_arithmetic":
        # FusionBench's state_dict_sub / state_dict_add / state_dict_mul, in the dtype
        tvs = [{n: m[n] - base[n] for n in names} for m in models]
        del models
        total = {n: sum(tv[n] for tv in tvs) for n in names}
        merged = {n: base[n] + 0.3 * total[n] for n in names}
    elif method in ("ties_merging", "dare_ties_merging"):
        tvs = [{n: m[n] - base[n] for n in names} for m in models]
        lam = 0.3
        if method == "dare_ties_merging":
            gen = torch.Generator().manual_seed(0)
            for tv in tvs:
                for n in names:
                    keep = torch.rand(tv[n].shape, generator=gen) >= 0.5
                    tv[n] = tv[n] * keep / 0.5
            lam = 0.5
        del models
        merged = ties(base, tvs, names, lam)
    else:
        sys.exit(f"scale_torch.py: unknown method {method}")
    os.makedirs(out_dir, exist_ok=True)
    shards, cur, size = [], {}, 0
    for n in names:
        b = merged[n].numel() * merged[n].element_size()
        if cur and size + b > SHARD:
            shards.append(cur)
            cur, size = {}, 0
        cur[n] = merged[n]
        size += b
    shards.append(cur)
    weight_map = {}
    for i, sd in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        st.save(os.path.join(out_dir, fname), sd)
        weight_map.update({n: fname for n in sd})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    write_report(report)

if __name__ == "__main__":
    main()
