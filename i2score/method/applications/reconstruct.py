"""Applications of Image2StyleGAN++ (paper Sec. 7), each a short composition of the blocks.

Reconstruction (Alg. 2) lives here; the editing applications build on the same blocks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from i2score.method.blocks import EarlyStop, StepCallback, optimize_noise, optimize_w
from i2score.features import LPIPS, VGG16Features, VGGWeightsNotFoundError, load_lpips, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.generator.ops import batch_invariant
from i2score.data.latents import Latents
from i2score.method.metrics import psnr, ssim

ALGORITHM_VERSION = 1


def images_to_tensor(images: Tensor | Sequence[Image.Image] | Image.Image, resolution: int,
                     device: torch.device | str | None = None) -> Tensor:
    """Accept ``[B, 3, R, R]`` floats in [-1, 1] or PIL images of size ``R x R``.

    Returns ``[B, 3, R, R]`` float32 in [-1, 1]. Resizing/cropping is the data plane's job, so a
    wrong size is an error here rather than a silent resample.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if not isinstance(images, Tensor):
        arrays = []
        for i, im in enumerate(images):
            if im.size != (resolution, resolution):
                raise ValueError(f"image {i} is {im.size[0]}x{im.size[1]}, the generator needs {resolution}x{resolution}")
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (resolution, resolution):
        raise ValueError(f"images must be [B, 3, {resolution}, {resolution}], got {list(images.shape)}")
    return images.float().to(device) if device is not None else images.float()


def initial_w(G: StyleGAN2, batch: int, *, init: str, seed: int, mean_w_samples: int = 10000) -> Tensor:
    """Start point of the W+ search, identical for every image of the batch (so a result never
    depends on the batch it was computed in).

    ``init="mean"``: the seeded mean latent (faces); ``"uniform"``: U[-1, 1] (other domains).
    Returns ``[batch, L, w_dim]``.
    """
    if init == "mean":
        w = G.mean_w(mean_w_samples, seed)[None, None].expand(1, G.num_ws, -1)
    elif init == "uniform":
        gen = torch.Generator().manual_seed(seed)
        w = (torch.rand(1, G.num_ws, G.w_dim, generator=gen) * 2 - 1).to(G.device)
    else:
        raise ValueError(f"init must be 'mean' or 'uniform', got {init!r}")
    return w.expand(batch, -1, -1).clone()


@dataclass
class ReconstructionResult:
    """Output of :func:`reconstruct`.

    Attributes:
        latents: the embedding (``w [B, L, w_dim]``, noise list ``[B, 1, r, r]``).
        images: final renders ``[B, 3, R, R]`` in [-1, 1] (nominal).
        images_w: renders after the W+ stage (initial noise), same shape.
        metrics: one dict per image: ``psnr_w``, ``psnr_wn`` (dB), ``mse`` (final, [0, 1] pixel
            scale), ``ssim``, ``lpips`` (None when LPIPS weights are unavailable), ``steps_w``,
            ``steps_n``, ``steps`` (their sum), ``seconds`` (batch wall time / B).
    """

    latents: Latents
    images: Tensor
    images_w: Tensor
    metrics: list[dict[str, Any]]


def reconstruct(images: Tensor | Sequence[Image.Image] | Image.Image, G: StyleGAN2, *, steps_w: int = 5000,
                steps_n: int = 3000, seed: int = 0, init: str | None = None, lr_w: float = 0.01,
                lr_n: float = 5.0, vgg: VGG16Features | None = None, lpips: LPIPS | None | bool = True,
                early_stop: EarlyStop | None = None, callback: StepCallback | None = None,
                autocast_dtype: torch.dtype | None = None, mean_w_samples: int = 10000,
                channels_last: bool = False, compile: bool = False) -> ReconstructionResult:
    """Embed images into W+ and noise space (paper Alg. 2): the W+ stage, then the noise stage.

    ``w = W_l(Mp=1, Mm=1, wm=1, w_ini, n_ini, x)`` with Adam lr 0.01 on MSE + perceptual, then
    ``n = Mk_n(M=1, w, n_ini, x)`` with Adam lr 5 on MSE, once each (the paper shows that joint
    optimisation and repeated alternation both hurt).

    Args:
        images: ``[B, 3, R, R]`` in [-1, 1], or PIL images of size ``R x R``.
        G: the generator.
        steps_w, steps_n: iterations of each stage (paper: 5000 and 3000).
        seed: seeds the initial noise (and a uniform w init); every image gets the same
            initial values, so results do not depend on batch composition.
        init: ``"mean"`` or ``"uniform"``; default by ``G.domain`` (``face`` -> mean).
        vgg: VGG16 features (default: :func:`i2score.features.vgg16.load_vgg16`, an error when no
            weights can be found — never random weights).
        lpips: an LPIPS module, True to load one (None in the metrics when weights are
            missing), or False/None to skip the metric.
        early_stop: optional per-image early stopping in both stages (off by default).
        callback: ``callback(global_step, loss [B_active])`` per step.
        autocast_dtype: e.g. ``torch.bfloat16`` for the generator forward.
        channels_last, compile: engine fast-path options (see :mod:`i2score.generator.fastpath`); results
            then agree with the default engine to float tolerance, not bit for bit.

    Returns:
        :class:`ReconstructionResult`.
    """
    t0 = time.perf_counter()
    x = images_to_tensor(images, G.resolution, G.device)
    batch = x.shape[0]
    if vgg is None:
        vgg = load_vgg16(device=G.device)
    init = init or ("mean" if getattr(G, "domain", "face") == "face" else "uniform")
    w_init = initial_w(G, batch, init=init, seed=seed, mean_w_samples=mean_w_samples)
    noise_init = G.random_noise(batch, [seed] * batch)

    w_cb = callback
    n_cb = None if callback is None else (lambda step, loss: callback(steps_w + step, loss))
    fast = {"autocast_dtype": autocast_dtype, "channels_last": channels_last, "compile": compile}
    w, res_w = optimize_w(G, x, w_init=w_init, noise=noise_init, vgg=vgg, steps=steps_w, lr=lr_w,
                          callback=w_cb, early_stop=early_stop, **fast)
    noise, res_n = optimize_noise(G, x, w=w, noise_init=noise_init, steps=steps_n, lr=lr_n,
                                  callback=n_cb, early_stop=early_stop, **fast)
    with torch.no_grad(), batch_invariant(G.device):
        images_w = G.synthesize(w, noise_init)
        final = G.synthesize(w, noise)
        psnr_w, psnr_wn = psnr(images_w, x).cpu(), psnr(final, x).cpu()
        mse = ((final.float() - x).square().flatten(1).mean(dim=1) / 4).cpu()
        ssim_v = ssim(final, x)
        lpips_v: list[float | None] = [None] * batch
        if lpips is True:
            try:
                lpips = load_lpips(device=G.device)
            except VGGWeightsNotFoundError:
                lpips = None
        if isinstance(lpips, torch.nn.Module):
            lpips_v = [float(v) for v in lpips(final.float().clamp(-1, 1), x).cpu()]
    seconds = time.perf_counter() - t0
    metrics = [
        {
            "psnr_w": float(psnr_w[b]),
            "psnr_wn": float(psnr_wn[b]),
            "mse": float(mse[b]),
            "ssim": float(ssim_v[b]),
            "lpips": lpips_v[b],
            "steps_w": int(res_w.steps[b]),
            "steps_n": int(res_n.steps[b]),
            "steps": int(res_w.steps[b] + res_n.steps[b]),
            "seconds": seconds / batch,
        }
        for b in range(batch)
    ]
    meta = {"algorithm": "image2stylegan++/reconstruct", "algorithm_version": ALGORITHM_VERSION,
            "steps_w": steps_w, "steps_n": steps_n, "seed": seed, "init": init, "lr_w": lr_w, "lr_n": lr_n,
            "generator": getattr(G, "source", "unknown"), "generator_sha256": getattr(G, "weights_sha256", None)}
    return ReconstructionResult(Latents(w.detach(), [n.detach() for n in noise], meta), final.detach(),
                                images_w.detach(), metrics)


@dataclass
class InpaintResult:
    """Output of :func:`inpaint` for ``B`` images and ``k`` solutions each (``B*k`` rows,
    solution-major within an image: row ``b*k + j`` is solution ``j`` of image ``b``).

    Attributes:
        latents: ``w [B*k, L, w_dim]`` and noise.
        images: final renders ``[B*k, 3, R, R]`` in [-1, 1].
        images_w: renders after the W+ stage.
        composites: renders with the known pixels pasted back (what a user keeps).
        metrics: per row: ``solution``, ``psnr_known`` (outside the enlarged hole, final render),
            ``psnr_hole`` (inside the hole, against the input's pixels there, which are only
            meaningful when the input was complete, as in benchmarks), ``steps_w``, ``steps_n``.
    """

    latents: Latents
    images: Tensor
    images_w: Tensor
    composites: Tensor
    metrics: list[dict[str, Any]]


def inpainting_w_rows(num_ws: int) -> Tensor:
    """Rows of w that inpainting optimises: the first ``ceil(L/2)`` and the last two (paper
    Alg. 4: rows 1-9, 17, 18 of 18). Coarse rows shape the hole's content, the last two fix
    colour; the middle rows stay at the start point, which keeps the fill plausible."""
    rows = torch.zeros(num_ws, dtype=torch.bool)
    rows[: math.ceil(num_ws / 2)] = True
    rows[-2:] = True
    return rows


def inpaint(images: Tensor | Sequence[Image.Image] | Image.Image, masks: Tensor, G: StyleGAN2, *, k: int = 1,
            seed: int = 0, steps_w: int = 1000, steps_n: int = 1000, lr_w: float = 0.03, lr_n: float = 5.0,
            offset: float = 0.4, grow: int | None = None, blur_sigma: float | None = None,
            hole_weight: float = 10.0, optimizer: str = "adam", w_rows: Tensor | Sequence[bool] | None = None,
            vgg: VGG16Features | None = None, callback: StepCallback | None = None,
            mean_w_samples: int = 10000) -> InpaintResult:
    """Fill the white region of each mask (paper Alg. 4), ``k`` distinct solutions per image.

    1. ``w = W_l(Mp = Mm = 1 − M, wm = inpainting rows, w_ini, n_ini, I_def)``: only the known
       pixels are matched. The paper uses plain gradient descent (lr 0.8, 200 steps); on the
       demo model that leaves the known region at ~35 dB and loses to OpenCV Telea inside the
       hole (LPIPS 0.115 vs 0.102), while Adam (lr 0.03, 1000 steps, same rows) reaches ~40 dB
       and beats it (0.089; measured on the 16 held-out portraits, see the README), so Adam is
       the default and ``optimizer="gd", lr_w=0.8, steps_w=200`` is the paper's setting.
    2. ``n = Mk_n``: outside the enlarged blurred hole ``Mblur+`` the render matches the input,
       inside it matches ``G(w, n_ini)`` (weight ``hole_weight``, the paper's 1e-4 : 1e-5), so
       the noise adds the image's texture without fighting the fill.

    Solution 0 starts at the mean latent, solution ``j > 0`` at the mean plus a seeded offset
    ``U[-offset, offset]`` (seed ``seed + j``), so every solution is reproducible on its own.

    Args:
        images: ``[B, 3, R, R]`` in [-1, 1] (hole pixels are ignored) or PIL images.
        masks: ``[B or 1, 1, R, R]`` in [0, 1], white (1) = missing.
        k: solutions per image.
        grow, blur_sigma: ``Mblur+`` = hole grown by ``grow`` px, blurred by ``blur_sigma`` px
            (defaults scale with the resolution: R/32 and R/64, i.e. 2 and 1 at 64 px).
        optimizer, lr_w, steps_w: the W+ stage (``"adam"`` or ``"gd"``).
        w_rows: bool ``[L]``, rows of w the W+ stage may change (None = :func:`inpainting_w_rows`).

    Returns:
        :class:`InpaintResult` with ``B*k`` rows.
    """
    from i2score.method.blocks import LossWeights
    from i2score.method.masks import as_mask, enlarged_soft_mask

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = images_to_tensor(images, G.resolution, G.device)
    batch, res = x.shape[0], G.resolution
    hole = as_mask(masks.to(G.device), batch, res)
    grow = max(1, res // 32) if grow is None else grow
    blur_sigma = max(1.0, res / 64) if blur_sigma is None else blur_sigma
    if vgg is None:
        vgg = load_vgg16(device=G.device)

    # Image-major, solution-minor rows: row b*k + j.
    xs = x.repeat_interleave(k, dim=0)
    hole_k = hole.repeat_interleave(k, dim=0)
    known = 1.0 - hole_k
    mean = G.mean_w(mean_w_samples, seed)[None, None].expand(1, G.num_ws, -1)
    starts = []
    for j in range(k):
        if j == 0:
            starts.append(mean)
        else:
            gen = torch.Generator().manual_seed(seed + j)
            u = (torch.rand(1, G.num_ws, G.w_dim, generator=gen) * 2 - 1) * offset
            starts.append(mean + u.to(G.device))
    w_init = torch.cat(starts).repeat(batch, 1, 1)
    noise_init = G.random_noise(batch * k, [seed] * (batch * k))

    w, res_w = optimize_w(G, xs, w_init=w_init, noise=noise_init, vgg=vgg, mask_mse=known, mask_percept=known,
                          w_mask=inpainting_w_rows(G.num_ws) if w_rows is None else w_rows, steps=steps_w,
                          optimizer=optimizer, lr=lr_w,
                          callback=callback)
    with torch.no_grad(), batch_invariant(G.device):
        images_w = G.synthesize(w, noise_init)
    soft = enlarged_soft_mask(hole_k, grow, blur_sigma)
    n_cb = None if callback is None else (lambda step, loss: callback(steps_w + step, loss))
    noise, res_n = optimize_noise(G, xs, w=w, noise_init=noise_init, y=images_w, mask=1.0 - soft,
                                  weights=LossWeights(mse_x=1.0, mse_y=hole_weight), steps=steps_n, lr=lr_n,
                                  callback=n_cb)
    with torch.no_grad(), batch_invariant(G.device):
        final = G.synthesize(w, noise)
    composites = final * hole_k + xs * known
    outside = (soft < 1e-6).float()
    psnr_known = psnr(final, xs, outside).cpu()
    psnr_hole = psnr(final, xs, hole_k).cpu()
    metrics = [{"solution": r % k, "psnr_known": float(psnr_known[r]), "psnr_hole": float(psnr_hole[r]),
                "steps_w": int(res_w.steps[r]), "steps_n": int(res_n.steps[r])} for r in range(batch * k)]
    meta = {"algorithm": "image2stylegan++/inpaint", "algorithm_version": ALGORITHM_VERSION, "k": k,
            "steps_w": steps_w, "steps_n": steps_n, "seed": seed, "optimizer": optimizer, "lr_w": lr_w, "lr_n": lr_n,
            "offset": offset,
            "grow": grow, "blur_sigma": blur_sigma, "hole_weight": hole_weight,
            "generator": getattr(G, "source", "unknown"), "generator_sha256": getattr(G, "weights_sha256", None)}
    return InpaintResult(Latents(w.detach(), [n.detach() for n in noise], meta), final.detach(),
                         images_w.detach(), composites.detach(), metrics)
