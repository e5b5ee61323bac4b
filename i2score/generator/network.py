"""StyleGAN2 (config-f family, "skip" generator) with explicit per-call styles and noise.

Conventions used everywhere in i2score:

* ``w`` is ``[B, L, w_dim]`` with ``L = num_ws = 2*log2(R) - 2``.
* Synthesis convolutions are numbered in execution order: ``conv0`` is the 4x4 conv, then two
  per resolution (``conv1`` up-samples to 8x8, ``conv2`` stays at 8x8, ...). Conv ``i`` uses
  style row ``w[:, i]``; the ToRGB after conv ``2k`` uses ``w[:, 2k+1]``, the same row as the
  next block's first conv (as in both public PyTorch ports).
* ``noise`` is a list of ``L - 1`` maps in the same order, each ``[B, 1, r, r]``.
* Images are ``[B, 3, R, R]``, nominally in [-1, 1] (not clamped).
* A named layer ``"conv{i}"`` is the activation right after conv ``i`` (after noise, bias and
  leaky ReLU). Its :class:`SynthesisState` carries that activation plus the pending skip-RGB
  image, which is everything needed to continue the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from i2score.generator.ops import (
    LRELU_GAIN,
    LRELU_SLOPE,
    EqualLinear,
    make_fir_filter,
    modulated_conv2d,
    upsample2d,
)
from i2score.kernels import batch_invariant


def channels_at(resolution: int, channel_multiplier: float = 2, channel_max: int = 512) -> int:
    """Feature channels at a resolution: ``min(16384 * channel_multiplier // r, channel_max)``."""
    return int(min(int(16384 * channel_multiplier) // resolution, channel_max))


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture hyper-parameters; enough to rebuild the module from a state dict."""

    resolution: int
    channel_multiplier: float = 2
    channel_max: int = 512
    n_mapping: int = 8
    w_dim: int = 512
    z_dim: int = 512
    mapping_lr_mul: float = 0.01
    conv_clamp: float | None = None

    def __post_init__(self) -> None:
        r = self.resolution
        if r < 4 or r > 4096 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two in 4..4096, got {r}")
        if self.n_mapping < 1:
            raise ValueError(f"n_mapping must be >= 1, got {self.n_mapping}")

    @property
    def log2_res(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def num_ws(self) -> int:
        return 2 * self.log2_res - 2

    @property
    def num_convs(self) -> int:
        return self.num_ws - 1

    def conv_resolution(self, i: int) -> int:
        """Output resolution of synthesis conv ``i``."""
        return 4 * 2 ** ((i + 1) // 2)

    def channels(self, resolution: int) -> int:
        return channels_at(resolution, self.channel_multiplier, self.channel_max)


@dataclass
class SynthesisState:
    """The generator's state right after synthesis conv ``layer``.

    Attributes:
        layer: conv index ``i`` (the state is the output of ``conv{i}``).
        x: feature activation ``[B, C, r, r]``.
        rgb: pending skip image ``[B, 3, r', r']`` (``r' = r`` or ``r/2``), or None before the
            first ToRGB (layer 0).
    """

    layer: int
    x: Tensor
    rgb: Tensor | None


class MappingNetwork(nn.Module):
    """z ``[B, z_dim]`` -> w ``[B, w_dim]``: 2nd-moment normalisation + MLP with lr_mul."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.n_mapping
        self.fcs = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_mul=cfg.mapping_lr_mul, activation=True)
            for i in range(cfg.n_mapping)
        )

    def forward(self, z: Tensor) -> Tensor:
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for fc in self.fcs:
            x = fc(x)
        return x


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally 2x up-sampling) + noise + bias + leaky ReLU."""

    fir: Tensor

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, *, up: bool, conv_clamp: float | None) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up = up
        self.conv_clamp = conv_clamp
        self.register_buffer("fir", make_fir_filter(), persistent=False)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up, fir=self.fir)
        x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        x = torch.nn.functional.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], LRELU_SLOPE)
        x = x * LRELU_GAIN
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation, plus bias."""

    def __init__(self, in_ch: int, w_dim: int, *, conv_clamp: float | None) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain = 1.0 / math.sqrt(in_ch)
        self.conv_clamp = conv_clamp

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        y = modulated_conv2d(x, self.weight, styles, demodulate=False)
        y = y + self.bias.to(y.dtype)[None, :, None, None]
        if self.conv_clamp is not None:
            y = y.clamp(-self.conv_clamp, self.conv_clamp)
        return y


class SynthesisNetwork(nn.Module):
    """Learned 4x4 constant, ``L-1`` styled convs and ``log2(R)-1`` ToRGB layers."""

    fir: Tensor

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.const = nn.Parameter(torch.randn(cfg.channels(4), 4, 4))
        convs = []
        for i in range(cfg.num_convs):
            res = cfg.conv_resolution(i)
            up = i % 2 == 1
            in_ch = cfg.channels(res // 2 if up else res)
            convs.append(StyledConv(in_ch, cfg.channels(res), cfg.w_dim, up=up, conv_clamp=cfg.conv_clamp))
        self.convs = nn.ModuleList(convs)
        self.to_rgbs = nn.ModuleList(
            ToRGB(cfg.channels(4 * 2**k), cfg.w_dim, conv_clamp=cfg.conv_clamp) for k in range(cfg.log2_res - 1)
        )
        self.register_buffer("fir", make_fir_filter(), persistent=False)

    def run(self, state: SynthesisState | None, w: Tensor, noise: Sequence[Tensor], stop: int | None = None,
            *, channels_last: bool = False) -> SynthesisState:
        """Run convs ``state.layer + 1 .. stop`` (``0 .. stop`` when ``state`` is None).

        ``channels_last`` starts from an NHWC activation; every later op keeps that layout
        (see :func:`i2score.generator.fastpath.channels_last`, which also converts the weights)."""
        with batch_invariant(self.const.device):
            return self._run(state, w, noise, self.cfg.num_convs - 1 if stop is None else stop,
                             channels_last=channels_last)

    def _resume(self, state: SynthesisState | None, w: Tensor, channels_last: bool) -> tuple[Tensor, int]:
        """The activation to continue from and the first layer to run: the learned constant and
        layer 0 when ``state`` is None."""
        if state is not None:
            return state.x, state.layer + 1
        x = self.const.to(w.dtype)[None].expand(w.shape[0], -1, -1, -1)
        return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), 0

    def _run(self, state: SynthesisState | None, w: Tensor, noise: Sequence[Tensor], stop: int,
             channels_last: bool = False) -> SynthesisState:
        x, start = self._resume(state, w, channels_last)
        rgb = None if state is None else state.rgb
        for i in range(start, stop + 1):
            x = self.convs[i](x, w[:, i], noise[i])
            if i % 2 == 0:  # last conv of a resolution block: add its RGB contribution
                k = i // 2
                y = self.to_rgbs[k](x, w[:, 2 * k + 1])
                rgb = y if rgb is None else upsample2d(rgb, self.fir) + y
        return SynthesisState(layer=stop, x=x, rgb=rgb)


class StyleGAN2(nn.Module):
    """StyleGAN2 generator with explicit ``w`` and noise.

    ``StyleGAN2(resolution, channel_multiplier=2, channel_max=512, n_mapping=8, w_dim=512,
    seed=0)`` builds a randomly initialised network (deterministic for ``seed``); checkpoint
    loaders build it from a :class:`GeneratorConfig` and load weights into it.
    """

    w_avg: Tensor
    #: Model family (``i2s models list``); :class:`~i2score.generator.stylegan3.StyleGAN3` sets its own.
    family: str = "stylegan2"

    def __init__(self, resolution: int | GeneratorConfig, *, channel_multiplier: float = 2,
                 channel_max: int = 512, n_mapping: int = 8, w_dim: int = 512, seed: int = 0,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        if isinstance(resolution, GeneratorConfig):
            cfg = resolution
        else:
            cfg = GeneratorConfig(resolution=resolution, channel_multiplier=channel_multiplier,
                                  channel_max=channel_max, n_mapping=n_mapping, w_dim=w_dim,
                                  z_dim=w_dim, conv_clamp=conv_clamp)
        self.cfg = cfg
        fork = torch.random.fork_rng(devices=[])
        with fork:
            torch.manual_seed(seed)
            self.mapping = MappingNetwork(cfg)
            self.synthesis = SynthesisNetwork(cfg)
            # Random init: give the noise inputs a visible but small effect.
            with torch.no_grad():
                for conv in self.synthesis.convs:
                    cast(StyledConv, conv).noise_strength.fill_(0.1)
        # The checkpoint's tracked average w, when the source has one (else None).
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim), persistent=True)
        self.has_w_avg = False
        self.source: str = "random"
        self.weights_sha256: str | None = None
        # "face" starts embeddings from the mean latent, "other" from U[-1, 1] (paper Alg. 2);
        # registry models set it, anything else is treated as a face-like model.
        self.domain: str = "face"
        # The checkpoint's fixed noise maps ([1, 1, r, r] each) and format, set by the loaders.
        self.checkpoint_noise: list[Tensor] | None = None
        self.checkpoint_format: str | None = None
        self._mean_w_cache: dict[tuple[int, int], Tensor] = {}
        self.requires_grad_(False)
        self.eval()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # New weights invalidate the cached mean-latent estimates.
        self._mean_w_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    # -- shapes ---------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def num_ws(self) -> int:
        return self.cfg.num_ws

    @property
    def w_dim(self) -> int:
        return self.cfg.w_dim

    @property
    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """Per-image noise shapes ``(1, r, r)`` in synthesis order (4x4 first)."""
        return [(1, r, r) for r in (self.cfg.conv_resolution(i) for i in range(self.cfg.num_convs))]

    @property
    def layer_names(self) -> list[str]:
        return [f"conv{i}" for i in range(self.cfg.num_convs)]

    def layer_index(self, layer: str | int) -> int:
        """``"conv3"`` or ``3`` -> 3, validated."""
        idx = int(layer[4:]) if isinstance(layer, str) and layer.startswith("conv") else layer
        if not isinstance(idx, int) or not 0 <= idx < self.cfg.num_convs:
            raise ValueError(f"unknown layer {layer!r}; valid: conv0..conv{self.cfg.num_convs - 1}")
        return idx

    @property
    def device(self) -> torch.device:
        return self.synthesis.const.device

    # -- sampling -------------------------------------------------------------------------
    def map(self, z: Tensor) -> Tensor:
        """z ``[B, z_dim]`` (standard normal) -> w ``[B, num_ws, w_dim]`` (broadcast)."""
        w = self.mapping(z.to(self.device))
        return w[:, None].expand(-1, self.num_ws, -1)

    def random_z(self, batch: int, seed: int) -> Tensor:
        """Seeded standard-normal z ``[batch, z_dim]`` (drawn on CPU: same on every device)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.cfg.z_dim, generator=gen).to(self.device)

    def mean_w(self, n: int = 10000, seed: int = 0) -> Tensor:
        """Seeded estimate of the mean latent: average of ``mapping(z)`` over ``n`` samples.

        Returns ``[w_dim]`` on the generator's device. Cached per ``(n, seed)``.
        """
        key = (n, seed)
        if key not in self._mean_w_cache:
            self._mean_w_cache[key] = _estimate_mean_w(self, n, seed)
        return self._mean_w_cache[key].to(self.device)

    def random_noise(self, batch: int, seed: int | Sequence[int]) -> list[Tensor]:
        """Seeded standard-normal noise maps, a list of ``[batch, 1, r, r]`` in synthesis order.

        ``seed`` as an int gives distinct maps per image (one generator, drawn in order);
        a sequence of ``batch`` ints gives image ``b`` the maps of ``seed[b]`` alone, so an
        image's initial noise does not depend on its position in a batch. Drawn on CPU.
        """
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if not isinstance(seed, int) and len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
        per_seed = batch if isinstance(seed, int) else 1
        maps: list[list[Tensor]] = [[] for _ in self.noise_shapes]
        for s in seeds:
            gen = torch.Generator().manual_seed(int(s))
            for j, shape in enumerate(self.noise_shapes):
                maps[j].append(torch.randn(per_seed, *shape, generator=gen))
        return [torch.cat(m).to(self.device) for m in maps]

    def const_noise(self, batch: int) -> list[Tensor]:
        """All-zero noise maps (deterministic rendering), list of ``[batch, 1, r, r]``."""
        return [torch.zeros(batch, *s, device=self.device) for s in self.noise_shapes]

    # -- synthesis ------------------------------------------------------------------------
    def _check(self, w: Tensor, noise: Sequence[Tensor]) -> None:
        if w.ndim != 3 or w.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"w must be [B, {self.num_ws}, {self.w_dim}], got {list(w.shape)}")
        if len(noise) != self.cfg.num_convs:
            raise ValueError(f"expected {self.cfg.num_convs} noise maps, got {len(noise)}")
        for i, (n, s) in enumerate(zip(noise, self.noise_shapes, strict=True)):
            if n.ndim != 4 or tuple(n.shape[1:]) != s or n.shape[0] not in (1, w.shape[0]):
                raise ValueError(f"noise[{i}] must be [B, {s[0]}, {s[1]}, {s[2]}], got {list(n.shape)}")

    def synthesize(self, w: Tensor, noise: Sequence[Tensor], *, channels_last: bool = False) -> Tensor:
        """Render ``w [B, L, w_dim]`` with ``noise`` (list of ``[B, 1, r, r]``).

        ``channels_last`` runs the convolutions on NHWC activations (same values to float
        rounding; faster where the conv kernels prefer NHWC, e.g. cuDNN with bf16).

        Returns ``[B, 3, R, R]``, nominally in [-1, 1].
        """
        self._check(w, noise)
        state = self.synthesis.run(None, w, noise, channels_last=channels_last)
        assert state.rgb is not None
        return state.rgb

    def synthesize_until(self, w: Tensor, noise: Sequence[Tensor], layer: str | int) -> SynthesisState:
        """Run the synthesis up to and including ``layer`` and return its state."""
        self._check(w, noise)
        return self.synthesis.run(None, w, noise, stop=self.layer_index(layer))

    def synthesize_from(self, state: SynthesisState, w: Tensor, noise: Sequence[Tensor]) -> Tensor:
        """Continue from a (possibly replaced) state to the final image ``[B, 3, R, R]``.

        Layers after ``state.layer`` use ``w`` and ``noise``; earlier rows are ignored.
        """
        self._check(w, noise)
        out = self.synthesis.run(state, w, noise)
        assert out.rgb is not None
        return out.rgb

    def forward(self, w: Tensor, noise: Sequence[Tensor]) -> Tensor:
        return self.synthesize(w, noise)

    def sample(self, batch: int, seed: int) -> tuple[Tensor, Tensor]:
        """Random images: returns ``(images [B,3,R,R], w [B,L,w_dim])`` from seeded z and noise."""
        w = self.map(self.random_z(batch, seed))
        return self.synthesize(w, self.random_noise(batch, seed + 1)), w


def _estimate_mean_w(G: StyleGAN2, n: int, seed: int) -> Tensor:
    total = torch.zeros(G.w_dim, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    chunk = 2048
    with torch.no_grad():
        for start in range(0, n, chunk):
            z = torch.randn(min(chunk, n - start), G.cfg.z_dim, generator=gen)
            total += G.mapping(z.to(G.device)).double().sum(dim=0).cpu()
    return (total / n).float()


Generator = StyleGAN2
