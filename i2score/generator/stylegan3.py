"""StyleGAN3 (alias-free, Karras et al. 2021) synthesis in plain PyTorch, CPU and CUDA alike.

Configs ``stylegan3-t`` (translation equivariant: 3x3 convolutions, separable Kaiser filters) and
``stylegan3-r`` (rotation too: 1x1 convolutions, radially symmetric down-sampling filters) share
one network: a Fourier-feature input driven by ``w[:, 0]``, then ``num_layers`` modulated
convolutions, each followed by a *filtered leaky ReLU* (bias, up-sampling by zero insertion and a
low-pass FIR filter, leaky ReLU at the higher rate, clamp, low-pass filter and down-sampling),
and a final ToRGB layer (``w[:, -1]``); the output is scaled by ``output_scale`` (0.25).
Everything here is written with standard PyTorch ops (no custom CUDA kernels); the filters,
paddings, sizes and sampling rates are not re-derived but taken from the checkpoint, where
NVIDIA's modules keep them (see :mod:`i2score.generator.checkpoints.stylegan3`).

Differences from :class:`~i2score.generator.network.StyleGAN2` that callers see:

* ``num_ws = num_layers + 2`` (16 for every released model, whatever the resolution).
* **No noise inputs**: ``noise_shapes`` is empty, ``random_noise``/``const_noise`` return ``[]``,
  and ``synthesize`` refuses a non-empty noise list. Reconstruction is W+ only; applications that
  optimise noise say so with :class:`NoNoiseInputsError`.
* Layer names are NVIDIA's ``L{i}_{size}_{channels}`` (``"L3"`` or ``3`` also select layer 3); a
  layer's activation covers the image *plus a margin* (``size`` includes 10 extra samples per
  side in the non-critical layers), so :meth:`StyleGAN3.mask_to_activation` places a mask on it.
* Modulation divides the styles by their RMS per image (NVIDIA: over the whole batch); the
  demodulation that follows cancels that factor up to its 1e-8 epsilon, so outputs agree to float
  rounding and never depend on the batch.

It subclasses :class:`StyleGAN2` only to share the generator interface (typing, ``isinstance``);
every method it needs is its own, and StyleGAN2-only engine options (``channels_last``) are
refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2score.generator.network import GeneratorConfig, MappingNetwork, StyleGAN2, SynthesisState
from i2score.generator.ops import EqualLinear
from i2score.kernels import batch_invariance_enabled, batch_invariant

__all__ = ["STYLEGAN3_FAMILIES", "NoNoiseInputsError", "SG3LayerSpec", "StyleGAN3", "StyleGAN3Config", "filtered_lrelu",
           "resample2d"]

STYLEGAN3_FAMILIES = ("stylegan3-t", "stylegan3-r")


class NoNoiseInputsError(ValueError):
    """An operation that needs per-layer noise inputs asked of a generator without them."""

    def __init__(self, family: str, what: str) -> None:
        super().__init__(f"{what} needs the generator's noise inputs, and {family} generators have none "
                         "(StyleGAN3 is W+ only)")
        self.family = family


def _axis_matrix(n: int, f: Tensor, up: int, down: int, pad0: int, pad1: int) -> Tensor:
    """``[n, n_out]`` matrix of one axis of :func:`resample2d` with the 1-D filter ``f`` (already
    flipped and scaled): zero insertion, pad/crop, valid filtering, decimation, all linear."""
    z = torch.eye(n, dtype=f.dtype, device=f.device)
    if up > 1:
        z = F.pad(z.reshape(n, n, 1), (0, up - 1)).reshape(n, n * up)
    z = F.pad(z, (max(pad0, 0), max(pad1, 0)))
    z = z[:, max(-pad0, 0): z.shape[1] - max(-pad1, 0)]
    z = F.conv1d(z[:, None], f.view(1, 1, -1))[:, 0]
    return z[:, ::down]


def _apply_axes(x: Tensor, mx: Tensor, my: Tensor) -> Tensor:
    """``my.T @ x @ mx`` for every image and channel of ``x [B, C, H, W]`` (image by image on CPU
    under :func:`~i2score.kernels.batch_invariant`, so no result depends on the batch)."""
    if batch_invariance_enabled() and x.device.type == "cpu" and x.shape[0] > 1:
        return torch.cat([_apply_axes(xb, mx, my) for xb in x.split(1)])
    return torch.matmul(my.t(), torch.matmul(x, mx))


MATRIX_MAX_SIZE = 256
"""Above this (up-sampled) side, :func:`resample2d` convolves instead of multiplying by the
dense per-axis matrices, whose work grows with the side squared instead of the filter length."""


def _resample_conv(x: Tensor, terms: Sequence[tuple[Tensor, Tensor]], up: int, down: int,
                   padding: tuple[int, int, int, int]) -> Tensor:
    """:func:`resample2d` by zero insertion and strided 1-D convolutions (channels folded into
    the batch: every channel is filtered alike), one pair per separable term."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(b, c, h * up, w * up)
    x0, x1, y0, y1 = padding
    x = F.pad(x, (max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)))
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    flat = x.reshape(b * c, 1, x.shape[2], x.shape[3])
    out: Tensor | None = None
    for fy, fx in terms:
        y = F.conv2d(flat, fx.to(dtype=x.dtype, device=x.device).view(1, 1, 1, -1), stride=(1, down))
        y = F.conv2d(y, fy.to(dtype=x.dtype, device=x.device).view(1, 1, -1, 1), stride=(down, 1))
        out = y if out is None else out + y
    assert out is not None
    return out.reshape(b, c, out.shape[2], out.shape[3])


def resample2d(x: Tensor, f: Tensor, *, up: int = 1, down: int = 1,
               padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> Tensor:
    """Up-sample by zero insertion, pad (negative = crop), FIR-filter, down-sample by decimation.

    Args:
        x: ``[B, C, H, W]``.
        f: ``[k]`` (separable: applied along x and y) or ``[k, k]`` filter; true convolution
            (flipped; the released filters are symmetric).
        up, down: integer factors.
        padding: ``(x0, x1, y0, y1)`` after up-sampling.
        gain: overall gain (``up**2`` keeps the mean when up-sampling).

    Returns:
        ``[B, C, ceil((H*up + y0 + y1 - k + 1) / down), ...]``.

    Up to :data:`MATRIX_MAX_SIZE` each axis is one small matrix (the whole up/pad/filter/down
    chain is linear): two matrix products per filter instead of a convolution over the
    zero-inserted grid; larger layers use strided 1-D convolutions (same values to float
    rounding). A 2-D
    filter (config R's radial one) is split by SVD into separable terms, keeping those with a
    singular value above 1e-8 of the largest (below float32 rounding; the test model's radial
    filters keep 4 terms, their singular values falling to 2e-7 of the first by the third).
    """
    x0, x1, y0, y1 = padding
    h, w = x.shape[2], x.shape[3]
    f64 = (f.detach().double() * gain ** (f.ndim / 2)).flip(list(range(f.ndim)))
    if f.ndim == 1:
        terms = [(f64, f64)]
    else:
        # A 12x12 SVD: on the CPU (no device round trip per layer), the terms moved back.
        u, sv, vh = torch.linalg.svd(f64.cpu())
        keep = int((sv > 1e-8 * sv[0]).sum())
        terms = [((u[:, k] * sv[k].sqrt()).to(f.device), (vh[k] * sv[k].sqrt()).to(f.device)) for k in range(keep)]
    if max(h, w) * up > MATRIX_MAX_SIZE:
        return _resample_conv(x, terms, up, down, padding)
    out: Tensor | None = None
    for fy, fx in terms:
        mx = _axis_matrix(w, fx, up, down, x0, x1).to(dtype=x.dtype, device=x.device)
        my = _axis_matrix(h, fy, up, down, y0, y1).to(dtype=x.dtype, device=x.device)
        y = _apply_axes(x, mx, my)
        out = y if out is None else out + y
    assert out is not None
    return out


def filtered_lrelu(x: Tensor, fu: Tensor, fd: Tensor, b: Tensor, *, up: int, down: int,
                   padding: tuple[int, int, int, int], gain: float, slope: float, clamp: float | None) -> Tensor:
    """Alias-free nonlinearity: ``+ b``, up-sample and filter with ``fu``, ``leaky_relu(slope) * gain``,
    clamp to ``±clamp``, filter with ``fd`` and down-sample. ``x`` is ``[B, C, H, W]``; a 1-tap
    filter ``[1]`` is the identity."""
    x = x + b.to(x.dtype)[None, :, None, None]
    x = resample2d(x, fu, up=up, padding=padding, gain=float(up * up))
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return resample2d(x, fd, down=down)


@dataclass(frozen=True)
class SG3LayerSpec:
    """One synthesis layer as NVIDIA's module keeps it (sizes are ``(width, height)``)."""

    name: str
    in_channels: int
    out_channels: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    out_sampling_rate: float
    conv_kernel: int
    is_torgb: bool
    up: int
    down: int
    padding: tuple[int, int, int, int]
    up_taps: tuple[int, ...]
    down_taps: tuple[int, ...]
    conv_clamp: float | None


@dataclass(frozen=True)
class StyleGAN3Config:
    """Everything needed to rebuild the network from a state dict."""

    family: str
    resolution: int
    z_dim: int
    w_dim: int
    n_mapping: int
    mapping_lr_mul: float
    input_channels: int
    input_size: tuple[int, int]
    input_sampling_rate: float
    input_bandwidth: float
    output_scale: float
    layers: tuple[SG3LayerSpec, ...]

    def __post_init__(self) -> None:
        if self.family not in STYLEGAN3_FAMILIES:
            raise ValueError(f"family must be one of {STYLEGAN3_FAMILIES}, got {self.family!r}")
        if not self.layers or not self.layers[-1].is_torgb:
            raise ValueError("the last StyleGAN3 layer must be the ToRGB layer")

    @property
    def num_ws(self) -> int:
        return len(self.layers) + 1

    def mapping_config(self) -> GeneratorConfig:
        """The mapping network's settings in StyleGAN2's config (the mapping is the same network)."""
        return GeneratorConfig(resolution=self.resolution, n_mapping=self.n_mapping, w_dim=self.w_dim,
                               z_dim=self.z_dim, mapping_lr_mul=self.mapping_lr_mul)


class SynthesisInput(nn.Module):
    """Fourier features of fixed frequencies and phases, rotated and translated by ``affine(w)``."""

    transform: Tensor
    freqs: Tensor
    phases: Tensor

    def __init__(self, cfg: StyleGAN3Config) -> None:
        super().__init__()
        c = cfg.input_channels
        self.channels = c
        self.size = cfg.input_size
        self.sampling_rate = cfg.input_sampling_rate
        self.bandwidth = cfg.input_bandwidth
        self.weight = nn.Parameter(torch.randn(c, c))
        self.affine = EqualLinear(cfg.w_dim, 4)
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", torch.zeros(c, 2))
        self.register_buffer("phases", torch.zeros(c))

    def forward(self, w: Tensor) -> Tensor:
        b = w.shape[0]
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        eye = torch.eye(3, device=w.device, dtype=t.dtype)
        # Rotation then translation, both of the inverse (sampling) transform, then the user's.
        m_r = eye.repeat(b, 1, 1)
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = eye.repeat(b, 1, 1)
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ self.transform.to(t.dtype)[None]
        freqs = self.freqs.to(t.dtype)[None]
        phases = self.phases.to(t.dtype)[None] + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        # Frequencies pushed out of band by the user transform fade out instead of aliasing.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        width, height = self.size
        # Sample centres in image units (the image spans [-0.5, 0.5] at sampling_rate samples per unit).
        gx = (torch.arange(width, device=w.device, dtype=t.dtype) + 0.5 - width / 2) / self.sampling_rate
        gy = (torch.arange(height, device=w.device, dtype=t.dtype) + 0.5 - height / 2) / self.sampling_rate
        x = (gx[None, None, :, None] * freqs[:, None, None, :, 0]
             + gy[None, :, None, None] * freqs[:, None, None, :, 1])  # [B, H, W, C]
        x = torch.sin((x + phases[:, None, None, :]) * (2 * math.pi)) * amplitudes[:, None, None, :]
        x = x @ (self.weight / math.sqrt(self.channels)).t().to(x.dtype)
        return x.permute(0, 3, 1, 2).contiguous()


class SynthesisLayer3(nn.Module):
    """Modulated convolution (input gain from the tracked magnitude) + filtered leaky ReLU."""

    magnitude_ema: Tensor
    up_filter: Tensor
    down_filter: Tensor

    def __init__(self, spec: SG3LayerSpec, w_dim: int) -> None:
        super().__init__()
        self.spec = spec
        k = spec.conv_kernel
        self.affine = EqualLinear(w_dim, spec.in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(spec.out_channels, spec.in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels))
        self.register_buffer("magnitude_ema", torch.ones(()))
        self.register_buffer("up_filter", torch.ones(spec.up_taps))
        self.register_buffer("down_filter", torch.ones(spec.down_taps))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        spec = self.spec
        styles = self.affine(w)
        weight = self.weight.to(x.dtype)
        demodulate = not spec.is_torgb
        if spec.is_torgb:
            styles = styles / math.sqrt(spec.in_channels * spec.conv_kernel ** 2)
        else:
            weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
            styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
        # Modulate the activations instead of per-image weights: one dense convolution for the batch.
        gain = self.magnitude_ema.rsqrt().to(x.dtype)
        y = F.conv2d(x * (styles * gain).to(x.dtype)[:, :, None, None], weight, padding=spec.conv_kernel - 1)
        if demodulate:
            d = ((weight[None] * styles[:, None, :, None, None]).square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
            y = y * d.to(y.dtype)[:, :, None, None]
        return filtered_lrelu(y, self.up_filter, self.down_filter, self.bias, up=spec.up, down=spec.down,
                              padding=spec.padding, gain=1.0 if spec.is_torgb else math.sqrt(2),
                              slope=1.0 if spec.is_torgb else 0.2, clamp=spec.conv_clamp)


class SynthesisNetwork3(nn.Module):
    """Input, the synthesis layers and ToRGB; ``run`` can stop after and resume from any layer."""

    def __init__(self, cfg: StyleGAN3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.input = SynthesisInput(cfg)
        self.layers = nn.ModuleList(SynthesisLayer3(spec, cfg.w_dim) for spec in cfg.layers)

    def run(self, state: SynthesisState | None, w: Tensor, stop: int | None = None) -> SynthesisState:
        """Layers ``state.layer + 1 .. stop`` (all from the input when ``state`` is None); the state
        after the last (ToRGB) layer is the image, already multiplied by ``output_scale``."""
        last = len(self.layers) - 1
        stop = last if stop is None else stop
        with batch_invariant(w.device):
            if state is None:
                x, start = self.input(w[:, 0]), 0
            else:
                x, start = state.x, state.layer + 1
            for i in range(start, stop + 1):
                x = self.layers[i](x, w[:, i + 1])
                if i == last:
                    x = x * self.cfg.output_scale
        return SynthesisState(layer=stop, x=x, rgb=None)


class StyleGAN3(StyleGAN2):
    """StyleGAN3 generator (mapping + alias-free synthesis) with the i2score generator interface.

    Built by :func:`i2score.generator.checkpoints.stylegan3.stylegan3_from_pickle` from an NVIDIA
    pickle (the filters and paddings come from there); ``StyleGAN3(cfg)`` gives the module with
    placeholder weights for a state dict to be loaded into.
    """

    def __init__(self, cfg: StyleGAN3Config) -> None:  # noqa: D107 - see the class docstring
        nn.Module.__init__(self)  # not StyleGAN2's: none of its layers exist here
        self.sg3 = cfg
        # The mapping network's settings (the resolution is informative): what code reading
        # ``G.cfg.z_dim`` / ``w_dim`` expects.
        self.cfg = cfg.mapping_config()
        self.mapping = MappingNetwork(self.cfg)
        self.synthesis = SynthesisNetwork3(cfg)  # type: ignore[assignment]
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim), persistent=True)
        self.has_w_avg = False
        self.source = "random"
        self.weights_sha256 = None
        self.domain = "face"
        self.family = cfg.family  # instance attribute over StyleGAN2's class-level "stylegan2"
        self.checkpoint_noise = []
        self.checkpoint_format = None
        self._mean_w_cache = {}
        self.requires_grad_(False)
        self.eval()

    # -- shapes ---------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.sg3.resolution

    @property
    def num_ws(self) -> int:
        return self.sg3.num_ws

    @property
    def w_dim(self) -> int:
        return self.sg3.w_dim

    @property
    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """None: StyleGAN3 has no noise inputs."""
        return []

    @property
    def layer_names(self) -> list[str]:
        return [spec.name for spec in self.sg3.layers]

    def layer_index(self, layer: str | int) -> int:
        """``"L3_36_512"``, ``"L3"`` or ``3`` -> 3, validated."""
        names = self.layer_names
        idx: Any = layer
        if isinstance(layer, str):
            idx = names.index(layer) if layer in names else None
            if idx is None and layer[:1] == "L" and layer[1:].isdigit():
                idx = int(layer[1:])
        if not isinstance(idx, int) or not 0 <= idx < len(names):
            raise ValueError(f"unknown layer {layer!r} for {self.family}; valid: {names[0]}..{names[-1]} "
                             f"(or L0..L{len(names) - 1}, or 0..{len(names) - 1})")
        return idx

    @property
    def _synthesis3(self) -> SynthesisNetwork3:
        # ``synthesis`` is typed as StyleGAN2's network on the base class.
        return cast(SynthesisNetwork3, self.synthesis)

    @property
    def device(self) -> torch.device:
        return self._synthesis3.input.weight.device

    # -- noise: none ----------------------------------------------------------------------
    def random_noise(self, batch: int, seed: int | Sequence[int]) -> list[Tensor]:
        """``[]``: no noise inputs (the signature matches StyleGAN2's)."""
        if not isinstance(seed, int) and len(seed) != batch:
            raise ValueError(f"got {len(seed)} seeds for a batch of {batch}")
        return []

    def const_noise(self, batch: int) -> list[Tensor]:
        """``[]``: no noise inputs."""
        return []

    # -- synthesis ------------------------------------------------------------------------
    def _check(self, w: Tensor, noise: Sequence[Tensor]) -> None:
        if w.ndim != 3 or w.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"w must be [B, {self.num_ws}, {self.w_dim}], got {list(w.shape)}")
        if len(noise):
            raise ValueError(f"{self.family} has no noise inputs; got {len(noise)} noise maps (pass [])")

    def synthesize(self, w: Tensor, noise: Sequence[Tensor] = (), *, channels_last: bool = False) -> Tensor:
        """Render ``w [B, num_ws, w_dim]``; ``noise`` must be empty. Returns ``[B, 3, R, R]``,
        nominally in [-1, 1]."""
        if channels_last:
            raise ValueError(f"channels_last is a StyleGAN2 engine option; {self.family} does not support it")
        self._check(w, noise)
        return self._synthesis3.run(None, w).x

    def synthesize_until(self, w: Tensor, noise: Sequence[Tensor], layer: str | int) -> SynthesisState:
        """The activation after ``layer`` (``[B, C, h, w]``, margins included); ``rgb`` is None."""
        self._check(w, noise)
        return self._synthesis3.run(None, w, stop=self.layer_index(layer))

    def synthesize_from(self, state: SynthesisState, w: Tensor, noise: Sequence[Tensor]) -> Tensor:
        """Continue from a (possibly replaced) activation to the image ``[B, 3, R, R]``."""
        self._check(w, noise)
        if state.layer == len(self.sg3.layers) - 1:
            return state.x
        return self._synthesis3.run(state, w).x

    def mask_to_activation(self, mask: Tensor, layer: int, size: tuple[int, int]) -> Tensor:
        """Place an image-space mask ``[B, 1, R, R]`` on layer ``layer``'s activation grid ``size``.

        A non-critical layer samples the image at ``out_sampling_rate`` samples per image width
        plus a margin on each side; the mask is resized (nearest) to the image part and extended
        into the margin with its edge values.
        """
        spec = self.sg3.layers[layer]
        h, w = size
        inner = int(round(spec.out_sampling_rate)) if spec.out_size[0] != self.resolution else w
        inner = min(inner, h, w)
        m = F.interpolate(mask, size=(inner, inner), mode="nearest")
        pad_x0, pad_y0 = (w - inner) // 2, (h - inner) // 2
        return F.pad(m, (pad_x0, w - inner - pad_x0, pad_y0, h - inner - pad_y0), mode="replicate")

    def forward(self, w: Tensor, noise: Sequence[Tensor] = ()) -> Tensor:
        return self.synthesize(w, noise)

    def sample(self, batch: int, seed: int) -> tuple[Tensor, Tensor]:
        """Random images: ``(images [B, 3, R, R], w [B, num_ws, w_dim])`` from seeded z."""
        w = self.map(self.random_z(batch, seed))
        return self.synthesize(w, []), w
