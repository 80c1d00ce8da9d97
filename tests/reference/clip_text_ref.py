"""Reference data for FusionBench's CLIP benchmark pieces (tests/test_clip_text.c), computed
with PyTorch from transformers' documented semantics (independent of the C code):

    /usr/bin/python3 tests/reference/clip_text_ref.py OUT_DIR

Writes OUT_DIR/clip/:
  hub/            a Hugging Face cache: openai/clip-vit-base-patch32 (a tiny random CLIPModel:
                  config.json with text and vision configs, model.safetensors, vocab.json and
                  merges.txt of a BPE learned here from Debian's GPL-3 text,
                  preprocessor_config.json) and tanganke/clip-vit-base-patch32_{eurosat,mnist}
                  (CLIPVisionModel fine-tunes)
  data/           image folders <task>/test/<label>/<i>.png (32x32 RGB)
  cases.json      token ids of test texts (CLIP's BPE written here from its description),
                  text features (padded batch with transformers' attention mask), zero-shot
                  heads for eurosat and mnist (FusionBench's set_classification_task), and the
                  accuracy and loss of the pretrained model and of task arithmetic (0.3)
"""
import json
import math
import os
import re
import sys
import unicodedata

import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st  # noqa: E402
from clip_torch import clip_forward, clip_params, encoder_layer_params  # noqa: E402

OUT = os.path.join(sys.argv[1], "clip")
ROOT = os.path.dirname(os.path.dirname(HERE))
torch.manual_seed(7)
g = torch.Generator().manual_seed(7)

# ------------------------------------------------------------------- CLIP's BPE ----------


def byte_alphabet():
    """GPT-2's byte -> printable character table (printable Latin-1 bytes map to themselves,
    the rest to 256, 257, ... in byte order)."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or b >= 174]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTES = byte_alphabet()


def char_class(pred):
    parts, start = [], None
    for cp in range(0x110000):
        ok = pred(cp)
        if ok and start is None:
            start = cp
        if not ok and start is not None:
            parts.append((start, cp - 1))
            start = None
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in parts if not 0xD800 <= a <= 0xDFFF)


LETTERS = char_class(lambda cp: unicodedata.category(chr(cp)).startswith("L"))
NUMBERS = char_class(lambda cp: unicodedata.category(chr(cp)).startswith("N"))
WHITE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# transformers' CLIP pattern, with \p{L}, \p{N} and \s spelled out for Python's re
PATTERN = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
    f"[{LETTERS}]+|[{NUMBERS}]|[^{WHITE}{LETTERS}{NUMBERS}]+", re.IGNORECASE)


def normalize(text):
    text = re.sub(f"[{WHITE}]+", " ", text)
    return "".join(ch.lower() for ch in text)


def pieces(text):
    return PATTERN.findall(normalize(text))


def bpe_word(piece, ranks):
    word = [BYTES[b] for b in piece.encode("utf-8")]
    word[-1] += "</w>"
    while len(word) > 1:
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, math.inf))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


def encode(text, vocab, ranks):
    ids = [vocab["<|startoftext|>"]]
    for p in pieces(text):
        if p in ("<|startoftext|>", "<|endoftext|>"):
            ids.append(vocab[p])
            continue
        ids.extend(vocab.get(s, vocab["<|endoftext|>"]) for s in bpe_word(p, ranks))
    ids.append(vocab["<|endoftext|>"])
    return ids


def learn_bpe(text, merges):
    counts = {}
    for p in pieces(text):
        w = [BYTES[b] for b in p.encode("utf-8")]
        w[-1] += "</w>"
        counts[tuple(w)] = counts.get(tuple(w), 0) + 1
    out = []
    for _ in range(merges):
        pc = {}
        for w, c in counts.items():
            for i in range(len(w) - 1):
                pc[(w[i], w[i + 1])] = pc.get((w[i], w[i + 1]), 0) + c
        if not pc:
            break
        best = max(sorted(pc), key=lambda p: pc[p])
        out.append(best)
        new = {}
        for w, c in counts.items():
            m, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    m.append(w[i] + w[i + 1])
                    i += 2
                else:
                    m.append(w[i])
                    i += 1
            new[tuple(m)] = new.get(tuple(m), 0) + c
        counts = new
    return out


def read_task(name):
    """classnames and templates from config/clip_tasks/<name>.yaml (one JSON string per item)."""
    lists, cur = {"classnames": [], "templates": []}, None
    with open(os.path.join(ROOT, "config", "clip_tasks", name + ".yaml"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("classnames:"):
                cur = "classnames"
            elif line.startswith("templates:"):
                cur = "templates"
            elif line.startswith("  - ") and cur:
                lists[cur].append(json.loads(line[4:]))
            elif not line.startswith("#"):
                cur = None if not line.startswith(" ") else cur
    return lists["classnames"], lists["templates"]


# ------------------------------------------------------------------ text tower -----------


def text_params(cfg, V):
    E, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    P = {"text_model.embeddings.token_embedding.weight": torch.randn(V, E, generator=g) * 0.5,
         "text_model.embeddings.position_embedding.weight":
             torch.randn(cfg["max_position_embeddings"], E, generator=g) * 0.3}
    for l in range(L):
        encoder_layer_params(P, f"text_model.encoder.layers.{l}.", E, I, g)
    P["text_model.final_layer_norm.weight"] = 1 + 0.1 * torch.randn(E, generator=g)
    P["text_model.final_layer_norm.bias"] = 0.1 * torch.randn(E, generator=g)
    return P


def text_forward(P, cfg, proj, ids, mask):
    """transformers' CLIPTextModel + text_projection on a padded batch: causal mask plus the
    attention mask's padded keys; pooled at the eos position by transformers' rule."""
    E, H = cfg["hidden_size"], cfg["num_attention_heads"]
    D = E // H
    B, T = ids.shape
    x = P["text_model.embeddings.token_embedding.weight"][ids] + \
        P["text_model.embeddings.position_embedding.weight"][:T]
    neg = torch.finfo(torch.float32).min
    causal = torch.triu(torch.full((T, T), neg), 1)
    pad = (1.0 - mask[:, None, None, :].float()) * neg
    bias = causal[None, None] + pad
    act = (lambda v: v * torch.sigmoid(1.702 * v)) if cfg["hidden_act"] == "quick_gelu" else F.gelu
    eps = cfg["layer_norm_eps"]
    for l in range(cfg["num_hidden_layers"]):
        pre = f"text_model.encoder.layers.{l}."
        h = F.layer_norm(x, (E,), P[pre + "layer_norm1.weight"], P[pre + "layer_norm1.bias"], eps)
        q = F.linear(h, P[pre + "self_attn.q_proj.weight"], P[pre + "self_attn.q_proj.bias"]) * D ** -0.5
        k = F.linear(h, P[pre + "self_attn.k_proj.weight"], P[pre + "self_attn.k_proj.bias"])
        v = F.linear(h, P[pre + "self_attn.v_proj.weight"], P[pre + "self_attn.v_proj.bias"])
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        a = F.softmax(q @ k.transpose(-2, -1) + bias, dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, T, E)
        x = x + F.linear(a, P[pre + "self_attn.out_proj.weight"], P[pre + "self_attn.out_proj.bias"])
        h = F.layer_norm(x, (E,), P[pre + "layer_norm2.weight"], P[pre + "layer_norm2.bias"], eps)
        h = F.linear(act(F.linear(h, P[pre + "mlp.fc1.weight"], P[pre + "mlp.fc1.bias"])),
                     P[pre + "mlp.fc2.weight"], P[pre + "mlp.fc2.bias"])
        x = x + h
    x = F.layer_norm(x, (E,), P["text_model.final_layer_norm.weight"],
                     P["text_model.final_layer_norm.bias"], eps)
    eos = cfg["eos_token_id"]
    if eos == 2:
        at = ids.argmax(dim=-1)
    else:
        at = (ids == eos).int().argmax(dim=-1)
    pooled = x[torch.arange(B), at]
    return F.linear(pooled, proj)


def pad_batch(seqs, pad):
    T = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    return ids, mask


def zeroshot_head(P, cfg, proj, vocab, ranks, classnames, templates):
    rows = []
    for c in classnames:
        ids, mask = pad_batch([encode(t.replace("{c}", c), vocab, ranks) for t in templates],
                              vocab["<|endoftext|>"])
        e = text_forward(P, cfg, proj, ids, mask)
        e = e / e.norm(p=2, dim=-1, keepdim=True)
        e = e.mean(dim=0)
        rows.append(e / e.norm(p=2, dim=-1, keepdim=True))
    return torch.stack(rows)


# --------------------------------------------------------------------- writing -----------

def snapshot(hub, repo, commit):
    d = os.path.join(hub, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(d, "refs"), exist_ok=True)
    with open(os.path.join(d, "refs", "main"), "w") as f:
        f.write(commit)
    s = os.path.join(d, "snapshots", commit)
    os.makedirs(s, exist_ok=True)
    return s


def main():
    with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
        corpus = f.read()
    corpus += " a photo of a satellite the number digit centered"
    merges = learn_bpe(corpus, 400)
    symbols = [BYTES[b] for b in range(256)]
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {}
    for s in vocab_list:
        vocab.setdefault(s, len(vocab))
    ranks = {m: i for i, m in enumerate(merges)}
    V = len(vocab)

    text_cfg = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 64,
                "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77,
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                "eos_token_id": vocab["<|endoftext|>"], "bos_token_id": vocab["<|startoftext|>"]}
    vis_cfg = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
               "num_hidden_layers": 2, "image_size": 32, "patch_size": 8, "num_channels": 3,
               "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 16}
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
              "logit_scale_init_value": 2.6592, "text_config": text_cfg, "vision_config": vis_cfg}
    P = text_params(text_cfg, V)
    proj = torch.randn(16, 32, generator=g) / math.sqrt(32)
    P["text_projection.weight"] = proj
    VP = clip_params(vis_cfg, g)
    P.update(VP)
    P["logit_scale"] = torch.tensor(2.6592)

    hub = os.path.join(OUT, "hub")
    base = snapshot(hub, "openai/clip-vit-base-patch32", "c1" * 20)
    st.save(os.path.join(base, "model.safetensors"), P, {"format": "pt"})
    with open(os.path.join(base, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    legacy = dict(config, text_config=dict(text_cfg, eos_token_id=2))
    with open(os.path.join(OUT, "config_legacy_eos.json"), "w") as f:
        json.dump(legacy, f, indent=1)
    with open(os.path.join(base, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(base, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    with open(os.path.join(base, "preprocessor_config.json"), "w") as f:
        json.dump({"crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
                   "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
                   "size": {"shortest_edge": 32}}, f)

    cases = {"vocab_size": V, "tokens": [], "features": {}, "heads": {}, "eval": {}}
    texts = ["a photo of a dog.", "A centered satellite photo of Annual Crop Land.",
             "  multiple   spaces\tand\nnewlines  ", "it's what they've done, isn't it? I'll go; we'd",
             "numbers 12345 and 3.14", "unicode: café naïve Ελληνικά ΣΊΣΥΦΟΣ お き ٣٤ Ⅻ",
             "<|startoftext|>inner<|endoftext|> tokens", "emoji \U0001F642 and symbols @#$%^&*()",
             "'S Uppercase 'LL 'RE", 'a close up photo of a "speed limit (30km/h)" traffic sign.',
             "GNU GENERAL PUBLIC LICENSE, Version 3, 29 June 2007", "x" * 40]
    for t in texts:
        cases["tokens"].append({"text": t, "ids": encode(t, vocab, ranks)})
    seqs = [c["ids"] for c in cases["tokens"]]
    ids, mask = pad_batch(seqs, vocab["<|endoftext|>"])
    with torch.no_grad():
        feats = text_forward(P, text_cfg, proj, ids, mask)
        feats_legacy = text_forward(P, dict(text_cfg, eos_token_id=2), proj, ids, mask)
    cases["features"] = {"ids": seqs, "padded": ids.tolist(), "features": feats.tolist(),
                         "legacy": feats_legacy.tolist()}

    # two tasks with FusionBench's class names and templates, their heads, data and scores
    tasks = ["eurosat", "mnist"]
    heads = {}
    for t in tasks:
        names, templates = read_task(t)
        with torch.no_grad():
            heads[t] = zeroshot_head(P, text_cfg, proj, vocab, ranks, names, templates)
        cases["heads"][t] = heads[t].tolist()
    fine = {}
    for k, t in enumerate(tasks):
        fine[t] = {n: v + 0.05 * (k + 1) * torch.randn(v.shape, generator=g)
                   for n, v in VP.items() if n.startswith("vision_model.")}
        s = snapshot(hub, f"tanganke/clip-vit-base-patch32_{t}", f"{k + 1:02d}" * 20)
        st.save(os.path.join(s, "model.safetensors"), fine[t], {"format": "pt"})
        with open(os.path.join(s, "config.json"), "w") as f:
            json.dump(dict(vis_cfg, architectures=["CLIPVisionModel"], model_type="clip_vision_model"), f)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    images = {}
    for t in tasks:  # a small train split too, for the methods that learn from it
        for label in range(10):
            d = os.path.join(OUT, "data", t, "train", f"{label:02d}")
            os.makedirs(d, exist_ok=True)
            for i in range(2):
                px = torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(px.numpy(), "RGB").save(os.path.join(d, f"{i}.png"))
    for t in tasks:
        xs, ys = [], []
        for label in range(10):
            d = os.path.join(OUT, "data", t, "test", str(label))
            os.makedirs(d, exist_ok=True)
            for i in range(3):
                color = torch.tensor([(label * 97) % 256, (label * 53 + 40) % 256, (label * 29 + 90) % 256])
                noise = torch.randint(-60, 61, (32, 32, 3), generator=g)
                px = (color + noise).clamp(0, 255).to(torch.uint8)
                Image.fromarray(px.numpy(), "RGB").save(os.path.join(d, f"{i}.png"))
                xs.append((px.permute(2, 0, 1).float() / 255 - mean) / std)
                ys.append(label)
        images[t] = (torch.stack(xs), torch.tensor(ys))
    models = {"pretrained": VP}
    tv = {n: VP[n] + 0.3 * sum(fine[t][n] - VP[n] for t in tasks) for n in fine[tasks[0]]}
    models["task_arithmetic"] = dict(VP, **tv)
    scale = math.exp(2.6592)
    for m, W in models.items():
        res = {}
        for t in tasks:
            x, y = images[t]
            with torch.no_grad():
                f = clip_forward(W, vis_cfg, x)
                f = f / f.norm(p=2, dim=-1, keepdim=True)
                logits = scale * f @ heads[t].T
                loss = F.cross_entropy(logits.double(), y).item()
                acc = (logits.argmax(-1) == y).double().mean().item()
            res[t] = {"accuracy": acc, "loss": loss}
        cases["eval"][m] = res
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False)
    resize_cases()


def clip_processor_pixels(img, size):
    """transformers' CLIPImageProcessor (slow, Pillow) up to the bytes: shortest edge to size
    (long side int(size * long / short)) with Image.BICUBIC, then the centre crop."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    r = torch.tensor(list(img.resize((nw, nh), resample=Image.BICUBIC).getdata()), dtype=torch.uint8)
    r = r.view(nh, nw, -1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return r[top:top + size, left:left + size].contiguous()


def resize_cases():
    """Images of several shapes (shrinking, enlarging, one side only, grey and RGB) and their
    CLIPProcessor bytes at 224 and 32."""
    shapes = [(300, 500, 3), (500, 375, 3), (224, 224, 3), (224, 300, 3), (17, 33, 3),
              (640, 480, 1), (28, 28, 1), (1000, 229, 3), (225, 224, 3)]
    T = {}
    for i, (h, w, c) in enumerate(shapes):
        px = torch.randint(0, 256, (h, w, c), generator=g, dtype=torch.uint8)
        # smooth parts as photographs have, and hard edges
        px[: h // 2] = (torch.arange(w).view(1, w, 1) * 255 // max(w - 1, 1)).to(torch.uint8)
        img = Image.fromarray(px.numpy() if c == 3 else px[:, :, 0].numpy(), "RGB" if c == 3 else "L")
        T[f"in_{i}"] = px
        for size in (224, 32):
            T[f"out_{i}_{size}"] = clip_processor_pixels(img, size)
    st.save(os.path.join(OUT, "resize.safetensors"), T)


if __name__ == "__main__":
    main()
