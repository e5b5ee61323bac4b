"""Edits of embedded images (paper Sec. 7, Alg. 3, 5, 6 and 7.6; global edits of Image2StyleGAN).

Every edit starts from **cached** :class:`~i2score.data.latents.Latents` (no re-embedding) and
returns an :class:`EditResult`: new latents, the rendered images and per-image metrics. All of
them are batched (row ``b`` of every argument belongs together) and each is a few calls of the
building blocks in :mod:`i2score.method.blocks`. Masks are user-facing: white (1) marks the region the
user names (the region taken from ``image`` in a crossover, the scribbled region, the region to
restyle, the region that receives the other image's attribute); :mod:`i2score.method.masks` derives the
paper's internal masks from them.

Images are ``[B, 3, R, R]`` in [-1, 1]; masks ``[B or 1, 1, R, R]`` in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from i2score.method.applications.reconstruct import ALGORITHM_VERSION
from i2score.method.blocks import LossWeights, StepCallback, StyleTerm, blend_activations, optimize_noise, optimize_w
from i2score.features import VGG16Features, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.generator.ops import batch_invariant
from i2score.data.latents import Latents
from i2score.method.masks import as_mask, gaussian_blur
from i2score.method.metrics import psnr


@dataclass
class EditResult:
    """Output of an edit.

    Attributes:
        latents: the edited embedding (``w [B, L, w_dim]``, noise ``[B, 1, r, r]`` each).
        images: renders ``[B, 3, R, R]`` in [-1, 1] (nominal).
        metrics: one dict per image (which keys depends on the edit; PSNRs in dB).
    """

    latents: Latents
    images: Tensor
    metrics: list[dict[str, Any]]


def _meta(G: StyleGAN2, name: str, **params: Any) -> dict[str, Any]:
    return {"algorithm": f"image2stylegan++/{name}", "algorithm_version": ALGORITHM_VERSION, **params,
            "generator": getattr(G, "source", "unknown"), "generator_sha256": getattr(G, "weights_sha256", None)}


def _render(G: StyleGAN2, w: Tensor, noise: Sequence[Tensor]) -> Tensor:
    with torch.no_grad(), batch_invariant(G.device):
        return G.synthesize(w, noise)


def _check_batch(name: str, latents: Latents, batch: int) -> None:
    if len(latents) != batch:
        raise ValueError(f"{name} has {len(latents)} latents for a batch of {batch} images")


def _images(x: Tensor, G: StyleGAN2, name: str) -> Tensor:
    r = G.resolution
    if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (r, r):
        raise ValueError(f"{name} must be [B, 3, {r}, {r}] in [-1, 1], got {list(x.shape)}")
    return x.float().to(G.device)


# --------------------------------------------------------------------------------------------
# Optimisation-based edits


def _locality_metrics(out: Tensor, before: Tensor, image: Tensor, mask: Tensor, blurred: Tensor,
                      res_w: Any, res_n: Any) -> list[dict[str, Any]]:
    """Per-image metrics of a local edit: ``psnr_outside`` (the edit vs the input image outside
    the blurred region), ``psnr_outside_before`` (the cached reconstruction there: the edit
    should lose at most a fraction of a dB), ``change_inside`` (mean absolute change from the
    reconstruction inside ``mask``, [0, 2] scale)."""
    outside = (blurred < 0.01).float()
    p_out, p_before = psnr(out, image, outside).cpu(), psnr(before, image, outside).cpu()
    change = ((out - before).abs().mean(dim=1, keepdim=True) * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
    return [{"psnr_outside": float(p_out[b]), "psnr_outside_before": float(p_before[b]),
             "change_inside": float(change[b]), "steps_w": int(res_w.steps[b]), "steps_n": int(res_n.steps[b])}
            for b in range(out.shape[0])]


def crossover(image: Tensor, base: Tensor, mask: Tensor, base_latents: Latents, G: StyleGAN2, *,
              blur_sigma: float = 2.0, steps_w: int = 1000, steps_n: int = 1000, lr_w: float = 0.01,
              lr_n: float = 5.0, vgg: VGG16Features | None = None,
              callback: StepCallback | None = None) -> EditResult:
    """Image crossover (Alg. 3): the ``mask`` region of ``image`` on ``base``, blended seamlessly.

    ``Mb = blur(M)``; starting from the base's cached code ``w*``:
    ``w = W_l(Mb, Mb, 1, w*, n*, image) + W_l(1 − Mb, 1 − Mb, 1, w*, n*, base)`` as one
    objective, then ``n = Mk_n(Mb, w, n*, image, base)``.

    Args:
        image: ``[B, 3, R, R]``, the donor of the masked region (the paper's I1).
        base: ``[B, 3, R, R]``, everything outside the mask (I2); ``base_latents`` is its
            cached embedding (the start point).
        mask: white = taken from ``image``.
        blur_sigma: Gaussian sigma of ``Mb`` in pixels at the generator resolution.

    Metrics: ``psnr_image_region`` (inside the mask's core, vs image), ``psnr_base_region``
    (outside the blurred band, vs base).
    """
    x1, x2 = _images(image, G, "image"), _images(base, G, "base")
    batch = x1.shape[0]
    _check_batch("base_latents", base_latents, batch)
    m = as_mask(mask.to(G.device), batch, G.resolution)
    mb = gaussian_blur(m, blur_sigma).clamp(0, 1)
    vgg = vgg or load_vgg16(device=G.device)
    start = base_latents.to(G.device)
    weights = LossWeights(mse_x=1.0, mse_y=1.0, percept=0.005, percept_y=0.005)
    w, res_w = optimize_w(G, x1, w_init=start.w, noise=start.noise, vgg=vgg, mask_mse=mb, mask_percept=mb, y=x2,
                          weights=weights, steps=steps_w, lr=lr_w, callback=callback)
    n_cb = None if callback is None else (lambda step, loss: callback(steps_w + step, loss))
    noise, res_n = optimize_noise(G, x1, w=w, noise_init=start.noise, y=x2, mask=mb, steps=steps_n, lr=lr_n,
                                  callback=n_cb)
    out = _render(G, w, noise)
    core, away = (mb > 0.99).float(), (mb < 0.01).float()
    p1, p2 = psnr(out, x1, core).cpu(), psnr(out, x2, away).cpu()
    metrics = [{"psnr_image_region": float(p1[b]), "psnr_base_region": float(p2[b]),
                "steps_w": int(res_w.steps[b]), "steps_n": int(res_n.steps[b])} for b in range(batch)]
    meta = _meta(G, "crossover", blur_sigma=blur_sigma, steps_w=steps_w, steps_n=steps_n, lr_w=lr_w, lr_n=lr_n)
    return EditResult(Latents(w.detach(), [n.detach() for n in noise], meta), out, metrics)


def scribble_edit(original_latents: Latents, scribbled: Tensor, scribble_mask: Tensor, G: StyleGAN2, *,
                  layers: int = 4, reg: float = 0.1, blur_sigma: float = 2.0, steps_w: int = 1000,
                  steps_n: int = 1000, lr_w: float = 0.1, lr_n: float = 5.0, vgg: VGG16Features | None = None,
                  callback: StepCallback | None = None) -> EditResult:
    """Scribble-based editing (Alg. 5): turn rough strokes into a plausible local edit.

    ``w = W_l(1, 1, wm = first `layers` rows, w*, n*, scribbled) + reg·mean||w* − w||²`` with
    Adam lr 0.1 (only coarse rows move, so the strokes become shape and colour, not paint);
    then ``n = Mk_n``: the original detail outside the blurred scribble region (the cached
    noise reproduces it) and ``G(w, n*)`` inside.

    Args:
        original_latents: cached embedding of the unscribbled image.
        scribbled: ``[B, 3, R, R]``, the image with the user's strokes.
        scribble_mask: white = the scribbled region.
        layers: number of leading W+ rows optimised (paper: 4, 5 or 6).
        reg: weight of the mean squared distance to ``w*`` over the optimised rows. On the demo
            model 0.1 turns the strokes into a visible edit (mean change inside 0.12) and 1.0
            mostly dissolves them (0.05); the outside is the same for both (``i2s bench edits``).

    Metrics: see :func:`_locality_metrics` (outside the strokes the scribbled image is the
    original).
    """
    xs = _images(scribbled, G, "scribbled")
    batch = xs.shape[0]
    _check_batch("original_latents", original_latents, batch)
    if not 1 <= layers <= G.num_ws:
        raise ValueError(f"layers must be in 1..{G.num_ws}, got {layers}")
    m = as_mask(scribble_mask.to(G.device), batch, G.resolution)
    mb = torch.maximum(gaussian_blur(m, blur_sigma), m).clamp(0, 1)
    vgg = vgg or load_vgg16(device=G.device)
    start = original_latents.to(G.device)
    rows = torch.zeros(G.num_ws, dtype=torch.bool)
    rows[:layers] = True
    # The regulariser is per element of the optimised rows, so `reg` does not scale with w_dim.
    reg_per_element = reg / (layers * G.w_dim)
    w, res_w = optimize_w(G, xs, w_init=start.w, noise=start.noise, vgg=vgg, w_mask=rows, steps=steps_w,
                          lr=lr_w, w_reg=(start.w, reg_per_element), callback=callback)
    original = _render(G, start.w, start.noise)
    edited_w = _render(G, w, start.noise)
    n_cb = None if callback is None else (lambda step, loss: callback(steps_w + step, loss))
    # Outside the strokes the scribbled image is the original photo, so the noise matches it
    # there (as the cached noise did) and follows the edited render inside.
    noise, res_n = optimize_noise(G, xs, w=w, noise_init=start.noise, y=edited_w, mask=1.0 - mb,
                                  steps=steps_n, lr=lr_n, callback=n_cb)
    out = _render(G, w, noise)
    metrics = _locality_metrics(out, original, xs, m, mb, res_w, res_n)
    meta = _meta(G, "scribble", layers=layers, reg=reg, blur_sigma=blur_sigma, steps_w=steps_w,
                 steps_n=steps_n, lr_w=lr_w, lr_n=lr_n)
    return EditResult(Latents(w.detach(), [n.detach() for n in noise], meta), out, metrics)


def local_style_transfer(content_latents: Latents, content: Tensor, style: Tensor, mask: Tensor, G: StyleGAN2, *,
                         style_mask: Tensor | None = None, blur_sigma: float = 2.0, style_weight: float = 0.05,
                         steps_w: int = 1000, steps_n: int = 1000, lr_w: float = 0.01, lr_n: float = 5.0,
                         vgg: VGG16Features | None = None, callback: StepCallback | None = None) -> EditResult:
    """Local style transfer (Alg. 6): restyle the ``mask`` region of ``content`` like ``style``.

    ``w = W_l(1 − Mb, 1 − Mb, 1, w*, n*, content) + Mst(M, w*, n*, style)`` as one objective
    (the kept region is reconstructed, the masked region takes the style image's Gram
    statistics at conv3_3), then ``n = Mk_n``: content detail outside ``Mb``, ``G(w, n*)`` inside.

    Args:
        content_latents: cached embedding of ``content``.
        content: ``[B, 3, R, R]``; style: ``[B or 1, 3, R, R]``.
        mask: white = the region to restyle.
        style_mask: white = the part of the style image whose statistics are the target
            (``[B or 1, 1, R, R]``; None = the whole style image).

    Metrics: see :func:`_locality_metrics` (vs ``content``).
    """
    x1 = _images(content, G, "content")
    x2 = _images(style, G, "style")
    batch = x1.shape[0]
    _check_batch("content_latents", content_latents, batch)
    m = as_mask(mask.to(G.device), batch, G.resolution)
    mb = torch.maximum(gaussian_blur(m, blur_sigma), m).clamp(0, 1)
    keep = 1.0 - mb
    vgg = vgg or load_vgg16(device=G.device)
    start = content_latents.to(G.device)
    sm = None if style_mask is None else as_mask(style_mask.to(G.device), x2.shape[0], G.resolution)
    term = StyleTerm(image=x2, mask=m, image_mask=sm, weight=style_weight)
    w, res_w = optimize_w(G, x1, w_init=start.w, noise=start.noise, vgg=vgg, mask_mse=keep, mask_percept=keep,
                          style=term, steps=steps_w, lr=lr_w, callback=callback)
    edited_w = _render(G, w, start.noise)
    n_cb = None if callback is None else (lambda step, loss: callback(steps_w + step, loss))
    noise, res_n = optimize_noise(G, x1, w=w, noise_init=start.noise, y=edited_w, mask=keep, steps=steps_n,
                                  lr=lr_n, callback=n_cb)
    out = _render(G, w, noise)
    metrics = _locality_metrics(out, _render(G, start.w, start.noise), x1, m, mb, res_w, res_n)
    meta = _meta(G, "style_transfer", blur_sigma=blur_sigma, style_weight=style_weight, steps_w=steps_w,
                 steps_n=steps_n, lr_w=lr_w, lr_n=lr_n)
    return EditResult(Latents(w.detach(), [n.detach() for n in noise], meta), out, metrics)


# --------------------------------------------------------------------------------------------
# Forward-only edits


ATTRIBUTE_LAYER = 4
"""Default layer of attribute transfer: ``conv4``, the 5th synthesis conv in execution order
(conv0 is the 4x4 conv; conv3/conv4 are the 16x16 pair, so conv4 is the last 16x16 conv).
The paper's "layer 4" is ambiguous; any ``conv{i}`` or index can be passed."""


def attribute_transfer(latents: Latents, donor_latents: Latents, mask: Tensor, G: StyleGAN2, *,
                       layer: int | str = ATTRIBUTE_LAYER, mode: str = "copy", alpha: float = 0.5,
                       channels: Tensor | None = None) -> EditResult:
    """Attribute-level feature transfer (Sec. 7.6): the donor's activations inside ``mask``.

    Both cached codes run to ``layer``; inside the mask the donor's activations replace
    (``copy``), are averaged with (``average``, donor weight ``alpha``) or replace selected
    channels of (``channels``) the image's; the layers after ``layer`` use the image's own
    styles and noise. Forward only. An all-zero mask reproduces the image exactly.

    Returns an :class:`EditResult` whose latents are the image's (the edit lives in the
    activations, so it is recorded in ``meta`` rather than in ``w``).
    """
    a, b = latents.to(G.device), donor_latents.to(G.device)
    batch = len(a)
    _check_batch("donor_latents", b, batch)
    m = as_mask(mask.to(G.device), batch, G.resolution)
    t0 = time.perf_counter()
    with torch.no_grad(), batch_invariant(G.device):
        out = blend_activations(G, (a.w, a.noise), (b.w, b.noise), mask=m, layer=layer, mode=mode, alpha=alpha,
                                channels=channels)
    seconds = (time.perf_counter() - t0) / batch
    meta = _meta(G, "attribute_transfer", layer=G.layer_names[G.layer_index(layer)], mode=mode, alpha=alpha)
    return EditResult(Latents(a.w, a.noise, meta), out, [{"seconds": seconds} for _ in range(batch)])


def morph(a: Latents, b: Latents, t: float | Tensor, G: StyleGAN2) -> EditResult:
    """Morph: ``w = (1 − t)·w_a + t·w_b``, noise likewise. ``t`` scalar or ``[B]`` in [0, 1]
    (values outside extrapolate). ``t = 0`` and ``t = 1`` give the endpoints exactly."""
    la, lb = a.to(G.device), b.to(G.device)
    _check_batch("b", lb, len(la))
    tt = torch.as_tensor(t, dtype=torch.float32, device=G.device).reshape(-1)
    if tt.numel() not in (1, len(la)):
        raise ValueError(f"t must be a scalar or have {len(la)} values, got {tt.numel()}")

    def lerp(x: Tensor, y: Tensor) -> Tensor:
        s = tt.reshape(-1, *([1] * (x.ndim - 1))).expand(x.shape[0], *([1] * (x.ndim - 1)))
        # torch.where keeps the endpoints bit-exact (x + t*(y - x) rounds at t = 1).
        return torch.where(s == 0, x, torch.where(s == 1, y, (1 - s) * x + s * y))

    w = lerp(la.w, lb.w)
    noise = [lerp(x, y) for x, y in zip(la.noise, lb.noise)]
    meta = _meta(G, "morph", t=tt.tolist())
    return EditResult(Latents(w, noise, meta), _render(G, w, noise), [{"t": float(v)} for v in tt.expand(len(la))])


def style_mix(content: Latents, style: Latents, k: int, G: StyleGAN2) -> EditResult:
    """Style mixing: synthesis layers ``0..k-1`` from ``content``, the rest from ``style``.

    Each layer takes its W+ row and its noise map from the same source: the noise stage fits
    each image's noise to its own pixels, so one image's noise under another's styles paints
    the first image's residue over the second. ``k = L`` returns the content image and
    ``k = 0`` the style image exactly.
    """
    c, s = content.to(G.device), style.to(G.device)
    _check_batch("style", s, len(c))
    if not 0 <= k <= G.num_ws:
        raise ValueError(f"k must be in 0..{G.num_ws}, got {k}")
    w = torch.cat([c.w[:, :k], s.w[:, k:]], dim=1)
    # Noise map i belongs to synthesis conv i, which W+ row i modulates.
    noise = [cn if i < k else sn for i, (cn, sn) in enumerate(zip(c.noise, s.noise))]
    meta = _meta(G, "style_mix", k=k)
    return EditResult(Latents(w, noise, meta), _render(G, w, noise), [{"k": k} for _ in range(len(c))])


def expression_transfer(target: Latents, a: Latents, b: Latents, strength: float, G: StyleGAN2) -> EditResult:
    """Expression transfer: ``w = w_target + strength·(w_b − w_a)`` (a, b: the same person with
    a neutral and a target expression; a batch-1 pair applies to every target)."""
    t = target.to(G.device)
    la, lb = a.to(G.device), b.to(G.device)
    for name, lat in (("a", la), ("b", lb)):
        if len(lat) not in (1, len(t)):
            raise ValueError(f"{name} has {len(lat)} latents for {len(t)} targets")
    w = t.w + strength * (lb.w - la.w)
    meta = _meta(G, "expression_transfer", strength=strength)
    return EditResult(Latents(w, t.noise, meta), _render(G, w, t.noise), [{"strength": strength} for _ in range(len(t))])
