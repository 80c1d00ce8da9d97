"""Reference forward and backward passes of the nn kernels, computed with PyTorch's autograd
on random inputs; one safetensors file per kernel in OUT_DIR/nn/.

    /usr/bin/python3 tests/reference/nn_reference.py OUT_DIR

Each file holds the inputs, a random upstream gradient `dout`, the forward output `out`, and
the gradients `d<input>` of sum(out * dout)."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(sys.argv[1], "nn")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(7)


def run(name, fn, inputs, extra=None):
    leaves = {k: v.clone().requires_grad_(v.dtype.is_floating_point) for k, v in inputs.items()}
    out = fn(**leaves)
    dout = torch.randn_like(out)
    (out * dout).sum().backward()
    save = {k: v.detach() for k, v in inputs.items()}
    save["out"] = out.detach()
    save["dout"] = dout
    for k, v in leaves.items():
        if v.requires_grad:
            save["d" + k] = v.grad
    if extra:
        save.update(extra)
    st.save(os.path.join(OUT, name + ".safetensors"), save)


# odd sizes on purpose
run("linear", lambda x, W, b: F.linear(x, W, b),
    {"x": torch.randn(5, 7), "W": torch.randn(3, 7), "b": torch.randn(3)})
run("layernorm", lambda x, w, b: F.layer_norm(x, (10,), w, b, 1e-5),
    {"x": torch.randn(4, 10) * 3 + 1, "w": torch.randn(10), "b": torch.randn(10)})
run("gelu", lambda x: F.gelu(x), {"x": torch.randn(101) * 3})
run("quick_gelu", lambda x: x * torch.sigmoid(1.702 * x), {"x": torch.randn(101) * 3})
run("relu", lambda x: F.relu(x), {"x": torch.randn(101)})
run("softmax", lambda x: F.softmax(x, dim=-1), {"x": torch.randn(3, 6) * 2})
targets = torch.tensor([1, 0, 4, 2], dtype=torch.int32)
run("cross_entropy", lambda x: F.cross_entropy(x, targets.long()).reshape(1),
    {"x": torch.randn(4, 5) * 2}, {"targets": targets})


def entropy(x):
    p = F.softmax(x, dim=-1)
    return (-(p * torch.log(p)).sum(-1).mean()).reshape(1)


run("entropy", entropy, {"x": torch.randn(4, 5) * 2})


def attention(q, k, v, causal):
    B, T, C = q.shape
    H, D = 2, C // 2
    qh = q.view(B, T, H, D).transpose(1, 2)
    kh = k.view(B, T, H, D).transpose(1, 2)
    vh = v.view(B, T, H, D).transpose(1, 2)
    att = (qh @ kh.transpose(-2, -1)) / D ** 0.5
    if causal:
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        att = att.masked_fill(mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    return (att @ vh).transpose(1, 2).reshape(B, T, C)


for causal in (0, 1):
    run(f"attention{causal}", lambda q, k, v: attention(q, k, v, causal),
        {"q": torch.randn(2, 5, 6), "k": torch.randn(2, 5, 6), "v": torch.randn(2, 5, 6)})
print(f"nn_reference: kernels in {OUT}")
