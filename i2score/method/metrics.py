"""Per-image image-quality metrics: PSNR, SSIM (torchmetrics) and LPIPS."""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(image: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR in dB per image.

    Args:
        image, target: ``[B, 3, H, W]`` in [-1, 1] (peak-to-peak 2, so this equals the PSNR
            of the same images mapped to [0, 1] or [0, 255]).
        mask: optional ``[B, 1, H, W]`` in [0, 1]: the mean runs over the masked pixels only.

    Returns:
        ``[B]`` float32 on the input device.
    """
    diff = (image.float() - target.float()).square()
    if mask is None:
        mse = diff.flatten(1).mean(dim=1)
    else:
        m = mask.float().expand_as(diff)
        mse = (diff * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp_min(1e-8)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def ssim(image: Tensor, target: Tensor) -> Tensor:
    """SSIM per image (Gaussian window 11, σ 1.5, torchmetrics) for ``[B, 3, H, W]`` in [-1, 1].
    Returns ``[B]``. Borders are reflected and count like any pixel (scikit-image's
    ``structural_similarity`` leaves a 5-pixel border out instead: on 64 px images the two differ
    by up to about 0.01; ``tests/unit/test_metrics.py``)."""
    a = ((image.float().clamp(-1, 1) + 1) / 2).cpu()
    b = ((target.float().clamp(-1, 1) + 1) / 2).cpu()
    kernel = 11 if min(a.shape[-2:]) >= 11 else (min(a.shape[-2:]) // 2) * 2 - 1
    # Imported here: torchmetrics pulls in scipy and matplotlib (about 1 s), which the checks
    # before a run and the commands that never measure should not wait for.
    from torchmetrics.functional.image import structural_similarity_index_measure

    out = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none", kernel_size=kernel)
    assert isinstance(out, Tensor)
    return out.reshape(-1)
