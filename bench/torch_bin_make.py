"""Writes bench/torch_bin's pool twice: torch.save'd pytorch_model.bin files and the same
tensors as safetensors (CLIP-ViT-B/32 vision-tower shapes, random f32), plus a pool YAML for
each.  Usage: torch_bin_make.py DIR MODELS"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import st  # noqa: E402

out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)


def tower(g):
    E, I, L = 768, 3072, 12
    m = {"vision_model.embeddings.class_embedding": torch.randn(E, generator=g),
         "vision_model.embeddings.patch_embedding.weight": torch.randn(E, 3, 32, 32, generator=g),
         "vision_model.embeddings.position_embedding.weight": torch.randn(50, E, generator=g)}
    for layer in range(L):
        p = f"vision_model.encoder.layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            m[p + f"self_attn.{proj}.weight"] = torch.randn(E, E, generator=g)
            m[p + f"self_attn.{proj}.bias"] = torch.randn(E, generator=g)
        m[p + "mlp.fc1.weight"] = torch.randn(I, E, generator=g)
        m[p + "mlp.fc1.bias"] = torch.randn(I, generator=g)
        m[p + "mlp.fc2.weight"] = torch.randn(E, I, generator=g)
        m[p + "mlp.fc2.bias"] = torch.randn(E, generator=g)
        for ln in ("layer_norm1", "layer_norm2"):
            m[p + ln + ".weight"] = torch.randn(E, generator=g)
            m[p + ln + ".bias"] = torch.randn(E, generator=g)
    m["visual_projection.weight"] = torch.randn(512, E, generator=g)
    return m


names = ["_pretrained_"] + [f"task{k}" for k in range(1, n + 1)]
for k, name in enumerate(names):
    if os.path.exists(os.path.join(out, name + ".bin")):
        continue
    m = tower(torch.Generator().manual_seed(k))
    torch.save(m, os.path.join(out, name + ".bin"))
    st.save(os.path.join(out, name + ".safetensors"), m)
for ext in ("bin", "safetensors"):
    with open(os.path.join(out, f"pool_{ext}.yaml"), "w") as f:
        f.write("models:\n" + "".join(f"  {nm}: {nm}.{ext}\n" for nm in names))
