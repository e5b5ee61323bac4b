"""i2score's own encoder checkpoint: a ``torch.save`` dict of plain data (loadable with
``torch.load(weights_only=True)``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from i2score.encoders.base import Encoder, EncoderConfig
from i2score.encoders.build import build_encoder

#: The ``format`` field of a native encoder checkpoint.
NATIVE_ENCODER_FORMAT = "i2score-encoder/1"


def encoder_to_native(encoder: Encoder, **meta: Any) -> dict[str, Any]:
    """The checkpoint dict of ``encoder``: format, config, state dict (float32, CPU) and ``meta``
    (plain data: the generator it was trained for, training settings...)."""
    state = {k: v.detach().float().cpu().clone() for k, v in encoder.state_dict().items()}
    return {"format": NATIVE_ENCODER_FORMAT, "config": encoder.config.to_json(), "state_dict": state,
            "meta": dict(meta)}


def save_encoder(encoder: Encoder, path: str | os.PathLike[str], **meta: Any) -> None:
    """Write :func:`encoder_to_native` to ``path`` (through a temporary file, renamed into place)."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(encoder_to_native(encoder, **meta), tmp)
    os.replace(tmp, path)


def is_native(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == NATIVE_ENCODER_FORMAT


def encoder_from_native(obj: Mapping[str, Any]) -> Encoder:
    """Rebuild an encoder from :func:`encoder_to_native`'s dict; the state dict must match the
    config's architecture key for key and shape for shape (``load_state_dict(strict=True)``)."""
    config = EncoderConfig(**obj["config"])
    encoder = build_encoder(config)
    encoder.load_state_dict(obj["state_dict"], strict=True)
    encoder.meta = dict(obj.get("meta") or {})
    return encoder.eval().requires_grad_(False)
