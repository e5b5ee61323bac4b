"""Mask conventions and mask arithmetic, in one place.

User-facing masks (manifests, CLI, application arguments) are white = the region the user
names: the hole to fill, the region to take from the other image, the region to restyle.
Internally every mask is a float tensor ``[B, 1, H, W]`` in [0, 1]. The paper's masks are
derived here (``known = 1 - hole``, enlarged and blurred bands), never inline in an application.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from i2score.generator.ops import batch_invariant


def as_mask(mask: Tensor, batch: int | None = None, resolution: int | None = None) -> Tensor:
    """Normalise a mask to float ``[B, 1, H, W]`` in [0, 1].

    Accepts ``[H, W]``, ``[1, H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` (bool, int or float).
    A batch-1 mask is broadcast to ``batch``; a size other than ``resolution`` is an error
    (resizing is the data plane's job).
    """
    m = mask.float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"mask must be [B, 1, H, W] (or [H, W], [B, H, W]), got {list(mask.shape)}")
    if resolution is not None and tuple(m.shape[2:]) != (resolution, resolution):
        raise ValueError(f"mask is {m.shape[3]}x{m.shape[2]}, the generator needs {resolution}x{resolution}")
    if batch is not None and m.shape[0] != batch:
        if m.shape[0] != 1:
            raise ValueError(f"{m.shape[0]} masks for a batch of {batch}")
        m = m.expand(batch, -1, -1, -1)
    if float(m.min()) < 0 or float(m.max()) > 1:
        raise ValueError("mask values must lie in [0, 1]")
    return m.contiguous()


def gaussian_blur(mask: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, 1, H, W]`` (reflect padding); ``sigma`` in pixels, 0 = none."""
    if sigma <= 0:
        return mask
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, mask.shape[-1] - 1, mask.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(mask.dtype)
    # Batch-invariant kernels: a mask blurred alone or in a batch rounds identically, so an
    # edit's result does not depend on the batch it ran in.
    with batch_invariant(mask.device):
        x = F.pad(mask, (radius, radius, radius, radius), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        return F.conv2d(x, k.view(1, 1, -1, 1))


def dilate(mask: Tensor, pixels: int) -> Tensor:
    """Grow the white region of ``[B, 1, H, W]`` by ``pixels`` (square structuring element)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels)


def enlarged_soft_mask(mask: Tensor, grow: int, sigma: float) -> Tensor:
    """``Mblur+`` of the paper: the region grown by ``grow`` pixels, then blurred by ``sigma``,
    and never smaller than the region itself (so its inside is exactly 1)."""
    return torch.maximum(gaussian_blur(dilate(mask, grow), sigma), mask).clamp(0, 1)
