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


# --- a small CLIP vision tower in plain torch, with transformers' parameter names -----------
import json  # noqa: E402

from clip_torch import clip_forward, clip_params  # noqa: E402


for name, cfg in [
    ("clip_rgb", {"hidden_size": 16, "intermediate_size": 40, "num_attention_heads": 2,
                  "num_hidden_layers": 2, "image_size": 12, "patch_size": 4, "num_channels": 3,
                  "projection_dim": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}),
    ("clip_gray", {"hidden_size": 12, "intermediate_size": 24, "num_attention_heads": 3,
                   "num_hidden_layers": 1, "image_size": 10, "patch_size": 5, "num_channels": 1,
                   "hidden_act": "gelu", "layer_norm_eps": 1e-6}),
]:
    g = torch.Generator().manual_seed(11)
    P = {k: v.clone().requires_grad_(True) for k, v in clip_params(cfg, g).items()}
    B = 3
    images = torch.randn(B, cfg["num_channels"], cfg["image_size"], cfg["image_size"], generator=g)
    feats = clip_forward(P, cfg, images)
    Fdim = feats.shape[1]
    W = F.normalize(torch.randn(5, Fdim, generator=g), dim=-1)
    scale = 10.0
    logits = scale * F.normalize(feats, dim=-1) @ W.T
    targets = torch.tensor([0, 3, 1], dtype=torch.int32)
    loss = F.cross_entropy(logits, targets.long())
    loss.backward()
    save = {k: v.detach() for k, v in P.items()}
    save.update({"input.images": images, "input.head": W, "input.targets": targets,
                 "out.features": feats.detach(), "out.logits": logits.detach(),
                 "out.loss": loss.detach().reshape(1)})
    for k, v in P.items():
        save["grad." + k] = v.grad
    st.save(os.path.join(OUT, name + ".safetensors"), save)
    with open(os.path.join(OUT, name + ".config.json"), "w") as f:
        json.dump(cfg, f)

# --- the tutorial MLP trained a few steps with SGD (momentum) and AdamW ---------------------
g = torch.Generator().manual_seed(5)
mlp0 = {"0.weight": torch.randn(6, 4, generator=g) * 0.5, "0.bias": torch.randn(6, generator=g) * 0.1,
        "2.weight": torch.randn(3, 6, generator=g) * 0.5, "2.bias": torch.randn(3, generator=g) * 0.1}
xb = torch.randn(8, 4, generator=g)
yb = torch.randint(0, 3, (8,), generator=g).to(torch.int32)
save = {"init." + k: v for k, v in mlp0.items()}
save.update({"x": xb, "y": yb})
for opt_name, make in [("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3)),
                       ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.01))]:
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    net.load_state_dict(mlp0)
    opt = make(list(net.parameters()))
    losses = []
    for step in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(net(xb), yb.long())
        loss.backward()
        if step == 0:
            for k, p in net.named_parameters():
                save["grad0." + k] = p.grad.clone()
        opt.step()
        losses.append(loss.item())
    for k, v in net.state_dict().items():
        save[f"{opt_name}.{k}"] = v.clone()
    save[f"{opt_name}.losses"] = torch.tensor(losses)
st.save(os.path.join(OUT, "mlp_train.safetensors"), save)

# --- AdaMerging: entropy of the merged model over two tasks' batches, and its gradient with
# respect to the layer-wise coefficients (one per model and parameter tensor) ---------------
cfg = {"hidden_size": 16, "intermediate_size": 40, "num_attention_heads": 2,
       "num_hidden_layers": 2, "image_size": 12, "patch_size": 4, "num_channels": 3,
       "projection_dim": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
g = torch.Generator().manual_seed(23)
theta0 = clip_params(cfg, g)
K = 2
taus = [{n: 0.2 * torch.randn(v.shape, generator=g) for n, v in theta0.items()} for _ in range(K)]
lam = {n: 0.2 + 0.3 * torch.rand(K, generator=g) for n in theta0}
scale = 10.0
batches = [torch.randn(3, 3, 12, 12, generator=g), torch.randn(2, 3, 12, 12, generator=g)]
heads = [F.normalize(torch.randn(5, 8, generator=g), dim=-1),
         F.normalize(torch.randn(3, 8, generator=g), dim=-1)]
# Computed in float64, through the merged parameters' gradient g: d loss / d lambda[n, k] =
# sum_i g_i tau_k,i. The C engine forms g in float32 (and the sum in float64), so its error
# scales with sum_i G_i |tau_k,i|, where G_i is g_i's own sum of |terms|: for a linear layer
# y = x W^T + b, |dy|^T |x| and sum |dy| (a bias whose gradient cancels to zero, as the key
# projection's under softmax, still carries rounding of that size); other parameters, |g_i|.
class AbsTermsLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b=None):
        ctx.save_for_backward(x, W)
        ctx.has_bias = b is not None
        return F.linear(x, W, b)

    @staticmethod
    def backward(ctx, dy):
        x, W = ctx.saved_tensors
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        return dy @ W, dy2.abs().T @ x2.abs(), dy2.abs().sum(0) if ctx.has_bias else None


def adamerging_grads(linear):
    m = {n: (theta0[n].double() + sum(lam[n].double()[k] * taus[k][n].double()
                                      for k in range(K))).requires_grad_(True) for n in theta0}
    total = 0
    for x, W in zip(batches, heads):
        logits = scale * F.normalize(clip_forward(m, cfg, x.double(), linear=linear), dim=-1) @ W.double().T
        total = total + entropy(logits)
    total.backward()
    return total, {n: v.grad for n, v in m.items()}


loss64, grad64 = adamerging_grads(F.linear)
_, abs_terms = adamerging_grads(AbsTermsLinear.apply)
save = {"loss64": loss64.detach().reshape(1)}
for n in theta0:
    save["theta0." + n] = theta0[n]
    save["lambda." + n] = lam[n]
    t64 = [taus[k][n].double() for k in range(K)]
    save["grad_lambda64." + n] = torch.stack([(grad64[n] * t).sum() for t in t64])
    save["cond_lambda." + n] = torch.stack([(abs_terms[n].abs() * t.abs()).sum() for t in t64])
    for k in range(K):
        save[f"tau{k}." + n] = taus[k][n]
for t in range(2):
    save[f"images{t}"] = batches[t]
    save[f"head{t}"] = heads[t]
st.save(os.path.join(OUT, "adamerging.safetensors"), save)
with open(os.path.join(OUT, "adamerging.config.json"), "w") as f:
    json.dump(cfg, f)

# --- Fisher merging: the diagonal Fisher as FusionBench estimates it (per batch, the squared
# gradient of sum_x sum_c sqrt(p_c) log p_c with sqrt(p) held constant; divided by the number
# of examples), and the Fisher-weighted merge with normalised model weights -----------------
g = torch.Generator().manual_seed(29)
P = {k: v.clone().requires_grad_(True) for k, v in clip_params(cfg, g).items()}
images = torch.randn(5, 3, 12, 12, generator=g)
W = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
fisher = {k: torch.zeros_like(v) for k, v in P.items()}
for b0 in range(0, 5, 2):
    logits = 10.0 * F.normalize(clip_forward(P, cfg, images[b0:b0 + 2]), dim=-1) @ W.T
    p = torch.softmax(logits, dim=-1).detach()
    obj = (torch.sqrt(p) * torch.log_softmax(logits, dim=-1)).sum()
    for v in P.values():
        v.grad = None
    obj.backward()
    for k, v in P.items():
        fisher[k] += v.grad ** 2
save = {"images": images, "head": W}
for k in P:
    save["param." + k] = P[k].detach()
    save["fisher." + k] = fisher[k] / 5
# the merge of three models' values with their Fisher values, FusionBench's formula
n, K, eps = 50, 3, 1e-6
thetas = torch.randn(K, n, generator=g)
fis = torch.rand(K, n, generator=g) ** 3
norms = torch.linalg.vector_norm(fis, dim=1)
inv = 1.0 / (norms + eps)
w = (torch.ones(K) / K) * inv / inv.sum()
merged = ((w[:, None] * (fis + eps) * thetas).sum(0)) / ((w[:, None] * (fis + eps)).sum(0))
save.update({"merge.thetas": thetas, "merge.fisher": fis, "merge.weights": w, "merge.out": merged})
st.save(os.path.join(OUT, "fisher.safetensors"), save)

# --- RegMean: Gram matrices of every linear layer's inputs (mean over examples of the sum
# over tokens of x x^T) for two models on their own images, and the merged weights
# W^T = (sum_k G~_k)^-1 sum_k G~_k W_k^T (off-diagonals times alpha), solved in float64 ---
g = torch.Generator().manual_seed(31)
models = [clip_params(cfg, g), clip_params(cfg, g)]
imgs = [torch.randn(5, 3, 12, 12, generator=g), torch.randn(4, 3, 12, 12, generator=g)]
alpha = 0.95
save = {}
grams = []
for k in range(2):
    rec = {}
    with torch.no_grad():
        clip_forward(models[k], cfg, imgs[k], rec)
    gk = {n: sum(x.T.double() @ x.double() for x in xs) / imgs[k].shape[0] for n, xs in rec.items()}
    grams.append(gk)
    for n in gk:
        save[f"gram{k}.{n}"] = gk[n].float()
    for n, v in models[k].items():
        save[f"model{k}.{n}"] = v
    save[f"images{k}"] = imgs[k]
for n in grams[0]:
    A = 0
    B = 0
    for k in range(2):
        G = grams[k][n] * alpha + torch.diag(torch.diagonal(grams[k][n])) * (1 - alpha)
        A = A + G
        B = B + G @ models[k][n].double().T
    save["merged." + n] = torch.linalg.solve(A, B).T.float()
st.save(os.path.join(OUT, "regmean.safetensors"), save)

# --- RegMean++: layer by layer, each model's layer fed by the already merged layers before it
# (the models' mean where nothing is solved yet); the final layer norm and projection last --
L = cfg["num_hidden_layers"]
M = {n: (models[0][n] + models[1][n]) / 2 for n in models[0]}


def stage(n):
    if n.startswith("vision_model.encoder.layers."):
        return int(n.split(".")[3])
    if n.startswith("vision_model.post_layernorm.") or n == "visual_projection.weight":
        return L
    return -1


save = {}
for s_ in range(L + 1):
    grams_s = []
    for k in range(2):
        hybrid = {n: (models[k][n] if stage(n) == s_ else M[n]) for n in M}
        rec = {}
        with torch.no_grad():
            clip_forward(hybrid, cfg, imgs[k], rec)
        grams_s.append({n: sum(x.T.double() @ x.double() for x in xs) / imgs[k].shape[0]
                        for n, xs in rec.items() if stage(n) == s_})
    for n in grams_s[0]:
        A = 0
        B = 0
        for k in range(2):
            G = grams_s[k][n] * alpha + torch.diag(torch.diagonal(grams_s[k][n])) * (1 - alpha)
            A = A + G
            B = B + G @ models[k][n].double().T
        M[n] = torch.linalg.solve(A, B).T.float()
        save["merged." + n] = M[n]
st.save(os.path.join(OUT, "regmean_plusplus.safetensors"), save)
