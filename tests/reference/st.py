"""A minimal safetensors reader/writer written for the reference tests (Debian has no
safetensors package). Independent of the C code: built from the format's description
(u64 little-endian header length, JSON header, raw little-endian tensor bytes)."""
import json
import struct

import numpy as np
import torch

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
NUMPY_ONLY = {"U16": np.uint16, "U32": np.uint32, "U64": np.uint64}
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
         "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def dtype_name(t):
    for k, v in TORCH_DTYPES.items():
        if v == t.dtype:
            return k
    raise ValueError(t.dtype)


def tensor_bytes(t):
    """Raw little-endian bytes of a torch tensor (bf16 through an int16 view)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    if t.dtype == torch.bool:
        return t.to(torch.uint8).numpy().tobytes()
    return t.numpy().tobytes()


def save(path, tensors, metadata=None):
    """tensors: dict name -> torch tensor, or name -> (dtype_name, shape, raw bytes)."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        if isinstance(t, tuple):
            dt, shape, raw = t
        else:
            dt, shape, raw = dtype_name(t), list(t.shape), tensor_bytes(t)
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_raw(path):
    """name -> (dtype_name, shape, raw bytes), plus the metadata dict."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        a, b = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], data[8 + n + a:8 + n + b])
    return out, meta, n


def to_torch(dt, shape, raw):
    if len(raw) == 0 and dt in TORCH_DTYPES:
        return torch.zeros(shape, dtype=TORCH_DTYPES[dt])
    if dt == "BF16":
        return torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16).reshape(shape)
    if dt == "BOOL":
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.bool).reshape(shape)
    if dt in TORCH_DTYPES:
        return torch.frombuffer(bytearray(raw), dtype=TORCH_DTYPES[dt]).reshape(shape)
    raise ValueError(dt)


def load(path):
    raw, meta, _ = load_raw(path)
    return {k: to_torch(*v) for k, v in raw.items()}, meta
