"""Canonical state dict -> :class:`StyleGAN2`, with the key-by-key check every loader uses."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from i2score.generator.checkpoints.errors import CheckpointMismatchError
from i2score.generator.network import GeneratorConfig, StyleGAN2
from i2score.generator.stylegan1 import StyleGAN1, StyleGAN1Config

__all__ = ["build_generator", "check_shapes"]


def build_generator(cfg: GeneratorConfig, sd: dict[str, Tensor], fmt: str, *, has_w_avg: bool,
                    noise: list[Tensor] | None, note: str = "") -> StyleGAN2:
    """Build ``StyleGAN2(cfg)`` (``StyleGAN1(cfg)`` for a :class:`StyleGAN1Config`) and load ``sd``
    (canonical names) after a strict check.

    ``noise`` holds the checkpoint's fixed noise maps (``[1, 1, r, r]`` each, synthesis order)
    or ``None``; ``fmt`` names the format in errors and becomes ``G.checkpoint_format``.

    Raises:
        CheckpointMismatchError: a key is missing or unexpected, or a shape differs.
    """
    G = StyleGAN1(cfg) if isinstance(cfg, StyleGAN1Config) else StyleGAN2(cfg)
    expected = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    check_shapes(fmt, cfg, got, expected, note)
    G.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    G.has_w_avg = has_w_avg
    if noise is not None:
        shapes = [(1, *s) for s in G.noise_shapes]
        if [tuple(n.shape) for n in noise] != shapes:
            # strict=False: a wrong number of maps gets its own entry, and the maps that do pair
            # up still show which shapes differ.
            mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
                f"noise[{i}]": (tuple(n.shape), s)
                for i, (n, s) in enumerate(zip(noise, shapes, strict=False)) if tuple(n.shape) != s}
            if len(noise) != len(shapes):
                mismatched["number of noise maps"] = ((len(noise),), (len(shapes),))
            raise CheckpointMismatchError(fmt, cfg, [], [], mismatched, "stored noise maps")
        noise = [n.to(torch.float32).contiguous() for n in noise]
    G.checkpoint_noise = noise
    G.checkpoint_format = fmt
    return G


def check_shapes(fmt: str, cfg: GeneratorConfig | None, got: Mapping[str, tuple[int, ...]],
                 expected: Mapping[str, tuple[int, ...]], note: str = "") -> None:
    """Raise :class:`CheckpointMismatchError` unless ``got`` has exactly the keys and shapes of
    ``expected`` (both ``{name: shape}``)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = {k: (got[k], expected[k]) for k in expected if k in got and got[k] != expected[k]}
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(fmt, cfg, missing, unexpected, mismatched, note)
