"""Dataset augmentation from cached embeddings: the edits of its own (the others are the
applications' crossover, style mixing and morph).

* :func:`resample_noise`: the source's ``w`` with fresh stochastic noise maps: the same image
  with new hair strands, skin pores and background grain.
* :func:`jitter_w`: ``w + σ·ε``: a small random step in W+; nearby codes render nearby,
  plausible images, so this is a semantic (not pixel-space) perturbation of the whole image.
* :func:`crossover_mask`: the seeded random region a crossover augmentation pastes.

Planning which augmentation each image gets, and running a plan in batches, is
:mod:`i2score.runs.augment`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from i2score.data.latents import Latents
from i2score.generator.network import StyleGAN2
from i2score.method.applications.common import EditResult, algorithm_meta, render, require_noise
from i2score.method.masks import free_hole, rect_hole

MASK_KINDS: tuple[str, ...] = ("rect", "free")
"""Crossover masks: :func:`~i2score.method.masks.rect_hole`, :func:`~i2score.method.masks.free_hole`."""


def crossover_mask(kind: str, mask_seed: int, resolution: int) -> Tensor:
    """A seeded crossover mask: ``float [1, 1, R, R]`` in {0, 1}, white = from the partner."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown crossover mask {kind!r}; allowed: {', '.join(MASK_KINDS)}")
    m = (rect_hole if kind == "rect" else free_hole)(int(mask_seed), resolution)
    return torch.from_numpy(m.astype(np.float32))[None, None]


def resample_noise(latents: Latents, seeds: Sequence[int], G: StyleGAN2) -> EditResult:
    """Each image's ``w`` with new noise maps drawn from ``seeds`` (one per image, so an image's
    noise does not depend on its batch-mates). Metrics: none per image (empty dicts)."""
    require_noise(G, "noise resampling")
    if len(seeds) != len(latents):
        raise ValueError(f"{len(seeds)} seeds for {len(latents)} images")
    src = latents.to(G.device)
    noise = G.random_noise(len(src), [int(s) for s in seeds])
    return EditResult(Latents(src.w, noise, algorithm_meta(G, "augment/noise")), render(G, src.w, noise),
                      [{} for _ in seeds])


def jitter_w(latents: Latents, sigmas: Sequence[float], seeds: Sequence[int], G: StyleGAN2) -> EditResult:
    """``w + σ·ε`` per image, ``ε ~ N(0, I)`` drawn on the CPU from the image's seed (the same ``ε``
    on every device); the noise maps are kept. Metrics: none per image (empty dicts)."""
    if not len(sigmas) == len(seeds) == len(latents):
        raise ValueError(f"{len(sigmas)} sigmas and {len(seeds)} seeds for {len(latents)} images")
    src = latents.to(G.device)
    eps = torch.cat([torch.randn(1, *src.w.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                     for s in seeds]).to(G.device)
    sigma = torch.tensor([float(v) for v in sigmas], device=G.device)[:, None, None]
    w = src.w + sigma * eps
    return EditResult(Latents(w, src.noise, algorithm_meta(G, "augment/jitter")), render(G, w, src.noise),
                      [{} for _ in seeds])
