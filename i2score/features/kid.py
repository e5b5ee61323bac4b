"""Kernel Inception Distance on ImageNet VGG16 features: how far a set of images is from a
reference set of real ones (Bińkowski et al., "Demystifying MMD GANs", 2018).

    KID = MMD²_u(f(X), f(Y)),   k(a, b) = (aᵀb / d + 1)³

``f`` here is :class:`KIDFeatures`: the spatial mean of VGG16's ``conv5_3`` and ``conv4_3``
activations (post-ReLU), 1,024 numbers per image, at the images' own resolution. It is *not*
the standard Inception-v3 (``pt_inception-2015-12-05``) of published KIDs: those weights cannot
be fetched on this project's machines, so numbers are comparable with each other, never with a
paper's (:data:`KID_NOTE` says so wherever a number is written).

The estimator is the unbiased MMD² over the full sets, with unequal sizes allowed
(:func:`kid`): torchmetrics' ``KernelInceptionDistance`` (which takes a custom ``feature``
module, and :class:`KIDFeatures` fits it) averages equal-sized random subsets drawn from
PyTorch's global random stream, which makes a number depend on the process's RNG state and,
with the 8-32 images an edit benchmark has, throws most of the reference set away. With equal
sizes and one subset of everything the two agree (``tests/unit/test_kid.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from i2score.features.vgg16 import VGG16Features, perceptual_preprocess

__all__ = ["KID_FEATURE_LAYERS", "KID_NOTE", "KIDFeatures", "KIDResult", "kid", "kid_images", "poly_mmd2"]

KID_FEATURE_LAYERS: tuple[str, ...] = ("conv4_3", "conv5_3")
"""VGG16 taps whose spatial means make a KID feature vector (512 + 512)."""

KID_NOTE = ("KID on ImageNet VGG16 features (spatial means of conv4_3 and conv5_3, images at their own "
            "resolution), not on the standard Inception-v3 weights, which cannot be fetched here: "
            "compare these numbers with each other, not with published KIDs.")


class KIDFeatures(nn.Module):
    """Images ``[B, 3, R, R]`` in [-1, 1] -> feature vectors ``[B, 1024]`` (float32, >= 0).

    A frozen wrapper of :class:`~i2score.features.vgg16.VGG16Features` (see
    :data:`KID_FEATURE_LAYERS`); usable as torchmetrics' ``KernelInceptionDistance(feature=...)``
    with images in [-1, 1]. Runs in chunks of ``batch`` images under ``no_grad``.
    """

    def __init__(self, vgg: VGG16Features, *, batch: int = 32) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.vgg = vgg
        self.batch = batch

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, R, R] in [-1, 1], got shape {tuple(images.shape)}")
        device = next(self.vgg.parameters()).device
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch):
                x = perceptual_preprocess(images[start:start + self.batch].to(device).float().clamp(-1, 1))
                taps = self.vgg(x, KID_FEATURE_LAYERS)
                out.append(torch.cat([t.mean(dim=(2, 3)) for t in taps], dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 512 * len(KID_FEATURE_LAYERS))


def poly_mmd2(x: Tensor, y: Tensor, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """Unbiased MMD² between feature sets ``x [m, d]`` and ``y [n, d]`` (m, n >= 2) under the
    polynomial kernel ``(gamma·aᵀb + coef)^degree`` (``gamma`` default ``1/d``), in float64.

    ``Σ_{i≠j} k(x_i, x_j)/(m(m-1)) + Σ_{i≠j} k(y_i, y_j)/(n(n-1)) − 2 Σ k(x_i, y_j)/(mn)``: zero
    in expectation when both sets come from one distribution, so small negative values occur.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected feature sets [m, d] and [n, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    x, y = x.double(), y.double()
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (x @ x.T * g + coef) ** degree
    kyy = (y @ y.T * g + coef) ** degree
    kxy = (x @ y.T * g + coef) ** degree
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) - 2 * kxy.sum() / (m * n))


@dataclass(frozen=True)
class KIDResult:
    """A KID and its spread.

    Attributes:
        kid: :func:`poly_mmd2` of the full sets.
        std: standard deviation of the same estimate over ``subsets`` seeded random halves of
            both sets (a rough error bar; 0 when a set has fewer than 4 images).
        n, n_ref: sizes of the measured and the reference set.
    """

    kid: float
    std: float
    n: int
    n_ref: int


def kid(features: Tensor, reference: Tensor, *, subsets: int = 50, seed: int = 0) -> KIDResult:
    """KID of ``features [n, d]`` against ``reference [m, d]`` (:func:`poly_mmd2`, full sets),
    with the spread over ``subsets`` seeded halves (a private ``torch.Generator``: the same
    result in every process)."""
    value = poly_mmd2(features, reference)
    n, m = features.shape[0], reference.shape[0]
    std = 0.0
    if min(n, m) >= 4 and subsets > 1:
        gen = torch.Generator().manual_seed(seed)
        draws = [poly_mmd2(features[torch.randperm(n, generator=gen)[: n // 2]],
                           reference[torch.randperm(m, generator=gen)[: m // 2]]) for _ in range(subsets)]
        mean = sum(draws) / len(draws)
        # Halves have twice the variance of the full sets' estimate (variance ~ 1/size).
        std = math.sqrt(sum((d - mean) ** 2 for d in draws) / (len(draws) - 1) / 2)
    return KIDResult(value, std, n, m)


def kid_images(images: Tensor, reference: Tensor, extractor: KIDFeatures, *, subsets: int = 50,
               seed: int = 0) -> KIDResult:
    """:func:`kid` of two image sets ``[n, 3, R, R]`` and ``[m, 3, R, R]`` in [-1, 1]."""
    return kid(extractor(images), extractor(reference), subsets=subsets, seed=seed)
