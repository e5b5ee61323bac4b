"""The ``small`` encoder backbone: pSp / e4e / ReStyle heads on a light conv net for small
generators (the bundled 64 px demo model), fast on a CPU.

Why not IR-SE50: at 64 px the originals' 256 px ArcFace-style backbone would be ~100x the
compute and ~100 MB of weights for images with a handful of procedural factors. This net keeps
the structure that matters from pSp (Richardson et al. 2021) and e4e (Tov et al. 2021):

* a strided conv backbone (four stride-2 stages from ``input_size`` down to ``input_size/16``)
  with a feature pyramid at three scales, ``/4``, ``/8``, ``/16`` of the input: the coarse
  scale (the smallest map) feeds the coarse style rows, the finer scales the finer rows
  (pSp's coarse / medium / fine split of the rows, scaled to ``n_styles``);
* per group of rows, a head ("map2style") that pools its pyramid level to a 4x4 map, flattens
  it (spatial layout matters for a face) and projects it to a hidden vector; each row then gets
  its own FiLM scale/shift of its group's hidden vector and a per-row bias before the group's
  output projection to ``w_dim``. Per-row full ``hidden -> w_dim`` layers would be most of
  the weights (``n_styles * hidden * w_dim``) for rows that mostly agree;
* ``e4e``: a ``w0`` head over all three groups gives one W code; the code is ``w0`` repeated
  plus per-row deltas (row 0 has none), and :meth:`SmallEncoderNet.codes_and_deltas` exposes
  the deltas so training can pull them to zero (e4e's delta regulariser, which keeps the code
  near W where edits work);
* ``psp``: every row from its own head, no shared ``w0``;
* ``restyle-*``: the same with 6 input channels (the image and the current reconstruction).

No normalisation layers: BatchNorm would make an image's code depend on its batch (and on
train/eval mode), which the rest of i2score avoids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2score.encoders.base import EncoderConfig

#: Channels of each group head's pooled 4x4 map (flattened: 16x this).
HEAD_CHANNELS = 32
#: Width of the per-group hidden vector the rows are read from.
HEAD_HIDDEN = 192
_SLOPE = 0.2


def style_groups(n_styles: int) -> list[int]:
    """Group of each W+ row: 0 coarse, 1 medium, 2 fine.

    pSp's split for 18 rows is coarse ``0..2``, medium ``3..6``, fine ``7..17``; scaled by the
    generator's depth it is coarse ``< n/6`` (at least 1 row), medium ``< 7n/18``.
    """
    coarse_end = max(1, round(n_styles * 3 / 18))
    medium_end = max(coarse_end + 1, round(n_styles * 7 / 18))
    return [0 if i < coarse_end else 1 if i < medium_end else 2 for i in range(n_styles)]


class DownStage(nn.Module):
    """Stride-2 3x3 conv, then (``residual``) a residual 3x3 conv at the new size."""

    def __init__(self, cin: int, cout: int, *, residual: bool = True) -> None:
        super().__init__()
        self.down = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.conv = nn.Conv2d(cout, cout, 3, padding=1) if residual else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.down(x), _SLOPE)
        if self.conv is not None:
            x = x + F.leaky_relu(self.conv(x), _SLOPE)
        return x


class GroupHead(nn.Module):
    """A pyramid level ``[B, C, s, s]`` -> hidden ``[B, HEAD_HIDDEN]``: stride-2 convs down to
    4x4 (a 1x1 channel reduction when already 4x4), flattened, one linear layer."""

    def __init__(self, cin: int, size: int) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        ch = cin
        while size > 4:
            convs.append(nn.Conv2d(ch, HEAD_CHANNELS, 3, stride=2, padding=1))
            ch, size = HEAD_CHANNELS, size // 2
        if not convs:
            convs.append(nn.Conv2d(ch, HEAD_CHANNELS, 1))
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Linear(HEAD_CHANNELS * 16, HEAD_HIDDEN)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), _SLOPE)
        return F.leaky_relu(self.fc(x.flatten(1)), _SLOPE)


class SmallEncoderNet(nn.Module):
    """``[B, in_channels, S, S]`` in [-1, 1] -> W+ offsets ``[B, n_styles, w_dim]`` (from the
    encoder's ``latent_avg``). ``S`` must be ``config.input_size`` (a multiple of 16, >= 64).

    ``last_deltas`` holds the e4e deltas of the latest forward (None for psp)."""

    row_group: Tensor

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        size, width = config.input_size, config.width
        if size % 16 or size < 64:
            raise ValueError(f"the small backbone reads a multiple of 16 >= 64 px, got input_size {size}")
        self.config = config
        self.e4e = config.arch.endswith("e4e")
        self.stem = nn.Conv2d(config.in_channels, width, 3, padding=1)
        # Feature maps at S/2 (w), S/4 (2w), S/8 (4w), S/16 (4w); the deepest stage has no
        # residual conv: at S/16 it would hold a third of the backbone's weights.
        self.stage1 = DownStage(width, width)
        self.stage2 = DownStage(width, 2 * width)
        self.stage3 = DownStage(2 * width, 4 * width)
        self.stage4 = DownStage(4 * width, 4 * width, residual=False)
        # Feature pyramid (pSp): coarse map upsampled and added into the finer ones.
        self.lateral4 = nn.Conv2d(4 * width, 2 * width, 1)
        self.heads = nn.ModuleList([GroupHead(4 * width, size // 16), GroupHead(4 * width, size // 8),
                                    GroupHead(2 * width, size // 4)])
        groups = style_groups(config.n_styles)
        self.register_buffer("row_group", torch.tensor(groups), persistent=False)
        n, hidden, w_dim = config.n_styles, HEAD_HIDDEN, config.w_dim
        self.row_scale = nn.Parameter(torch.zeros(n, hidden))
        self.row_shift = nn.Parameter(torch.zeros(n, hidden))
        self.row_bias = nn.Parameter(torch.zeros(n, w_dim))
        self.out_weight = nn.Parameter(torch.randn(3, w_dim, hidden) / hidden**0.5)
        if self.e4e:
            self.w0 = nn.Sequential(nn.Linear(3 * hidden, w_dim), nn.LeakyReLU(_SLOPE), nn.Linear(w_dim, w_dim))
            # Deltas start at zero: the first code is w0 repeated, the W code e4e begins from.
            with torch.no_grad():
                self.out_weight.mul_(0.01)
        self.last_deltas: Tensor | None = None

    def features(self, x: Tensor) -> list[Tensor]:
        """Group hiddens ``[coarse, medium, fine]``, each ``[B, HEAD_HIDDEN]``."""
        x = F.leaky_relu(self.stem(x), _SLOPE)
        c2 = self.stage1(x)
        c4 = self.stage2(c2)
        c8 = self.stage3(c4)
        c16 = self.stage4(c8)
        p16 = c16
        p8 = c8 + F.interpolate(p16, scale_factor=2.0, mode="nearest")
        p4 = c4 + self.lateral4(F.interpolate(p8, scale_factor=2.0, mode="nearest"))
        return [head(p) for head, p in zip(self.heads, (p16, p8, p4), strict=True)]

    def rows(self, hiddens: list[Tensor]) -> Tensor:
        """Per-row outputs ``[B, n_styles, w_dim]`` from the group hiddens."""
        h = torch.stack(hiddens, dim=1)[:, self.row_group]  # [B, n, hidden]
        h = F.leaky_relu(h * (1 + self.row_scale) + self.row_shift, _SLOPE)
        return torch.einsum("bnh,nwh->bnw", h, self.out_weight[self.row_group]) + self.row_bias

    def codes_and_deltas(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Offsets ``[B, n_styles, w_dim]`` and, for e4e, the per-row deltas from ``w0``
        (``[B, n_styles, w_dim]``, row 0 all zero), else None."""
        hiddens = self.features(x)
        rows = self.rows(hiddens)
        if not self.e4e:
            return rows, None
        w0 = self.w0(torch.cat(hiddens, dim=1))
        deltas = torch.cat([torch.zeros_like(rows[:, :1]), rows[:, 1:]], dim=1)
        return w0[:, None] + deltas, deltas

    def forward(self, x: Tensor) -> Tensor:
        codes, self.last_deltas = self.codes_and_deltas(x)
        return codes


def build_small_net(config: EncoderConfig) -> nn.Module:
    """The ``small`` backbone's network for ``config`` (any of the four archs; random init)."""
    return SmallEncoderNet(config)
