"""Improved image reconstruction (paper Algorithm 2): embed an image into W+ and noise space.

    Input: image I_m;  Output: the embedded code (w_out, n_out)
    1  (w_ini, n_ini) ← initialize()
    2  w_out = W_l(1, 1, 1, w_ini, n_ini, I_m)
    3  n_out = Mk_n(1, w_out, n_ini, I_m, 0)

W+ first, then noise, once each: the paper shows that joint optimisation and repeated
alternation both hurt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from i2score.data.latents import Latents
from i2score.features import LPIPS, VGG16Features, VGGWeightsNotFoundError, load_lpips, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.kernels import batch_invariant
from i2score.method.applications.common import (
    after_steps,
    algorithm_meta,
    embedding,
    images_to_tensor,
    render,
)
from i2score.method.blocks import EarlyStop, StepCallback, optimize_noise, optimize_w
from i2score.method.metrics import psnr, ssim
from i2score.method.objective import embedding_target


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
    """Embed images into W+ and noise space (Algorithm 2).

    Args:
        images: ``I_m``: ``[B, 3, R, R]`` in [-1, 1], or PIL images of size ``R x R``.
        G: the generator.
        steps_w, steps_n: iterations of each stage (paper: 5000 and 3000).
        seed: seeds the initial noise (and a uniform w init); every image gets the same
            initial values, so results do not depend on batch composition.
        init: ``"mean"`` or ``"uniform"``; default by ``G.domain`` (``face`` -> mean).
        lr_w, lr_n: Adam learning rates of the stages (paper: 0.01 and 5).
        vgg: VGG16 features (default: :func:`i2score.features.load_vgg16`, an error when no
            weights can be found — never random weights).
        lpips: an LPIPS module, True to load one (None in the metrics when weights are
            missing), or False/None to skip the metric.
        early_stop: optional per-image early stopping in both stages (off by default).
        callback: ``callback(global_step, loss [B_active])`` per step.
        autocast_dtype: e.g. ``torch.bfloat16`` for the generator forward.
        channels_last, compile: engine fast-path options (see :mod:`i2score.generator.fastpath`);
            results then agree with the default engine to float tolerance, not bit for bit.

    Returns:
        :class:`ReconstructionResult`.
    """
    t0 = time.perf_counter()
    image = images_to_tensor(images, G.resolution, G.device)
    batch = image.shape[0]
    vgg = vgg if vgg is not None else load_vgg16(device=G.device)

    # 1. (w_ini, n_ini) ← initialize()
    init = init or ("mean" if getattr(G, "domain", "face") == "face" else "uniform")
    w_ini = initial_w(G, batch, init=init, seed=seed, mean_w_samples=mean_w_samples)
    n_ini = G.random_noise(batch, [seed] * batch)

    # 2. w_out = W_l(1, 1, 1, w_ini, n_ini, I_m)
    w_out, res_w = optimize_w(G, [embedding_target(image)], w_ini=w_ini, n_ini=n_ini, vgg=vgg, steps=steps_w,
                              lr=lr_w, callback=callback, early_stop=early_stop, autocast_dtype=autocast_dtype,
                              channels_last=channels_last, compile=compile)

    # 3. n_out = Mk_n(1, w_out, n_ini, I_m, 0)
    n_out, res_n = optimize_noise(G, M=None, w=w_out, n_ini=n_ini, x=image, steps=steps_n, lr=lr_n,
                                  callback=after_steps(callback, steps_w), early_stop=early_stop,
                                  autocast_dtype=autocast_dtype, channels_last=channels_last, compile=compile)

    images_w, final = render(G, w_out, n_ini), render(G, w_out, n_out)
    # The metrics run under the same reproducible kernels as the renders (LPIPS and SSIM convolve).
    with torch.no_grad(), batch_invariant(G.device):
        psnr_w, psnr_wn = psnr(images_w, image).cpu(), psnr(final, image).cpu()
        mse = ((final.float() - image).square().flatten(1).mean(dim=1) / 4).cpu()
        ssim_v = ssim(final, image)
        lpips_v: list[float | None] = [None] * batch
        if lpips is True:
            try:
                lpips = load_lpips(device=G.device)
            except VGGWeightsNotFoundError:
                lpips = None
        if isinstance(lpips, torch.nn.Module):
            lpips_v = [float(v) for v in lpips(final.float().clamp(-1, 1), image).cpu()]
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
    meta = algorithm_meta(G, "reconstruct", steps_w=steps_w, steps_n=steps_n, seed=seed, init=init, lr_w=lr_w,
                          lr_n=lr_n)
    return ReconstructionResult(embedding(w_out, n_out, meta), final.detach(), images_w.detach(), metrics)
