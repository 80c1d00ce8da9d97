"""Reference implementations of the data-free methods, written with torch from the papers'
formulas (and FusionBench's conventions where it fixes a detail). Every function takes the
base state dict (or None) and the list of model state dicts, and returns the merged state
dict in f32; make_reference.py rounds it to the output dtype.

Operations are written out in the order the C code documents (sums over models in pool
order, f32 scalars), so f32 results agree to the bit."""
import re

import numpy as np
import torch

M64 = (1 << 64) - 1


# --- the counter-based generator of src/core/rng.h, recomputed -----------------------------
def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def rng_key(seed, name, stream):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return mix64(mix64(seed & M64) ^ mix64((h + 0x632BE59BD9B4E019) & M64)
                 ^ mix64((stream * 0x9E3779B97F4A7C15 + 1) & M64))


def rng_uniform(key, n):
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64)
        z = np.uint64(key) + (i + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24))


def f32(x):
    return torch.tensor(x, dtype=torch.float32)


def is_float(t):
    return t.dtype.is_floating_point


def is_linear_weight(name, t):
    return t.dim() == 2 and name.endswith(".weight") and "embed" not in name


def dare_drop(name, t, k, p, rescale, only_linear, seed):
    """Task vector t of model k after DARE: kept where u > p, divided by (1 - p)."""
    if only_linear and not is_linear_weight(name, t):
        return t
    u = rng_uniform(rng_key(seed, name, k), t.numel()).reshape(t.shape)
    kept = torch.where(u > f32(p), t, torch.zeros_like(t))
    if rescale and p < 1.0:
        kept = kept / f32(1.0 - p)
    return kept


def task_vectors(base, models):
    return [{k: m[k].float() - base[k].float() for k in base if is_float(base[k])} for m in models]


def dare_task_arithmetic(base, models, scaling_factor, sparsity_ratio, rescale=True,
                         only_on_linear_weights=False, seed=0):
    out = {}
    for name in base:
        if not is_float(base[name]):
            continue
        b = base[name].float()
        acc = None
        for k, m in enumerate(models):
            t = dare_drop(name, m[name].float() - b, k, sparsity_ratio, rescale,
                          only_on_linear_weights, seed)
            acc = t if acc is None else acc + t
        out[name] = b + f32(scaling_factor) * acc
    return out


def ties(base, models, scaling_factor, threshold, merge_func="sum", remove_keys=(), dare=None):
    names = [n for n in base if is_float(base[n])
             and not any(re.fullmatch(p, n) for p in remove_keys)]
    taus = []
    for k, m in enumerate(models):
        tv = {}
        for n in names:
            t = m[n].float() - base[n].float()
            if dare:
                t = dare_drop(n, t, k, **dare)
            tv[n] = t
        taus.append(tv)
    K = threshold / 100 if threshold > 1 else threshold
    # trim: per model, the k-th smallest |tau| over the whole flattened vector
    cuts = []
    for tv in taus:
        flat = torch.cat([tv[n].reshape(-1) for n in names]).abs()
        d = flat.numel()
        k = d - int(d * K)
        cuts.append(flat.kthvalue(k).values if k > 0 else f32(0.0))
    trimmed = [{n: torch.where(tv[n].abs() >= c, tv[n], torch.zeros_like(tv[n]))
                for n in names} for tv, c in zip(taus, cuts)]
    # elect
    sums = {}
    for n in names:
        s = trimmed[0][n]
        for t in trimmed[1:]:
            s = s + t[n]
        sums[n] = s
    pos = sum(int((sums[n] > 0).sum()) for n in names)
    neg = sum(int((sums[n] < 0).sum()) for n in names)
    majority = 1.0 if pos > neg else -1.0 if pos < neg else 0.0
    out = {}
    for n in names:
        sign = torch.sign(sums[n])
        sign = torch.where(sign == 0, f32(majority), sign)
        sel = [torch.where(torch.where(sign > 0, t[n] > 0, t[n] < 0), t[n], torch.zeros_like(t[n]))
               for t in trimmed]
        if merge_func == "max":
            agg = torch.stack([s.abs() for s in sel]).max(dim=0).values * sign
        else:
            agg = sel[0]
            for s in sel[1:]:
                agg = agg + s
            if merge_func == "mean":
                count = torch.zeros_like(agg)
                for s in sel:
                    count = count + (s != 0).float()
                agg = agg / torch.clamp(count, min=1.0)
        out[n] = base[n].float() + f32(scaling_factor) * agg
    for n in base:
        if is_float(base[n]) and n not in out:
            out[n] = base[n].float()  # removed keys keep the base's values
    return out


def magmax(base, models, scaling_factor):
    out = {}
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        best = models[0][n].float() - b
        for m in models[1:]:
            t = m[n].float() - b
            best = torch.where(t.abs() >= best.abs(), t, best)  # later models win ties
        out[n] = b + f32(scaling_factor) * best
    return out


def linear_interpolation(a, b, t):
    w1, w2 = f32(1.0 - t), f32(t)
    return {n: w1 * a[n].float() + w2 * b[n].float() for n in a if is_float(a[n])}


def expo(pre, ft, alpha):
    return {n: ft[n].float() + f32(alpha) * (ft[n].float() - pre[n].float())
            for n in pre if is_float(pre[n])}


def ddot(a, b):
    return float((a.double() * b.double()).sum())


def slerp(a, b, t, dot_threshold=0.9995, epsilon=1e-8):
    out = {}
    for n in a:
        if not is_float(a[n]):
            continue
        v0, v1 = a[n].float(), b[n].float()
        n0, n1 = ddot(v0, v0) ** 0.5, ddot(v1, v1) ** 0.5
        d = ddot(v0, v1) / ((n0 if n0 > epsilon else 1.0) * (n1 if n1 > epsilon else 1.0))
        if abs(d) > dot_threshold:
            w0, w1 = 1.0 - t, t
        else:
            import math
            w = math.acos(d)
            w0, w1 = math.sin(w - w * t) / math.sin(w), math.sin(w * t) / math.sin(w)
        out[n] = f32(w0) * v0 + f32(w1) * v1
    return out


def karcher(models, max_iter=10, tol=1e-5):
    import math
    out = {}
    N = len(models)
    for n in models[0]:
        if not is_float(models[0][n]):
            continue
        ts = [m[n].float().reshape(-1) for m in models]
        norms = [ddot(t, t) ** 0.5 for t in ts]
        scale = sum((1.0 / N) * r for r in norms)
        units = [t / f32(r) for t, r in zip(ts, norms) if r > tol]
        if not units:
            out[n] = torch.zeros_like(models[0][n].float())
            continue
        a = f32((1.0 / N) / (len(units) / N))
        mu = torch.zeros_like(units[0])
        for u in units:
            mu = mu + a * u
        if ddot(mu, mu) ** 0.5 < tol:
            mu = units[0].clone()
        else:
            mu = mu / f32(ddot(mu, mu) ** 0.5)
        for _ in range(max_iter):
            tan = torch.zeros_like(mu)
            for u in units:
                d = min(1.0, max(-1.0, ddot(mu, u)))
                w = math.acos(d)
                if w < tol:
                    continue
                tan = tan + f32(float(a) * (w / math.sin(w))) * (u - f32(d) * mu)
            tn = ddot(tan, tan) ** 0.5
            if tn < tol:
                break
            mu = f32(math.cos(tn)) * mu + f32(math.sin(tn) / tn) * tan
            r = ddot(mu, mu) ** 0.5
            if r > tol:
                mu = mu / f32(r)
        out[n] = (f32(scale) * mu).reshape(models[0][n].shape)
    return out


def model_stock(base, models, ignore_keys=()):
    import math
    out = {}
    N = len(models)
    for n in base:
        if not is_float(base[n]):
            continue
        avg = models[0][n].float()
        for m in models[1:]:
            avg = avg + m[n].float()
        avg = avg / f32(N)
        if any(re.fullmatch(p, n) for p in ignore_keys):
            out[n] = avg
            continue
        b = base[n].float()
        ds = [m[n].float() - b for m in models]
        angles = []
        for i in range(N):
            for j in range(i + 1, N):
                c = ddot(ds[i], ds[j]) / (math.sqrt(ddot(ds[i], ds[i]) * ddot(ds[j], ds[j])) + 1e-8)
                c = min(1.0, max(-1.0, c))
                angles.append(math.acos(c) * (180.0 / math.pi))
        phi = (sum(angles) / len(angles)) * (math.pi / 180.0)
        t = N * math.cos(phi) / ((N - 1) * math.cos(phi) + 1.0 + 1e-8)
        out[n] = avg * f32(t) + b * f32(1.0 - t)
    return out


def magnitude_diff_pruning(base, ft, prune_ratio, rescale=False, names=None, prune_type="minor"):
    """FusionBench's MagnitudeDiffPruningAlgorithm: per row (the last dimension), a stable sort
    of |d| (minor) or -|d| (major) and the first int(cols * ratio) entries zeroed; rescale True
    multiplies by 1 / ratio, a number by itself (False: unscaled, where FusionBench zeroes d).
    prune_type "unstructured": the earlier per-tensor quantile rule, rescale dividing by the
    fraction kept."""
    out = {}
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        chosen = (any(re.search(p, n) for p in names) if names is not None
                  else is_linear_weight(n, base[n]))
        if not chosen or base[n].numel() == 0:
            out[n] = b
            continue
        d = ft[n].float() - b
        if prune_type == "unstructured":
            q = torch.quantile(d.abs().reshape(-1), prune_ratio)
            kept = torch.where(d.abs() > q, d, torch.zeros_like(d))
            if rescale:
                kept = kept / f32(1.0 - prune_ratio)
            out[n] = b + kept
            continue
        rows = d.reshape(-1, d.shape[-1]) if d.dim() >= 2 else d.reshape(1, -1)
        metric = rows.abs() if prune_type == "minor" else -rows.abs()
        mask = torch.zeros_like(metric) == 1
        idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * prune_ratio)]
        mask.scatter_(1, idx, True)
        kept = rows.masked_fill(mask, 0).reshape(d.shape)
        if rescale is True:
            kept = kept * f32(1 / prune_ratio)
        elif rescale is not False:
            kept = kept * f32(rescale)
        out[n] = b + kept
    return out


def polar(a):
    """The orthogonal polar factor U V^T of a (double)."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def running_mean(tvs):
    m = tvs[0].clone()
    for i, t in enumerate(tvs[1:], start=1):
        m = m + (t - m) / f32(i + 1)
    return m


def tsv(base, models, alpha=1.0, exclude_keys=()):
    out = {}
    T = len(models)
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        tvs = [m[n].float() - b for m in models]
        if isinstance(alpha, (list, tuple)):
            tvs = [t * f32(a) for t, a in zip(tvs, alpha)]
            post = f32(1.0)
        else:
            post = f32(alpha)
        if b.dim() != 2 or any(re.fullmatch(p, n) for p in exclude_keys):
            out[n] = b + post * running_mean(tvs)
            continue
        k = min(b.shape)
        r = int(k * (1.0 / T))
        us, ss, vs = [], [], []
        for t in tvs:
            u, s, vh = torch.linalg.svd(t.double(), full_matrices=False)
            us.append(u[:, :r]); ss.append(s[:r]); vs.append(vh[:r, :])
        U, S, V = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)
        delta = polar(U) @ torch.diag(S) @ polar(V)
        out[n] = b + post * delta.float()
    return out


def iso(base, models, scaling_factor=1.0, cts=False, common_space_fraction=0.8, exclude_keys=()):
    out = {}
    T = len(models)
    lam = f32(scaling_factor)
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        tvs = [m[n].float() - b for m in models]
        if b.dim() != 2 or any(re.fullmatch(p, n) for p in exclude_keys):
            if cts:
                avg = running_mean(tvs)
            else:
                avg = tvs[0]
                for t in tvs[1:]:
                    avg = avg + t
                avg = avg / f32(T)
            out[n] = b + lam * avg
            continue
        M = tvs[0]
        for t in tvs[1:]:
            M = M + t
        k = min(b.shape)
        if not cts:
            M = (M / f32(T)) * f32(T)
            u, s, vh = torch.linalg.svd(M.double(), full_matrices=False)
            delta = s.mean() * (u @ vh)
            out[n] = b + lam * delta.float()
            continue
        c = int(k * common_space_fraction)
        c = k - round((k - c) / T) * T
        d = (k - c) // T
        u, s, vh = torch.linalg.svd(M.double(), full_matrices=False)
        uc, sc, vc = u[:, :c], s[:c], vh[:c, :]
        us, ss, vs = [], [], []
        for t in tvs:
            w = t.double()
            w = w - uc @ (uc.T @ w)
            ut, st_, vt = torch.linalg.svd(w, full_matrices=False)
            us.append(ut[:, :d]); ss.append(st_[:d]); vs.append(vt[:d, :])
        U = torch.cat(us + [uc], 1)
        S = torch.cat(ss + [sc])
        V = torch.cat(vs + [vc], 0)
        delta = S.mean() * (polar(U) @ polar(V))
        out[n] = b + lam * delta.float()
    return out


def consensus_task_arithmetic(base, models, scaling_factor=0.3, tall_mask_lambda=0.6, k=2):
    out = {}
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        tau = models[0][n].float() - b
        for m in models[1:]:
            tau = tau + (m[n].float() - b)
        mt = b + tau
        count = torch.zeros_like(b)
        for m in models:
            f = m[n].float()
            count = count + ((b - f).abs() > (mt - f).abs() * f32(tall_mask_lambda)).float()
        out[n] = b + f32(scaling_factor) * torch.where(count >= k, tau, torch.zeros_like(tau))
    return out


def _stable_order(x):
    return torch.sort(x.abs().reshape(-1), stable=True).indices


def sparse_task_arithmetic(base, models, kind, consensus, weights=None, density=0.9, gamma=0.01,
                           epsilon=0.15, lam=1.0, normalize=False, rescale=True, seed=0):
    out = {}
    N = len(models)
    ws = weights or [1.0] * N
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        ds = []
        for i, m in enumerate(models):
            tau = (m[n].float() - b).reshape(-1).clone()
            cnt = tau.numel()
            if density < 1.0 and kind == "breadcrumbs":
                target, top = int(density * cnt), int(gamma * cnt)
                bot = cnt - target - top
                if bot < 0:
                    top += bot
                    bot = 0
                order = _stable_order(tau)
                tau[order[:bot]] = 0
                if top > 0:
                    tau[order[cnt - top:]] = 0
            elif density < 1.0 and kind == "della":
                rows = b.shape[0] if b.dim() >= 2 else 1
                length = cnt // rows if rows else 0
                u = rng_uniform(rng_key(seed, n, i), cnt)
                for r in range(rows):
                    x = tau[r * length:(r + 1) * length]
                    order = _stable_order(x)
                    rank = torch.empty(length, dtype=torch.float64)
                    rank[order] = torch.arange(length, dtype=torch.float64)
                    rn = rank / (length - 1) if length > 1 else torch.zeros(length, dtype=torch.float64)
                    prob = (density - epsilon + 2.0 * epsilon * rn).float()
                    keep = u[r * length:(r + 1) * length] < prob
                    kept = x / prob if rescale else x
                    tau[r * length:(r + 1) * length] = torch.where(keep, kept, torch.zeros_like(x))
            ds.append(tau * f32(ws[i]))
        total = ds[0]
        for d in ds[1:]:
            total = total + d
        major = torch.where(total >= 0, f32(1.0), f32(-1.0))
        mixed = torch.zeros_like(total)
        divisor = torch.zeros_like(total)
        for i, d in enumerate(ds):
            sel = (torch.sign(d) == major) if consensus else torch.ones_like(d, dtype=torch.bool)
            mixed = mixed + torch.where(sel, d, torch.zeros_like(d))
            divisor = divisor + torch.where(sel, f32(ws[i]), f32(0.0))
        if normalize:
            if consensus:
                divisor = torch.where(divisor == 0, f32(1.0), divisor)
            else:
                divisor = torch.where(divisor.abs() < 1e-8, f32(1.0), divisor)
            mixed = mixed / divisor
        out[n] = b + f32(lam) * mixed.reshape(b.shape)
    return out


def wudi(base, models, iter_num=400, lr=1e-5, exclude_keys=()):
    """The paper's loss with autograd and torch.optim.Adam, in float64."""
    out = {}
    N = len(models)
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        tvs = [m[n].float() - b for m in models]
        if b.dim() != 2 or any(re.fullmatch(p, n) for p in exclude_keys):
            s = tvs[0]
            for t in tvs[1:]:
                s = s + t
            out[n] = b + s / f32(N)
            continue
        T = torch.stack([t.double() for t in tvs])
        X = torch.nn.Parameter(T.sum(0).clone())
        opt = torch.optim.Adam([X], lr=lr, weight_decay=0)
        norms = torch.square(torch.norm(T.reshape(N, -1), p=2, dim=-1))
        for _ in range(iter_num):
            prod = torch.matmul(X.unsqueeze(0) - T, T.transpose(1, 2))
            loss = torch.sum(torch.square(prod) / norms.unsqueeze(-1).unsqueeze(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[n] = b + X.detach().float()
    return out


def tall_mask(base, models, names, lam=0.6):
    """The multi-task model, and the masks {"<task>/<tensor>": bool}."""
    out, masks = {}, {}
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        tau = models[0][n].float() - b
        for m in models[1:]:
            tau = tau + (m[n].float() - b)
        mt = b + tau
        out[n] = mt
        for name, m in zip(names, models):
            f = m[n].float()
            masks[f"{name}/{n}"] = (b - f).abs() > (mt - f).abs() * f32(lam)
    return out, masks


def emr(base, models, names):
    """The unified model, the masks and the rescalers (FusionBench's EMR, sums in double)."""
    out, masks = {}, {}
    N = len(models)
    scales, new_scales = [0.0] * N, [0.0] * N
    for n in base:
        if not is_float(base[n]):
            continue
        b = base[n].float()
        tvs = [m[n].float() - b for m in models]
        s = tvs[0]
        for t in tvs[1:]:
            s = s + t
        gamma = torch.where(s > 0, f32(1.0), f32(-1.0))
        mx = torch.zeros_like(b)
        ms = []
        for i, t in enumerate(tvs):
            mask = t * gamma > 0
            ms.append(mask)
            mx = torch.maximum(mx, torch.where(mask, t.abs(), torch.zeros_like(t)))
            scales[i] += float(t.double().abs().sum()) / t.numel() if t.numel() else 0.0
        uni = mx * gamma
        for i, mask in enumerate(ms):
            new_scales[i] += (float(torch.where(mask, uni.double().abs(), torch.zeros_like(uni.double())).sum())
                              / uni.numel() if uni.numel() else 0.0)
            masks[f"{names[i]}/{n}"] = mask
        out[n] = b + uni
    for i in range(N):
        masks[f"{names[i]}/__rescaler__"] = torch.tensor(
            [scales[i] / new_scales[i] if new_scales[i] > 0 else 1.0], dtype=torch.float32)
    return out, masks
