"""Reading ``torch.save`` files we did not write, without running code from them.

:func:`safe_torch_load` is ``torch.load(weights_only=True)`` (torch's own restricted unpickler:
tensors, plain containers and scalars) plus a short list of extra inert types, and turns torch's
refusal into :class:`~i2score.weights.unpickle.UnsafePickleError` naming the offending global.
The generator checkpoints (rosinality ``.pt``, i2score's own) and the encoder checkpoints (pSp,
e4e, ReStyle, i2score's own) are all read through it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Sequence
from typing import Any

import torch

from i2score.weights.unpickle import UnsafePickleError

__all__ = ["DEFAULT_SAFE_GLOBALS", "safe_torch_load"]

#: rosinality's training checkpoints hold the argparse ``Namespace`` of the run, which is
#: plain data (its ``__dict__`` is set from the file; no code runs).
DEFAULT_SAFE_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)


def safe_torch_load(path: str | os.PathLike[str], *, safe_globals: Sequence[Any] = DEFAULT_SAFE_GLOBALS) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with ``safe_globals`` allowed.

    Tensors come back on the CPU whatever device they were saved from (encoder checkpoints
    often hold a CUDA ``latent_avg``).

    Raises:
        UnsafePickleError: the file needs a global that is neither torch's plain checkpoint data
            nor in ``safe_globals`` (the message names it); nothing from the file ran.
    """
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Name the offending global (torch's message also suggests weights_only=False, which
        # is exactly what we must not do with an untrusted file).
        m = re.search(r"GLOBAL ([\w.]+)\.(\w+)", str(exc))
        module, name = (m.group(1), m.group(2)) if m else ("?", "?")
        what = f"global {module}.{name}" if m else "a global"
        raise UnsafePickleError(module, name, message=(
            f"{path}: refusing to load this torch.save file: torch.load(weights_only=True) found "
            f"{what} that is not plain checkpoint data, so loading it could run code")) from exc
