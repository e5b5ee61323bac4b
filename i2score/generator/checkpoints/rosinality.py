"""rosinality/stylegan2-pytorch checkpoints (``.pt``): read, infer the architecture, write.

A ``torch.save`` dict with the generator state under ``g_ema`` (or a bare state dict) and, in
converted official weights, ``latent_avg``. The architecture is inferred from tensor shapes
and checked key by key.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from i2score.generator.checkpoints.build import build_generator, check_shapes
from i2score.generator.checkpoints.errors import CheckpointMismatchError, UnsupportedCheckpointError
from i2score.generator.checkpoints.native import atomic_torch_save
from i2score.generator.network import GeneratorConfig, StyleGAN2
from i2score.generator.ops import make_fir_filter
from i2score.generator.stylegan1 import StyleGAN1

__all__ = [
    "from_rosinality",
    "infer_rosinality_config",
    "rosinality_state_shapes",
    "save_rosinality",
    "to_rosinality_state",
]


# rosinality's blur / upsample kernels are make_kernel([1, 3, 3, 1]) * factor**2.
def _rosinality_kernel() -> Tensor:
    return make_fir_filter() * 4


def rosinality_state_shapes(cfg: GeneratorConfig) -> dict[str, tuple[int, ...]]:
    """Every key and shape of rosinality's ``Generator.state_dict()`` for ``cfg``, in order.

    (Their module order: ``style``, ``input``, ``conv1``, ``to_rgb1``, ``convs``, ``to_rgbs``,
    ``noises``; within a module parameters, then buffers, then submodules.)
    """
    c, w = cfg.channels, cfg.w_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, cfg.n_mapping + 1):
        shapes[f"style.{i}.weight"] = (w, cfg.z_dim if i == 1 else w)
        shapes[f"style.{i}.bias"] = (w,)
    shapes["input.input"] = (1, c(4), 4, 4)

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        shapes[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, w)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (cout,)

    def to_rgb(prefix: str, cin: int, up: bool) -> None:
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)
        shapes[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, w)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)

    styled("conv1", c(4), c(4), False)
    to_rgb("to_rgb1", c(4), False)
    for i in range(cfg.num_convs - 1):
        res = 8 * 2 ** (i // 2)
        up = i % 2 == 0
        styled(f"convs.{i}", c(res // 2) if up else c(res), c(res), up)
    for k in range(cfg.log2_res - 2):
        to_rgb(f"to_rgbs.{k}", c(8 * 2**k), True)
    for i in range(cfg.num_convs):
        r = cfg.conv_resolution(i)
        shapes[f"noises.noise_{i}"] = (1, 1, r, r)
    return shapes


def _count_indexed(keys: Iterable[str], prefix: str) -> int:
    """Number of distinct ``i`` among keys ``prefix{i}.*``."""
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return len(found)


def infer_rosinality_config(sd: Mapping[str, Tensor]) -> GeneratorConfig:
    """Architecture of a rosinality state dict, from its key names and tensor shapes."""
    keys = list(sd)
    n_mapping = _count_indexed(keys, "style.") or 8
    first = sd.get("style.1.weight")
    mod = sd.get("conv1.conv.modulation.weight")
    w_dim = int(first.shape[0]) if first is not None else int(mod.shape[1]) if mod is not None else 512
    z_dim = int(first.shape[1]) if first is not None else w_dim
    n_rgbs = _count_indexed(keys, "to_rgbs.")
    resolution = 2 ** (n_rgbs + 2)
    # Channels per resolution: the const, then each block's up-sampling conv output.
    chans: dict[int, int] = {}
    if "input.input" in sd:
        chans[4] = int(sd["input.input"].shape[1])
    for j in range(n_rgbs):
        wgt = sd.get(f"convs.{2 * j}.conv.weight")
        if wgt is not None and wgt.ndim == 5:
            chans[8 * 2**j] = int(wgt.shape[1])
    channel_max = max(chans.values(), default=512)
    below = [(r, ch) for r, ch in sorted(chans.items()) if ch < channel_max]
    if below:
        r, ch = below[0]
        channel_multiplier: float = ch * r / 16384
    else:  # every layer at the cap: any multiplier that keeps it there; prefer config-f's 2
        channel_multiplier = 2 if 32768 // resolution >= channel_max else channel_max * resolution / 16384
    if float(channel_multiplier).is_integer():
        channel_multiplier = int(channel_multiplier)
    return GeneratorConfig(resolution=resolution, channel_multiplier=channel_multiplier,
                           channel_max=channel_max, n_mapping=n_mapping, w_dim=w_dim, z_dim=z_dim,
                           mapping_lr_mul=0.01, conv_clamp=None)


def from_rosinality(sd: Mapping[str, Tensor], latent_avg: Tensor | None) -> StyleGAN2:
    sd = {str(k): v for k, v in sd.items()}
    try:
        cfg = infer_rosinality_config(sd)
    except (ValueError, AttributeError, IndexError) as exc:
        raise CheckpointMismatchError("rosinality-pt", None, [], sorted(sd)[:40], {},
                                      f"cannot infer the architecture: {exc}") from exc
    check_shapes("rosinality-pt", cfg, {k: tuple(v.shape) for k, v in sd.items()},
                 rosinality_state_shapes(cfg))
    kernel = _rosinality_kernel()
    for key, value in sd.items():
        if key.endswith((".blur.kernel", ".upsample.kernel")) and not torch.allclose(value.float(), kernel):
            raise UnsupportedCheckpointError(f"rosinality checkpoint uses a blur kernel other than "
                                             f"[1, 3, 3, 1] ({key}); not supported")

    out: dict[str, Tensor] = {}
    for i in range(cfg.n_mapping):
        out[f"mapping.fcs.{i}.weight"] = sd[f"style.{i + 1}.weight"]
        out[f"mapping.fcs.{i}.bias"] = sd[f"style.{i + 1}.bias"]
    out["synthesis.const"] = sd["input.input"][0]
    for i in range(cfg.num_convs):
        src = "conv1" if i == 0 else f"convs.{i - 1}"
        dst = f"synthesis.convs.{i}"
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape(())
        out[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
    for k in range(cfg.log2_res - 1):
        src = "to_rgb1" if k == 0 else f"to_rgbs.{k - 1}"
        dst = f"synthesis.to_rgbs.{k}"
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(3)
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
    has_w_avg = latent_avg is not None
    if latent_avg is not None:
        if latent_avg.numel() != cfg.w_dim:
            raise CheckpointMismatchError("rosinality-pt", cfg, [], [], {
                "latent_avg": (tuple(latent_avg.shape), (cfg.w_dim,))})
        out["w_avg"] = latent_avg.reshape(cfg.w_dim)
    else:
        out["w_avg"] = torch.zeros(cfg.w_dim)
    noise = [sd[f"noises.noise_{i}"] for i in range(cfg.num_convs)]
    return build_generator(cfg, out, "rosinality-pt", has_w_avg=has_w_avg, noise=noise)


# Parameters inside one of rosinality's StyledConv / ToRGB layers -> (our name in the matching
# synthesis.convs.{i} / synthesis.to_rgbs.{k}, how our tensor becomes theirs).
_ROSINALITY_CONV_PARTS: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "conv.weight": ("weight", lambda t: t[None]),
    "conv.modulation.weight": ("affine.weight", lambda t: t),
    "conv.modulation.bias": ("affine.bias", lambda t: t),
    "noise.weight": ("noise_strength", lambda t: t.reshape(1)),
    "activate.bias": ("bias", lambda t: t),
}
_ROSINALITY_RGB_PARTS: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "bias": ("bias", lambda t: t.reshape(1, 3, 1, 1)),
    "conv.weight": ("weight", lambda t: t[None]),
    "conv.modulation.weight": ("affine.weight", lambda t: t),
    "conv.modulation.bias": ("affine.bias", lambda t: t),
}


def to_rosinality_state(G: StyleGAN2) -> dict[str, Tensor]:
    """``G`` as a rosinality ``Generator.state_dict()`` (same keys, order and buffers).

    Their ``noises.noise_{i}`` buffers get ``G.checkpoint_noise`` when set, else seeded
    standard-normal maps (what rosinality initialises them with).
    """
    cfg = G.cfg
    if isinstance(G, StyleGAN1):
        raise UnsupportedCheckpointError(f"rosinality's stylegan2-pytorch holds StyleGAN2 only; cannot export "
                                         f"a {G.family} generator")
    if cfg.conv_clamp is not None:
        raise UnsupportedCheckpointError("rosinality's generator has no conv_clamp; cannot export "
                                         f"a generator with conv_clamp={cfg.conv_clamp}")
    if not math.isclose(cfg.mapping_lr_mul, 0.01):
        # rosinality's lr_mlp is a constructor argument not stored in the state dict; a
        # reader would assume 0.01 and get a different mapping network.
        raise UnsupportedCheckpointError(f"mapping_lr_mul={cfg.mapping_lr_mul} cannot be expressed "
                                         "in a rosinality checkpoint (always read as 0.01)")
    sd = {k: v.detach().cpu() for k, v in G.state_dict().items()}
    noise = getattr(G, "checkpoint_noise", None)
    if noise is None:
        noise = G.random_noise(1, 0)
    kernel = _rosinality_kernel()
    out: dict[str, Tensor] = {}
    for k, shape in rosinality_state_shapes(cfg).items():
        parts = k.split(".")
        if k.startswith("style."):
            v = sd[f"mapping.fcs.{int(parts[1]) - 1}.{parts[2]}"]
        elif k == "input.input":
            v = sd["synthesis.const"][None]
        elif k.startswith("noises."):
            v = noise[int(parts[1].split("_")[1])].detach().cpu()
        elif k.endswith((".blur.kernel", ".upsample.kernel")):
            v = kernel.clone()
        elif k.startswith(("conv1.", "convs.")):
            i = 0 if parts[0] == "conv1" else int(parts[1]) + 1
            tail = ".".join(parts[1:] if parts[0] == "conv1" else parts[2:])
            ours, convert = _ROSINALITY_CONV_PARTS[tail]
            v = convert(sd[f"synthesis.convs.{i}.{ours}"])
        else:  # to_rgb1 / to_rgbs.k
            kk = 0 if parts[0] == "to_rgb1" else int(parts[1]) + 1
            tail = ".".join(parts[1:] if parts[0] == "to_rgb1" else parts[2:])
            ours, convert = _ROSINALITY_RGB_PARTS[tail]
            v = convert(sd[f"synthesis.to_rgbs.{kk}.{ours}"])
        assert tuple(v.shape) == shape, (k, tuple(v.shape), shape)
        out[k] = v.clone().contiguous()
    return out


def save_rosinality(G: StyleGAN2, path: str | os.PathLike[str]) -> None:
    """Write ``G`` as a rosinality stylegan2-pytorch checkpoint: ``{"g_ema": ..., "latent_avg": ...}``.

    ``latent_avg`` (``[w_dim]``, like their ``convert_weight.py``) is written only when
    ``G.has_w_avg``. Their ``Generator(size, style_dim, n_mlp, channel_multiplier)`` loads the
    result when the architecture is one their channel table can express.
    """
    payload: dict[str, Any] = {"g_ema": to_rosinality_state(G)}
    if G.has_w_avg:
        payload["latent_avg"] = G.w_avg.detach().cpu().clone()
    atomic_torch_save(payload, Path(path))
