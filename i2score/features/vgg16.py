"""VGG16 features for the perceptual and style losses.

Image conventions used throughout this module:

* images are float tensors ``[B, 3, H, W]`` in RGB order with values in ``[-1, 1]``;
* VGG16 expects ImageNet-normalised input (see :func:`perceptual_preprocess`).

Where the weights come from: :mod:`i2score.features.weights`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2score.features.weights import (
    ENV_VAR,
    VGG16_CONVS,
    check_torchvision_layout,
    resolve_lpips_linear_weights,
    resolve_vgg16_state_dict,
)
from i2score.kernels import batch_invariant

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PERCEPTUAL_MAX_SIZE",
    "VGG16Features",
    "VGG16_LAYERS",
    "clear_vgg16_cache",
    "load_vgg16",
    "perceptual_preprocess",
]

_VGG16_POOLS = (4, 9, 16, 23)  # the 5th pool (index 30) follows conv5_3 and is never tapped

VGG16_LAYERS: tuple[str, ...] = tuple(name for name, _, _, _ in VGG16_CONVS)
"""Tap names accepted by :meth:`VGG16Features.forward`, shallow to deep (post-ReLU)."""

_TAP_INDEX: dict[str, int] = {name: idx + 1 for name, idx, _, _ in VGG16_CONVS}

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

PERCEPTUAL_MAX_SIZE = 256
"""Images larger than this (either side) are area-downsampled to this square before VGG."""


# --------------------------------------------------------------------------------------------
# The network


def _build_features() -> nn.Sequential:
    # Same indices as torchvision's `vgg16().features` up to relu5_3, so its state dict keys
    # load unchanged; the final pool is left out because nothing taps after it.
    layers: list[nn.Module] = []
    convs = {idx: (cin, cout) for _, idx, cin, cout in VGG16_CONVS}
    for i in range(_TAP_INDEX["conv5_3"] + 1):
        if i in convs:
            layers.append(nn.Conv2d(*convs[i], kernel_size=3, padding=1))
        elif i in _VGG16_POOLS:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.ReLU(inplace=False))  # taps are ReLU outputs: must not be mutated
    return nn.Sequential(*layers)


class VGG16Features(nn.Module):
    """The 13 convolutions of ImageNet VGG16 (with ReLUs and 2x2 max-pools), frozen.

    Build it from a torchvision-layout state dict (see :func:`resolve_vgg16_state_dict`), or
    use :func:`load_vgg16`.  Parameters have ``requires_grad=False`` and the module is in eval
    mode; gradients still flow to the *input*, which is what a perceptual loss needs.

    Attributes:
        origin: where the weights came from (human-readable), or ``"state dict"``.
    """

    def __init__(self, state_dict: Mapping[str, Tensor], *, origin: str = "state dict") -> None:
        super().__init__()
        checked = check_torchvision_layout(state_dict, origin)
        # Build on the meta device and adopt the given tensors: no wasted random init, and the
        # module can never end up with random weights.
        with torch.device("meta"):
            self.features: nn.Sequential = _build_features()
        self.load_state_dict(checked, strict=True, assign=True)
        self.requires_grad_(False)
        self.eval()
        self.origin = origin

    def forward(self, x: Tensor, layers: Sequence[str]) -> list[Tensor]:
        """Post-ReLU activations at the requested taps.

        Args:
            x: ImageNet-normalised images ``[B, 3, H, W]`` (see :func:`perceptual_preprocess`).
            layers: tap names from :data:`VGG16_LAYERS`, in any order (repeats allowed).

        Returns:
            One tensor per requested name, in the order requested; ``conv{k}_*`` has shape
            ``[B, C_k, H / 2**(k-1), W / 2**(k-1)]`` (floor division at each pool),
            ``C = 64, 128, 256, 512, 512``, values ``>= 0``.  Only the layers up to the deepest
            requested tap are computed.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        if isinstance(layers, str):  # a bare name would otherwise be iterated letter by letter
            raise TypeError(f"layers must be a sequence of names, e.g. [{layers!r}]")
        unknown = [name for name in layers if name not in _TAP_INDEX]
        if unknown:
            raise ValueError(f"unknown VGG16 layer(s) {unknown}; choose from {VGG16_LAYERS}")
        if not layers:
            return []
        wanted = {_TAP_INDEX[name] for name in layers}
        found: dict[int, Tensor] = {}
        h = x
        deepest = max(wanted)
        # Batch-invariant CPU convolutions: an image's loss must not depend on its batch.
        with batch_invariant(x.device):
            for i, module in enumerate(self.features):
                if i > deepest:
                    break
                h = module(h)
                if i in wanted:
                    found[i] = h
        return [found[_TAP_INDEX[name]] for name in layers]


@functools.lru_cache(maxsize=4)
def _cached_state_dict(
    source: str | None, env_value: str, hub_dir: str, allow_download: bool
) -> tuple[dict[str, Tensor], str]:
    # env_value and hub_dir are part of the key only so that changing them is not answered
    # from a stale cache entry; resolution reads them itself.
    return resolve_vgg16_state_dict(source, allow_download=allow_download)


def clear_vgg16_cache() -> None:
    """Forget the weights cached by :func:`load_vgg16` / :func:`load_lpips` in this process."""
    _cached_state_dict.cache_clear()
    resolve_lpips_linear_weights.cache_clear()


def load_vgg16(
    source: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    allow_download: bool = True,
) -> VGG16Features:
    """Frozen VGG16 feature extractor with ImageNet weights, on ``device`` (default CPU).

    Weights are found by :func:`resolve_vgg16_state_dict` (same ``source`` / ``allow_download``)
    and cached per process, so repeated calls are cheap.  Each call returns a new module that
    shares the cached CPU tensors; moving it to another device does not affect the cache.

    Raises:
        VGGWeightsNotFoundError, VGGWeightsInvalidError: see :func:`resolve_vgg16_state_dict`.
    """
    key_source = None if source is None else os.fspath(source)
    state_dict, origin = _cached_state_dict(
        key_source, os.environ.get(ENV_VAR, "").strip(), torch.hub.get_dir(), allow_download
    )
    module = VGG16Features(state_dict, origin=origin)
    return module.to(device) if device is not None else module


def perceptual_preprocess(images: Tensor, *, max_size: int = PERCEPTUAL_MAX_SIZE) -> Tensor:
    """Prepare generator-range images for :class:`VGG16Features`.

    Args:
        images: ``[B, 3, H, W]`` RGB in ``[-1, 1]``.
        max_size: if ``H`` or ``W`` exceeds it, the images are area-averaged to
            ``[max_size, max_size]`` first (as reference StyleGAN projectors do: VGG was trained
            at 224 px, and full-resolution features would cost much more for little gain).

    Returns:
        ``[B, 3, H', W']`` ImageNet-normalised: ``((x + 1) / 2 - mean) / std`` per channel, so
        roughly ``[-2.1, 2.6]``; differentiable with respect to ``images``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[-2] > max_size or images.shape[-1] > max_size:
        images = F.interpolate(images, size=(max_size, max_size), mode="area")
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images + 1) * 0.5 - mean) / std
