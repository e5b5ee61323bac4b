"""StyleGAN (v1, Karras et al. 2019, the generator of the paper's own experiments) in plain PyTorch.

The numerics follow NVIDIA's ``training/networks_stylegan.py`` (NVlabs/stylegan), which is what
the official TF pickles hold:

* mapping: pixel norm of ``z`` (eps 1e-8), 8 dense layers with lr multiplier 0.01 and leaky ReLU;
* truncation (only when asked): ``w_avg + psi * (w - w_avg)`` on the first ``cutoff`` rows of W+
  (NVIDIA's ``G_style`` defaults: psi 0.7, cutoff 8); embedding never truncates;
* synthesis: a learned 4x4 constant, then **per layer** (two per resolution, 18 at 1024): the
  convolution (layer 0 has none: it starts from the constant), a blur after up-sampling
  (``[1, 2, 1]``), noise with a per-channel strength, bias, leaky ReLU, instance norm
  (eps 1e-8) and AdaIN with that layer's own row of ``w``: ``x * (1 + s) + b``;
* the up-sampling conv is nearest-neighbour up-sampling + 3x3 conv below 128 px and NVIDIA's
  fused transposed conv (the 3x3 kernel zero-padded and summed over its four 2x2 shifts, not
  divided by 4) from 128 px up (``fused_scale='auto'``);
* a single ToRGB (1x1 conv + bias) after the last layer: inference never grows progressively.

How it fits i2score's generator interface: :class:`StyleGAN1` is a :class:`StyleGAN2` subclass,
so every consumer typed for ``StyleGAN2`` (the method's blocks, the applications, the runs)
takes it unchanged. Its ``w`` is ``[B, L, w_dim]`` with ``L = 2*log2(R) - 2`` as for StyleGAN2,
but it has ``L`` noise maps (not ``L - 1``): layer ``i`` (``"conv{i}"``; ``conv0`` is the
constant's layer) uses ``w[:, i]`` and ``noise[i]`` of ``[B, 1, r, r]`` with
``r = 4 * 2**(i // 2)``. ``G.noise_shapes``, ``G.num_ws`` and ``G.layer_names`` say so, and the
code that sizes noise reads them. The state after layer ``i`` carries ``rgb=None`` except after
the last layer (there is no skip image to carry).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2score.generator.network import GeneratorConfig, MappingNetwork, StyleGAN2, SynthesisNetwork, SynthesisState
from i2score.generator.ops import LRELU_SLOPE, EqualLinear, make_fir_filter, upfirdn2d

__all__ = ["StyleGAN1", "StyleGAN1Config", "StyleGAN1Layer", "StyleGAN1Synthesis"]

FAMILY = "stylegan1"

# He-init gain of NVIDIA's conv and dense weights (get_weight(gain=sqrt(2))); styles and ToRGB use 1.
_CONV_GAIN = math.sqrt(2.0)


@dataclass(frozen=True)
class StyleGAN1Config(GeneratorConfig):
    """StyleGAN v1 architecture. Field names follow :class:`GeneratorConfig`; the v1 extras use
    NVIDIA's ``G_synthesis`` names and defaults.

    Attributes:
        channel_max: NVIDIA's ``fmap_max`` (512).
        fmap_base: NVIDIA's ``fmap_base`` (8192): ``channels(r) = min(fmap_base / 2**(log2 r - 1),
            fmap_max)``, i.e. 512 up to 32 px, then 256, 128, 64, 32, 16 at 1024.
        fused_scale: fused up-sampling conv: None = NVIDIA's ``'auto'`` (from 128 px up).
        blur_filter: taps of the separable blur after up-sampling (normalised), None = no blur.
        normalize_latents: pixel norm of ``z`` before the mapping (NVIDIA: True).

    ``channel_multiplier`` is set to ``fmap_base / 8192`` (the StyleGAN2 convention for the same
    widths) and ``conv_clamp`` must be None: v1 never clamps.
    """

    fmap_base: int = 8192
    fused_scale: bool | None = None
    blur_filter: tuple[float, ...] | None = (1.0, 2.0, 1.0)
    normalize_latents: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fmap_base < 1:
            raise ValueError(f"fmap_base must be >= 1, got {self.fmap_base}")
        if self.conv_clamp is not None:
            raise ValueError("StyleGAN v1 has no conv_clamp")
        if self.channels(self.resolution) < 1:
            raise ValueError(f"fmap_base={self.fmap_base} leaves no channels at {self.resolution} px "
                             f"(needs fmap_base >= {self.resolution // 2})")
        if self.blur_filter is not None:
            object.__setattr__(self, "blur_filter", tuple(float(t) for t in self.blur_filter))
        # Frozen dataclass: derived field set once here, so asdict() round-trips.
        object.__setattr__(self, "channel_multiplier", self.fmap_base / 8192)

    @property
    def num_convs(self) -> int:
        """Synthesis layers, each with its own style row and noise map: ``num_ws``."""
        return self.num_ws

    def conv_resolution(self, i: int) -> int:
        """Output resolution of synthesis layer ``i`` (two layers per resolution, 4x4 first)."""
        return 4 * 2 ** (i // 2)

    def channels(self, resolution: int) -> int:
        stage = int(math.log2(resolution)) - 1
        return int(min(int(self.fmap_base / 2.0**stage), self.channel_max))

    def fused(self, resolution: int) -> bool:
        """Whether the up-sampling layer *into* ``resolution`` is NVIDIA's fused transposed conv."""
        return resolution >= 128 if self.fused_scale is None else bool(self.fused_scale)


def instance_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """NVIDIA's instance norm: per image and channel, zero mean and ``rsqrt(mean(x^2) + eps)``."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x * (x.square().mean(dim=(2, 3), keepdim=True) + eps).rsqrt()


class StyleGAN1Layer(nn.Module):
    """One synthesis layer: [conv (optionally 2x up + blur)] + noise + bias + lrelu + IN + AdaIN.

    ``kind`` is ``"const"`` (layer 0: no conv, its input is the learned constant), ``"conv"``
    (3x3) or ``"up"`` (2x up-sampling 3x3 conv, ``fused`` as NVIDIA's ``upscale2d_conv2d``).
    """

    blur: Tensor

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, *, kind: str, fused: bool = False,
                 blur_filter: tuple[float, ...] | None = None) -> None:
        super().__init__()
        if kind not in ("const", "conv", "up"):
            raise ValueError(f"kind must be const|conv|up, got {kind!r}")
        self.kind = kind
        self.fused = fused
        self.out_ch = out_ch
        if kind != "const":
            self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
            self.weight_gain = _CONV_GAIN / math.sqrt(in_ch * 9)
        self.noise_strength = nn.Parameter(torch.zeros(out_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        # StyleMod: dense w -> [scale(C), shift(C)], He gain 1, both applied as x * (1 + s) + b.
        self.style = EqualLinear(w_dim, 2 * out_ch)
        blur = make_fir_filter(blur_filter) if kind == "up" and blur_filter else torch.zeros(0, 0)
        # TF blurs by correlation (depthwise_conv2d); upfirdn2d convolves, so hand it the flip.
        self.register_buffer("blur", blur.flip([0, 1]), persistent=False)

    def _conv(self, x: Tensor) -> Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.kind == "conv":
            return F.conv2d(x, w, padding=1)
        if self.fused:
            # NVIDIA's fused upscale: pad the kernel to 5x5 and add its four 2x2 shifts (a 4x4
            # kernel), then a stride-2 transposed conv; padding 1 gives exactly 2H x 2W.
            w = F.pad(w, (1, 1, 1, 1))
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
            x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=1)
        else:
            x = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, padding=1)
        if self.blur.numel():
            k = self.blur.shape[-1]
            x = upfirdn2d(x, self.blur, pad=((k - 1) // 2, k // 2))
        return x

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        """``x [B, Cin, r', r']`` (the constant for layer 0), ``w [B, w_dim]``, ``noise [B|1, 1, r, r]``
        -> ``[B, Cout, r, r]``."""
        if self.kind != "const":
            x = self._conv(x)
        x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)[None, :, None, None]
        x = F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], LRELU_SLOPE)
        x = instance_norm(x)
        s = self.style(w).to(x.dtype)
        return x * (s[:, : self.out_ch, None, None] + 1) + s[:, self.out_ch:, None, None]


class StyleGAN1ToRGB(nn.Module):
    """1x1 conv to RGB (He gain 1) + bias: NVIDIA's ``ToRGB_lod0``."""

    def __init__(self, in_ch: int, out_ch: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.weight_gain = 1.0 / math.sqrt(in_ch)

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, (self.weight * self.weight_gain).to(x.dtype))
        return y + self.bias.to(y.dtype)[None, :, None, None]


class StyleGAN1Synthesis(SynthesisNetwork):
    """Constant input, ``L`` styled layers, one ToRGB (``to_rgbs[0]``) after the last."""

    cfg: StyleGAN1Config

    def __init__(self, cfg: StyleGAN1Config) -> None:
        # SynthesisNetwork.__init__ would build StyleGAN2's layers: initialise the Module only.
        nn.Module.__init__(self)
        self.cfg = cfg
        self.const = nn.Parameter(torch.ones(cfg.channels(4), 4, 4))
        layers = []
        for i in range(cfg.num_convs):
            res = cfg.conv_resolution(i)
            kind = "const" if i == 0 else "up" if i % 2 == 0 else "conv"
            in_ch = cfg.channels(res // 2 if kind == "up" else res)
            layers.append(StyleGAN1Layer(in_ch, cfg.channels(res), cfg.w_dim, kind=kind,
                                         fused=kind == "up" and cfg.fused(res), blur_filter=cfg.blur_filter))
        self.convs = nn.ModuleList(layers)
        self.to_rgbs = nn.ModuleList([StyleGAN1ToRGB(cfg.channels(cfg.resolution))])
        self.register_buffer("fir", make_fir_filter(), persistent=False)  # unused; the parent declares it

    def _run(self, state: SynthesisState | None, w: Tensor, noise: Sequence[Tensor], stop: int,
             channels_last: bool = False) -> SynthesisState:
        x, start = self._resume(state, w, channels_last)
        for i in range(start, stop + 1):
            x = self.convs[i](x, w[:, i], noise[i])
        # The image exists only after the last layer; computed from x there (also when a caller
        # replaced the last layer's activation), so the state never carries a stale image.
        rgb = self.to_rgbs[0](x) if stop == self.cfg.num_convs - 1 else None
        return SynthesisState(layer=stop, x=x, rgb=rgb)


class StyleGAN1(StyleGAN2):
    """StyleGAN v1 generator with explicit ``w`` and per-layer noise (see the module docstring).

    ``StyleGAN1(resolution, fmap_base=8192, channel_max=512, n_mapping=8, w_dim=512, seed=0)``
    builds a randomly initialised network (deterministic for ``seed``; the constant and the
    noise strengths are randomised so that every input matters); the TF-pickle loader
    (:mod:`i2score.generator.checkpoints.tensorflow_v1`) builds it from a
    :class:`StyleGAN1Config` and loads NVIDIA's weights into it.

    The mapping is StyleGAN2's :class:`MappingNetwork` with the biases stored divided by sqrt(2):
    ``lrelu(sqrt(2)·a + b) = sqrt(2)·lrelu(a + b/sqrt(2))`` (NVIDIA's v1 puts the sqrt(2) in the
    weights' He constant, StyleGAN2 after the activation); the loader converts.
    """

    family = FAMILY
    cfg: StyleGAN1Config
    synthesis: StyleGAN1Synthesis

    def __init__(self, resolution: int | StyleGAN1Config, *, fmap_base: int = 8192, channel_max: int = 512,
                 n_mapping: int = 8, w_dim: int = 512, seed: int = 0, fused_scale: bool | None = None) -> None:
        # StyleGAN2.__init__ would build StyleGAN2's synthesis: initialise the Module only, then
        # set the same attributes it sets.
        nn.Module.__init__(self)
        if isinstance(resolution, StyleGAN1Config):
            cfg = resolution
        else:
            cfg = StyleGAN1Config(resolution=resolution, fmap_base=fmap_base, channel_max=channel_max,
                                  n_mapping=n_mapping, w_dim=w_dim, z_dim=w_dim, fused_scale=fused_scale)
        if not cfg.normalize_latents:
            raise ValueError("normalize_latents=False is not supported (every NVIDIA v1 model normalises z)")
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mapping = MappingNetwork(cfg)
            self.synthesis = StyleGAN1Synthesis(cfg)
            with torch.no_grad():
                self.synthesis.const.normal_()
                for layer in self.synthesis.convs:
                    cast(StyleGAN1Layer, layer).noise_strength.fill_(0.1)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim), persistent=True)
        self.has_w_avg = False
        self.source = "random"
        self.weights_sha256 = None
        self.domain = "face"
        self.checkpoint_noise = None
        self.checkpoint_format = None
        self._mean_w_cache = {}
        self.requires_grad_(False)
        self.eval()

    def truncate(self, w: Tensor, psi: float = 0.7, cutoff: int | None = 8) -> Tensor:
        """NVIDIA's truncation trick: ``w_avg + psi * (w - w_avg)`` on rows ``< cutoff`` of
        ``w [B, L, w_dim]`` (all rows when ``cutoff`` is None); the tracked ``w_avg`` (the
        checkpoint's ``dlatent_avg``) is required."""
        if not self.has_w_avg:
            raise ValueError(f"{self.source}: truncation needs the checkpoint's dlatent_avg, which it lacks")
        rows = torch.arange(w.shape[1], device=w.device)[None, :, None]
        coefs = torch.where(rows < (w.shape[1] if cutoff is None else cutoff),
                            torch.tensor(psi, dtype=w.dtype, device=w.device),
                            torch.tensor(1.0, dtype=w.dtype, device=w.device))
        avg = self.w_avg.to(w.dtype)
        return avg + (w - avg) * coefs

    def map(self, z: Tensor, *, truncation_psi: float | None = None, truncation_cutoff: int | None = 8) -> Tensor:
        """z ``[B, z_dim]`` -> w ``[B, num_ws, w_dim]``; truncated (:meth:`truncate`) only when
        ``truncation_psi`` is given (NVIDIA samples with 0.7, cutoff 8)."""
        w = super().map(z)
        return w if truncation_psi is None else self.truncate(w, truncation_psi, truncation_cutoff)
