"""The IR-SE50 encoders of pSp, e4e and ReStyle, in plain PyTorch.

The backbone is the ArcFace "IR-SE" ResNet-50 (TreB1eN/InsightFace_Pytorch): a 3x3 input layer and
24 residual units in four stages of 3, 4, 14 and 3 units (64, 128, 256, 512 channels, each stage
halving the resolution), every unit ``BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN -> SE``
plus a shortcut. On top of it:

* pSp (``GradualStyleEncoder``): a feature pyramid (the last stage ``c3`` at S/16, plus
  ``p2 = up(c3) + lat1(c2)`` at S/8 and ``p1 = up(p2) + lat2(c1)`` at S/4) and one head per style:
  styles 0-2 read ``c3``, 3-6 read ``p2``, 7+ read ``p1``. A head is stride-2 3x3 convs with
  LeakyReLU down to 1x1, then an equalised linear layer.
* e4e (``Encoder4Editing``): the same modules; head 0 gives ``w0`` for every style and heads
  1..n-1 add their deltas (the network after the last progressive stage, as used at inference).
* ReStyle-pSp (``BackboneEncoder``) and ReStyle-e4e (``ProgressiveBackboneEncoder``): no pyramid,
  every head reads ``c3``; 6 input channels (the image and the current reconstruction). These
  are the classes the ReStyle README names for FFHQ (``--encoder_type=BackboneEncoder`` for pSp,
  ``ProgressiveBackboneEncoder`` for e4e).

References (read, not copied): eladrich/pixel2style2pixel ``models/encoders/helpers.py`` and
``models/encoders/psp_encoders.py``; omertov/encoder4editing ``models/encoders/psp_encoders.py``;
yuval-alaluf/restyle-encoder ``models/encoders/restyle_psp_encoders.py``,
``restyle_e4e_encoders.py`` and ``map2style.py``.

Parameter names are those of the reference modules (attribute names and ``nn.Sequential``
indices are kept on purpose), so the ``encoder.*`` entries of an official checkpoint load with
the prefix stripped and no renaming; :func:`reference_state_shapes` lists them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2score.encoders.base import EncoderConfig

__all__ = [
    "IR_SE50_STAGES",
    "BackboneStyleNet",
    "IRSE50Backbone",
    "IRSEUnit",
    "PyramidStyleNet",
    "ScaledLinear",
    "SqueezeExcite",
    "StyleHead",
    "build_ir_se50_net",
    "reference_state_shapes",
]

#: (channels, units) of the four stages; the first unit of each stage has stride 2.
IR_SE50_STAGES: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 14), (512, 3))
#: Styles below ``COARSE`` read ``c3``, below ``MIDDLE`` read ``p2``, the rest ``p1`` (pSp/e4e).
COARSE, MIDDLE = 3, 7


class SqueezeExcite(nn.Module):
    """Channel gating: ``x * sigmoid(fc2(relu(fc1(mean(x)))))``; ``[B, C, H, W]`` -> same."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class Subsample(nn.Module):
    """Keeps every ``stride``-th pixel: the identity shortcut of a strided unit (the reference
    writes it as ``MaxPool2d(1, stride)``, which is the same thing)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class IRSEUnit(nn.Module):
    """One IR-SE residual unit: ``[B, in_ch, H, W]`` -> ``[B, depth, ceil(H/stride), ceil(W/stride)]``.

    ``res_layer`` is BN, conv3x3, PReLU, conv3x3 (carrying the stride), BN, SE; ``shortcut_layer``
    a strided 1x1 conv + BN when the width changes, else plain subsampling.
    """

    def __init__(self, in_ch: int, depth: int, stride: int) -> None:
        super().__init__()
        self.shortcut_layer: nn.Module
        if in_ch == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SqueezeExcite(depth),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class ScaledLinear(nn.Module):
    """Equalised-learning-rate linear layer (StyleGAN2's ``EqualLinear`` with ``lr_mul=1`` and no
    activation): the stored weight is multiplied by ``1/sqrt(in_dim)`` at run time.
    ``[B, in_dim]`` -> ``[B, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class StyleHead(nn.Module):
    """pSp's map-to-style block: ``log2(spatial)`` stride-2 3x3 convs with LeakyReLU(0.01) take a
    ``[B, in_ch, spatial, spatial]`` map to ``[B, width, 1, 1]``, then a :class:`ScaledLinear`
    gives one style row ``[B, width]``."""

    def __init__(self, in_ch: int, width: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_ch if i == 0 else width, width, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = ScaledLinear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).flatten(1))


class IRSE50Backbone(nn.Module):
    """The IR-SE50 trunk: ``[B, in_ch, S, S]`` -> its stage outputs (see :meth:`stages`).

    Subclasses add their heads as siblings of ``input_layer`` and ``body`` so that the state
    dict keeps the reference's flat names (``input_layer.0.weight``, ``body.23.res_layer.5.fc2.weight``).
    """

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(in_ch, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units: list[nn.Module] = []
        ends: list[int] = []
        width = 64
        for depth, count in IR_SE50_STAGES:
            for i in range(count):
                units.append(IRSEUnit(width, depth, 2 if i == 0 else 1))
                width = depth
            ends.append(len(units) - 1)
        self.body = nn.Sequential(*units)
        self._stage_ends = tuple(ends)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c1, c2, c3)``: the outputs of stages 2, 3 and 4, ``[B, 128, S/4, S/4]``,
        ``[B, 256, S/8, S/8]`` and ``[B, 512, S/16, S/16]``."""
        x = self.input_layer(x)
        kept: list[Tensor] = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._stage_ends[1:]:
                kept.append(x)
        c1, c2, c3 = kept
        return c1, c2, c3


def _upsample_add(top: Tensor, lateral: Tensor) -> Tensor:
    # Bilinear with align_corners=True, as the reference FPN does (it also copes with odd sizes).
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


def _shared_base(rows: Tensor) -> Tensor:
    # e4e: row 0 is w0 itself, every later row is w0 plus its own delta.
    return torch.cat([rows[:, :1], rows[:, 1:] + rows[:, :1]], dim=1)


class PyramidStyleNet(IRSE50Backbone):
    """pSp's ``GradualStyleEncoder`` (``progressive=False``) or e4e's ``Encoder4Editing``
    (``progressive=True``): ``[B, in_ch, S, S]`` -> ``[B, n_styles, width]``.

    Head ``i`` reads ``c3`` (S/16) for ``i < 3``, ``p2`` (S/8) for ``i < 7``, else ``p1`` (S/4).
    """

    def __init__(self, n_styles: int, *, in_ch: int = 3, input_size: int = 256, width: int = 512,
                 progressive: bool = False) -> None:
        super().__init__(in_ch)
        self.progressive = progressive
        self.levels = tuple(0 if i < COARSE else 1 if i < MIDDLE else 2 for i in range(n_styles))
        sides = (input_size // 16, input_size // 8, input_size // 4)
        self.styles = nn.ModuleList(StyleHead(512, width, sides[level]) for level in self.levels)
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def forward(self, x: Tensor) -> Tensor:
        c1, c2, c3 = self.stages(x)
        maps = [c3]
        if max(self.levels) >= 1:
            maps.append(_upsample_add(c3, self.latlayer1(c2)))
        if max(self.levels) >= 2:
            maps.append(_upsample_add(maps[1], self.latlayer2(c1)))
        rows = torch.stack([head(maps[level]) for head, level in zip(self.styles, self.levels, strict=True)], dim=1)
        return _shared_base(rows) if self.progressive else rows


class BackboneStyleNet(IRSE50Backbone):
    """ReStyle's ``BackboneEncoder`` (``progressive=False``) or ``ProgressiveBackboneEncoder``
    (``progressive=True``): every head reads ``c3``. ``[B, in_ch, S, S]`` -> ``[B, n_styles, width]``."""

    def __init__(self, n_styles: int, *, in_ch: int = 6, input_size: int = 256, width: int = 512,
                 progressive: bool = False) -> None:
        super().__init__(in_ch)
        self.progressive = progressive
        self.styles = nn.ModuleList(StyleHead(512, width, input_size // 16) for _ in range(n_styles))

    def forward(self, x: Tensor) -> Tensor:
        c3 = self.stages(x)[2]
        rows = torch.stack([head(c3) for head in self.styles], dim=1)
        return _shared_base(rows) if self.progressive else rows


def build_ir_se50_net(config: EncoderConfig) -> nn.Module:
    """The offsets network of an ``ir_se50`` config: ``[B, in_channels, S, S]`` -> ``[B, n_styles, w_dim]``.

    ``input_size`` must be a power of two >= 32 (the heads shrink S/16 to 1x1 with stride-2 convs).
    """
    if config.backbone != "ir_se50":
        raise ValueError(f"not an ir_se50 config: {config}")
    size = config.input_size
    if size < 32 or size & (size - 1):
        raise ValueError(f"ir_se50 needs a power-of-two input_size >= 32, got {size}")
    progressive = config.arch in ("e4e", "restyle-e4e")
    net_cls = BackboneStyleNet if config.restyle else PyramidStyleNet
    return net_cls(config.n_styles, in_ch=config.in_channels, input_size=size, width=config.w_dim,
                   progressive=progressive)


def reference_state_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every state-dict entry of ``config``'s net, in order (the keys an
    official checkpoint holds under ``encoder.``)."""
    with torch.device("meta"):
        net = build_ir_se50_net(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}
