"""The terms of Image2StyleGAN++ Eq. 1, masked and reduced per image.

Conventions:

* Images are ``[B, 3, H, W]`` in [-1, 1]; masks are ``[B, 1, H, W]`` in [0, 1] (1 = the pixel
  takes part in the term). A ``None`` mask means all ones.
* Every term returns a ``[B]`` tensor: image ``b``'s loss depends on image ``b`` only, so the
  optimisers sum over the batch without coupling images (a batched Gram matrix that mixes
  images is a known bug of one reimplementation; ours is per image).
* Scale: pixel MSE is the mean over the ``N = 3HW`` pixel values; the perceptual term is the
  sum over VGG16 conv1_1, conv1_2, conv2_2 and conv3_3 of the mean squared feature difference
  (images masked before VGG and features masked after it). The default λ's that balance the
  two are in :mod:`i2score.method.objective`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PERCEPTUAL_LAYERS: tuple[str, ...] = ("conv1_1", "conv1_2", "conv2_2", "conv3_3")
STYLE_LAYER = "conv3_3"


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Area-resample a ``[B, 1, H, W]`` mask to ``size`` (soft values stay in [0, 1])."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="area")


def masked_mse(image: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``||M ⊙ (image − target)||² / N`` per image.

    Args:
        image, target: ``[B, 3, H, W]`` in [-1, 1] (``target`` may have batch 1: broadcast).
        mask: ``[B, 1, H, W]`` in [0, 1] or None (all ones).

    Returns:
        ``[B]``; ``N = 3·H·W`` regardless of the mask, as in Eq. 1.
    """
    diff = image - target
    if mask is not None:
        diff = diff * mask
    return diff.square().flatten(1).mean(dim=1)


def masked_feature_mse(feats: Sequence[Tensor], target_feats: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """Perceptual term: sum over layers of the masked mean squared feature difference.

    Args:
        feats, target_feats: per-layer VGG activations ``[B, C_l, h_l, w_l]``.
        mask: ``[B, 1, H, W]`` in [0, 1] at image resolution, area-downsampled per layer.

    Returns:
        ``[B]``.
    """
    total: Tensor | None = None
    for f, t in zip(feats, target_feats, strict=True):
        diff = f - t
        if mask is not None:
            diff = diff * resize_mask(mask, (f.shape[-2], f.shape[-1])).to(diff.dtype)
        term = diff.square().flatten(1).mean(dim=1)
        total = term if total is None else total + term
    assert total is not None
    return total


def masked_gram(feats: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-image Gram matrix of ``[B, C, h, w]`` features over the masked region.

    ``G_b = Σ_p m_p f_p f_pᵀ / Σ_p m_p`` (``[B, C, C]``): normalising by the region's area
    keeps a small region's statistics on the same scale as the whole image's.
    """
    b, c, h, w = feats.shape
    f = feats.flatten(2).float()
    if mask is None:
        weight = torch.ones(b, 1, h * w, device=feats.device)
    else:
        weight = resize_mask(mask, (h, w)).flatten(2).float()
    gram = torch.einsum("bcp,bdp->bcd", f * weight, f)
    return gram / weight.sum(dim=2, keepdim=True).clamp_min(1e-8)


def gram_style_loss(feats: Tensor, target_gram: Tensor, mask: Tensor | None = None) -> Tensor:
    """Masked Gram (Gatys) style loss at one layer: mean squared Gram difference per image.

    Args:
        feats: ``[B, C, h, w]`` activations of the generated images (conv3_3).
        target_gram: ``[B, C, C]`` (or ``[1, C, C]``) Gram of the style image(s).
        mask: ``[B, 1, H, W]`` region whose statistics should match the style.

    Returns:
        ``[B]``.
    """
    gram = masked_gram(feats, mask)
    return (gram - target_gram).square().flatten(1).mean(dim=1)
