"""i2score's own checkpoint format: a ``torch.save`` dict that loads with ``weights_only=True``.

``{"format": "i2score-stylegan2", "version": 1, "config": asdict(GeneratorConfig),
"state_dict": ..., "has_w_avg": bool[, "checkpoint_noise": [...]], "family": "stylegan1" | "stylegan2"}``
(files without ``family`` are StyleGAN2).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from i2score.generator.checkpoints.build import build_generator
from i2score.generator.checkpoints.errors import UnsupportedCheckpointError
from i2score.generator.network import GeneratorConfig, StyleGAN2
from i2score.generator.stylegan1 import StyleGAN1Config
from i2score.generator.stylegan3 import STYLEGAN3_FAMILIES

__all__ = ["NATIVE_FORMAT", "NATIVE_VERSION", "atomic_torch_save", "from_native", "save_generator"]

NATIVE_FORMAT = "i2score-stylegan2"
NATIVE_VERSION = 1


def save_generator(G: StyleGAN2, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> None:
    """Write ``G`` in i2score's native format (``torch.save``; loads with ``weights_only=True``).

    Besides config and state dict the file keeps ``has_w_avg`` and, when present, the
    checkpoint noise maps, so a native copy of a converted checkpoint loses nothing.
    ``dtype=torch.float16`` halves the file (the bundled demo model); loading always gives
    float32 parameters, equal to the float16-rounded values. A StyleGAN3 generator is kept as
    its NVIDIA pickle (refused here with a ValueError).
    """
    if G.family in STYLEGAN3_FAMILIES:
        raise ValueError(f"the native format does not hold {G.family} generators; keep the model's NVIDIA pickle")
    payload: dict[str, Any] = {
        "format": NATIVE_FORMAT,
        "version": NATIVE_VERSION,
        "config": dataclasses.asdict(G.cfg),
        "state_dict": {k: v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()
                       for k, v in G.state_dict().items()},
        "has_w_avg": bool(G.has_w_avg),
    }
    family = getattr(G, "family", "stylegan2")
    if family != "stylegan2":  # StyleGAN2 files stay as they always were (no key)
        payload["family"] = family
    noise = getattr(G, "checkpoint_noise", None)
    if noise is not None:
        payload["checkpoint_noise"] = [n.detach().cpu() for n in noise]
    atomic_torch_save(payload, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder and a rename."""
    # A crash (or a concurrent reader) then never sees a truncated checkpoint.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def from_native(obj: Mapping[str, Any]) -> StyleGAN2:
    """The generator of a native checkpoint dict (as :func:`save_generator` writes it)."""
    if obj.get("version") != NATIVE_VERSION:
        raise UnsupportedCheckpointError(f"i2score checkpoint version {obj.get('version')!r}; "
                                         f"this i2score reads version {NATIVE_VERSION}")
    family = obj.get("family", "stylegan2")
    if family not in ("stylegan1", "stylegan2"):
        raise UnsupportedCheckpointError(f"i2score checkpoint of generator family {family!r}")
    config = dict(obj["config"])
    if family == "stylegan1" and config.get("blur_filter") is not None:
        config["blur_filter"] = tuple(config["blur_filter"])
    cfg = StyleGAN1Config(**config) if family == "stylegan1" else GeneratorConfig(**config)
    return build_generator(cfg, dict(obj["state_dict"]), "i2score-pt",
                           has_w_avg=bool(obj.get("has_w_avg", False)), noise=obj.get("checkpoint_noise"))
