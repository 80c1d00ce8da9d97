"""The CLIP vision tower in plain PyTorch, computed as transformers' CLIPVisionModelWithProjection
computes it, with its parameter names. Used by the reference tests and by bench/nn."""
import math

import torch
import torch.nn.functional as F



# CLIP-ViT-B/32's vision tower (openai/clip-vit-base-patch32's vision_config), for benchmarks
B32 = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
       "num_hidden_layers": 12, "image_size": 224, "patch_size": 32, "num_channels": 3,
       "projection_dim": 512, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def clip_forward(P, cfg, images, record=None, linear=F.linear):
    """record: a dict that receives, per linear weight name, the inputs [rows, in] it saw.
    linear: the function that applies every linear layer (F.linear's signature)."""
    def seen(name, x):
        if record is not None:
            record.setdefault(name, []).append(x.detach().reshape(-1, x.shape[-1]))
        return x

    E, H = cfg["hidden_size"], cfg["num_attention_heads"]
    D = E // H
    ps = cfg["patch_size"]
    act = (lambda x: x * torch.sigmoid(1.702 * x)) if cfg["hidden_act"] == "quick_gelu" else F.gelu
    eps = cfg["layer_norm_eps"]
    vm = "vision_model."
    x = F.conv2d(images, P[vm + "embeddings.patch_embedding.weight"], stride=ps)  # B,E,g,g
    x = x.flatten(2).transpose(1, 2)
    B = x.shape[0]
    cls = P[vm + "embeddings.class_embedding"].expand(B, 1, E)
    x = torch.cat([cls, x], 1) + P[vm + "embeddings.position_embedding.weight"]
    x = F.layer_norm(x, (E,), P[vm + "pre_layrnorm.weight"], P[vm + "pre_layrnorm.bias"], eps)
    T = x.shape[1]
    for l in range(cfg["num_hidden_layers"]):
        pre = f"{vm}encoder.layers.{l}."
        r = x
        h = F.layer_norm(x, (E,), P[pre + "layer_norm1.weight"], P[pre + "layer_norm1.bias"], eps)
        for nm in ("q_proj", "k_proj", "v_proj"):
            seen(pre + f"self_attn.{nm}.weight", h)
        q = linear(h, P[pre + "self_attn.q_proj.weight"], P[pre + "self_attn.q_proj.bias"]) * D ** -0.5
        k = linear(h, P[pre + "self_attn.k_proj.weight"], P[pre + "self_attn.k_proj.bias"])
        v = linear(h, P[pre + "self_attn.v_proj.weight"], P[pre + "self_attn.v_proj.bias"])
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        a = F.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, T, E)
        x = r + linear(seen(pre + "self_attn.out_proj.weight", a), P[pre + "self_attn.out_proj.weight"],
                         P[pre + "self_attn.out_proj.bias"])
        r = x
        h = F.layer_norm(x, (E,), P[pre + "layer_norm2.weight"], P[pre + "layer_norm2.bias"], eps)
        h = linear(seen(pre + "mlp.fc2.weight",
                          act(linear(seen(pre + "mlp.fc1.weight", h), P[pre + "mlp.fc1.weight"],
                                       P[pre + "mlp.fc1.bias"]))),
                     P[pre + "mlp.fc2.weight"], P[pre + "mlp.fc2.bias"])
        x = r + h
    pooled = F.layer_norm(x[:, 0], (E,), P[vm + "post_layernorm.weight"], P[vm + "post_layernorm.bias"], eps)
    if cfg.get("projection_dim"):
        return linear(seen("visual_projection.weight", pooled), P["visual_projection.weight"])
    return pooled


def encoder_layer_params(P, pre, E, I, g):
    """One transformer layer's random parameters under transformers' CLIP names."""
    for nm in ["k_proj", "v_proj", "q_proj", "out_proj"]:
        P[pre + f"self_attn.{nm}.weight"] = torch.randn(E, E, generator=g) / math.sqrt(E)
        P[pre + f"self_attn.{nm}.bias"] = 0.1 * torch.randn(E, generator=g)
    P[pre + "layer_norm1.weight"] = 1 + 0.1 * torch.randn(E, generator=g)
    P[pre + "layer_norm1.bias"] = 0.1 * torch.randn(E, generator=g)
    P[pre + "mlp.fc1.weight"] = torch.randn(I, E, generator=g) / math.sqrt(E)
    P[pre + "mlp.fc1.bias"] = 0.1 * torch.randn(I, generator=g)
    P[pre + "mlp.fc2.weight"] = torch.randn(E, I, generator=g) / math.sqrt(I)
    P[pre + "mlp.fc2.bias"] = 0.1 * torch.randn(E, generator=g)
    P[pre + "layer_norm2.weight"] = 1 + 0.1 * torch.randn(E, generator=g)
    P[pre + "layer_norm2.bias"] = 0.1 * torch.randn(E, generator=g)


def clip_params(cfg, g):
    E, I, C, ps = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_channels"], cfg["patch_size"]
    T = (cfg["image_size"] // ps) ** 2 + 1
    vm = "vision_model."
    P = {vm + "embeddings.class_embedding": torch.randn(E, generator=g),
         vm + "embeddings.patch_embedding.weight": torch.randn(E, C, ps, ps, generator=g) * 0.2,
         vm + "embeddings.position_embedding.weight": torch.randn(T, E, generator=g) * 0.5,
         vm + "pre_layrnorm.weight": 1 + 0.1 * torch.randn(E, generator=g),
         vm + "pre_layrnorm.bias": 0.1 * torch.randn(E, generator=g)}
    for l in range(cfg["num_hidden_layers"]):
        encoder_layer_params(P, f"{vm}encoder.layers.{l}.", E, I, g)
    P[vm + "post_layernorm.weight"] = 1 + 0.1 * torch.randn(E, generator=g)
    P[vm + "post_layernorm.bias"] = 0.1 * torch.randn(E, generator=g)
    if cfg.get("projection_dim"):
        P["visual_projection.weight"] = torch.randn(cfg["projection_dim"], E, generator=g) / math.sqrt(E)
    return P


def save_pool(out, cfg, models):
    """A reference pool in folder out: <name>.safetensors per state dict of `models` (a dict,
    `_pretrained_` first), pool.yaml listing them, and the tower's config.json."""
    import json
    import os

    import st

    for name, P in models.items():
        st.save(os.path.join(out, name + ".safetensors"), P)
    with open(os.path.join(out, "pool.yaml"), "w") as f:
        f.write("models:\n" + "".join(f"  {n}: {n}.safetensors\n" for n in models))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f)
