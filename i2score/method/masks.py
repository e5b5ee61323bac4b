"""Mask conventions and mask arithmetic, in one place.

User-facing masks (manifests, CLI, application arguments) are white = the region the user
names: the hole to fill, the region to take from the other image, the region to restyle.
Internally every mask is a float tensor ``[B, 1, H, W]`` in [0, 1]. The mask arithmetic the
paper needs (blurs, enlarged bands) lives here; each application names the results in the terms
of its algorithm box (``M_blur``, ``1 − M``). Seeded random masks (rectangles and brush strokes)
serve inpainting benchmarks, the sample data and crossover augmentations.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from i2score.kernels import batch_invariant


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


# ----------------------------------------------------------------------------------------------
# Random masks (seeded): inpainting benchmarks, sample data and crossover augmentations


def rect_hole(seed: int, resolution: int) -> np.ndarray:
    """A rectangle covering 6-20 % of the image, inside the central 80 % (``bool [R, R]``)."""
    rng = np.random.default_rng([seed, 0x4EC7])
    area = rng.uniform(0.06, 0.20) * resolution**2
    aspect = rng.uniform(0.6, 1.6)
    h = int(round(min(math.sqrt(area * aspect), 0.6 * resolution)))
    w = int(round(min(area / max(h, 1), 0.6 * resolution)))
    lo, hi = int(0.1 * resolution), int(0.9 * resolution)
    y0 = int(rng.integers(lo, max(lo + 1, hi - h)))
    x0 = int(rng.integers(lo, max(lo + 1, hi - w)))
    m = np.zeros((resolution, resolution), dtype=bool)
    m[y0:y0 + h, x0:x0 + w] = True
    return m


def free_hole(seed: int, resolution: int) -> np.ndarray:
    """Free-form hole: 2-4 thick random brush strokes (``bool [R, R]``)."""
    rng = np.random.default_rng([seed, 0xF8EE])
    big = resolution * 4
    layer = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(2, 5))):
        x, y = rng.uniform(0.2, 0.8, 2) * big
        width = int(rng.uniform(0.05, 0.1) * big)
        for _ in range(int(rng.integers(3, 6))):
            angle = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(0.08, 0.2) * big
            nx = float(np.clip(x + length * math.cos(angle), 0.1 * big, 0.9 * big))
            ny = float(np.clip(y + length * math.sin(angle), 0.1 * big, 0.9 * big))
            d.line([(x, y), (nx, ny)], fill=255, width=width, joint="curve")
            d.ellipse([nx - width / 2, ny - width / 2, nx + width / 2, ny + width / 2], fill=255)
            x, y = nx, ny
    return np.asarray(layer.resize((resolution, resolution), Image.Resampling.BOX)) >= 128
