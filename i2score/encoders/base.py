"""What every image encoder of i2score is: an image -> W+ network with its average latent.

An encoder predicts W+ offsets from an image; the code is ``latent_avg + offsets``. pSp and e4e
do it in one pass; ReStyle feeds the image together with the current reconstruction back in
and adds the new offsets to the current code, ``iterations`` times (so it needs the generator).

Images are ``[B, 3, R, R]`` in [-1, 1] (any ``R``: they are resized to the encoder's input size);
codes are ``[B, n_styles, w_dim]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2score.generator.network import StyleGAN2

#: pSp (``GradualStyleEncoder``), e4e (``Encoder4Editing``: ``w0`` plus per-layer offsets), and
#: ReStyle's iterative refinement over either.
Arch = Literal["psp", "e4e", "restyle-psp", "restyle-e4e"]
ARCHS: tuple[str, ...] = ("psp", "e4e", "restyle-psp", "restyle-e4e")
#: ``ir_se50``: the originals' IR-SE50 (ArcFace-style) backbone, 256 px input; ``small``: a
#: light convolutional backbone for small generators (the bundled demo model).
Backbone = Literal["ir_se50", "small"]
BACKBONES: tuple[str, ...] = ("ir_se50", "small")


@dataclass(frozen=True)
class EncoderConfig:
    """Enough to rebuild an encoder from its state dict.

    Attributes:
        arch: see :data:`ARCHS`.
        backbone: see :data:`BACKBONES`.
        n_styles: rows of the W+ code it predicts (the generator's ``num_ws``: 18 at 1024).
        w_dim: width of a W row (512 for the published generators).
        input_size: side of the square image the network reads (256 for the originals).
        iterations: ReStyle's default number of refinement passes (1 for pSp/e4e).
        width: channel scale of the ``small`` backbone (ignored by ``ir_se50``).
    """

    arch: Arch
    backbone: Backbone
    n_styles: int
    w_dim: int = 512
    input_size: int = 256
    iterations: int = 1
    width: int = 32

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.n_styles < 1 or self.w_dim < 1 or self.input_size < 16 or self.iterations < 1:
            raise ValueError(f"invalid encoder config {self}")
        if not self.arch.startswith("restyle") and self.iterations != 1:
            raise ValueError(f"{self.arch} runs one pass; iterations must be 1, got {self.iterations}")

    @property
    def restyle(self) -> bool:
        return self.arch.startswith("restyle")

    @property
    def in_channels(self) -> int:
        """3 (the image), or 6 for ReStyle (the image and the current reconstruction)."""
        return 6 if self.restyle else 3

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resize_to(images: Tensor, size: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, size, size]``; unchanged when already that size.

    Shrinking by an integer factor averages blocks (ReStyle shrinks its 1024 px renders to 256
    with ``AdaptiveAvgPool2d``, which is exactly that); any other size change is antialiased
    bilinear (pSp's input transform, a PIL bilinear resize)."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h % size == 0 and w % size == 0:
        return F.avg_pool2d(images, kernel_size=(h // size, w // size))
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class Encoder(nn.Module):
    """An image encoder: ``net`` (offsets) plus ``latent_avg`` (the code it starts from).

    Attributes:
        config: :class:`EncoderConfig`.
        net: ``[B, in_channels, S, S]`` in [-1, 1] -> offsets ``[B, n_styles, w_dim]``.
        latent_avg: ``[n_styles, w_dim]`` buffer.
        source, weights_sha256: where it was loaded from (set by the loaders).
    """

    latent_avg: Tensor

    def __init__(self, config: EncoderConfig, net: nn.Module, latent_avg: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.net = net
        avg = torch.zeros(config.n_styles, config.w_dim) if latent_avg is None else latent_avg
        if avg.ndim == 1:
            avg = avg[None].expand(config.n_styles, -1)
        if tuple(avg.shape) != (config.n_styles, config.w_dim):
            raise ValueError(f"latent_avg must be [{config.n_styles}, {config.w_dim}], got {list(avg.shape)}")
        self.register_buffer("latent_avg", avg.detach().float().clone())
        self.source = "unsaved"
        self.weights_sha256: str | None = None
        self.meta: dict[str, Any] = {}

    def offsets(self, x: Tensor) -> Tensor:
        """One pass of the network: ``[B, in_channels, S, S]`` -> ``[B, n_styles, w_dim]``."""
        return self.net(x)

    def encode(self, images: Tensor, G: StyleGAN2 | None = None, *, iterations: int | None = None,
               noise: list[Tensor] | None = None) -> Tensor:
        """W+ codes of ``images``.

        Args:
            images: ``[B, 3, R, R]`` in [-1, 1].
            G: the generator (needed by ReStyle, which renders its current code each pass).
            iterations: ReStyle passes (default ``config.iterations``).
            noise: noise maps for ReStyle's renders (default: G's seed-0 noise, the same for
                every image).

        Returns:
            ``[B, n_styles, w_dim]`` on the images' device.
        """
        cfg = self.config
        x = resize_to(images.float(), cfg.input_size)
        avg = self.latent_avg[None].to(x.device)
        if not cfg.restyle:
            return avg + self.offsets(x)
        if G is None:
            raise ValueError(f"{cfg.arch} refines its code with the generator: pass G")
        batch = x.shape[0]
        maps = noise if noise is not None else G.random_noise(batch, [0] * batch)
        code = avg.expand(batch, -1, -1)
        for _ in range(iterations or cfg.iterations):
            current = resize_to(G.synthesize(code, maps).float(), cfg.input_size)
            code = code + self.offsets(torch.cat([x, current], dim=1))
        return code
