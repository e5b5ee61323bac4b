"""Global edits of embedded images (Image2StyleGAN, which Image2StyleGAN++ builds on), forward only:

    morph:                w = (1 − t)·w_a + t·w_b
    style mixing:         w = [w_content rows 0..k−1, w_style rows k..L−1]
    expression transfer:  w = w + λ·(w_b − w_a)
"""

from __future__ import annotations

import torch
from torch import Tensor

from i2score.data.latents import Latents
from i2score.generator.network import StyleGAN2
from i2score.method.applications.common import EditResult, algorithm_meta, check_batch, render


def morph(a: Latents, b: Latents, t: float | Tensor, G: StyleGAN2) -> EditResult:
    """Morph: ``w = (1 − t)·w_a + t·w_b``, noise likewise. ``t`` scalar or ``[B]`` in [0, 1]
    (values outside extrapolate). ``t = 0`` and ``t = 1`` give the endpoints exactly."""
    la, lb = a.to(G.device), b.to(G.device)
    check_batch("b", lb, len(la))
    tt = torch.as_tensor(t, dtype=torch.float32, device=G.device).reshape(-1)
    if tt.numel() not in (1, len(la)):
        raise ValueError(f"t must be a scalar or have {len(la)} values, got {tt.numel()}")

    def lerp(x: Tensor, y: Tensor) -> Tensor:
        s = tt.reshape(-1, *([1] * (x.ndim - 1))).expand(x.shape[0], *([1] * (x.ndim - 1)))
        # torch.where keeps the endpoints bit-exact (x + t*(y - x) rounds at t = 1).
        return torch.where(s == 0, x, torch.where(s == 1, y, (1 - s) * x + s * y))

    w = lerp(la.w, lb.w)
    noise = [lerp(x, y) for x, y in zip(la.noise, lb.noise, strict=True)]
    meta = algorithm_meta(G, "morph", t=tt.tolist())
    return EditResult(Latents(w, noise, meta), render(G, w, noise), [{"t": float(v)} for v in tt.expand(len(la))])


def style_mix(content: Latents, style: Latents, k: int, G: StyleGAN2) -> EditResult:
    """Style mixing: synthesis layers ``0..k-1`` from ``content``, the rest from ``style``.

    Each layer takes its W+ row and its noise map from the same source: the noise stage fits
    each image's noise to its own pixels, so one image's noise under another's styles paints
    the first image's residue over the second. ``k = L`` returns the content image and
    ``k = 0`` the style image exactly.
    """
    c, s = content.to(G.device), style.to(G.device)
    check_batch("style", s, len(c))
    if not 0 <= k <= G.num_ws:
        raise ValueError(f"k must be in 0..{G.num_ws}, got {k}")
    w = torch.cat([c.w[:, :k], s.w[:, k:]], dim=1)
    # Noise map i belongs to synthesis conv i, which W+ row i modulates.
    noise = [cn if i < k else sn for i, (cn, sn) in enumerate(zip(c.noise, s.noise, strict=True))]
    meta = algorithm_meta(G, "style_mix", k=k)
    return EditResult(Latents(w, noise, meta), render(G, w, noise), [{"k": k} for _ in range(len(c))])


def expression_transfer(target: Latents, a: Latents, b: Latents, strength: float, G: StyleGAN2) -> EditResult:
    """Expression transfer: ``w = w_target + strength·(w_b − w_a)`` (a, b: the same person with
    a neutral and a target expression; a batch-1 pair applies to every target)."""
    t = target.to(G.device)
    la, lb = a.to(G.device), b.to(G.device)
    for name, lat in (("a", la), ("b", lb)):
        if len(lat) not in (1, len(t)):
            raise ValueError(f"{name} has {len(lat)} latents for {len(t)} targets")
    w = t.w + strength * (lb.w - la.w)
    meta = algorithm_meta(G, "expression_transfer", strength=strength)
    return EditResult(Latents(w, t.noise, meta), render(G, w, t.noise),
                      [{"strength": strength} for _ in range(len(t))])
