"""Checkpoint format detection from a file's content (never from its name)."""

from __future__ import annotations

import itertools
import os
import pickletools
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from i2score.generator.checkpoints.errors import UnsupportedCheckpointError
from i2score.generator.checkpoints.pickles import TORCH_LEGACY_MAGIC, checkpoint_globals, dynamic_globals
from i2score.weights.unpickle import UnsafePickleError

__all__ = ["detect_format"]

_ZIP_MAGIC = b"PK\x03\x04"


def _pickle_strings(f: BinaryIO, limit: int = 200_000) -> Iterable[str]:
    """Globals and short strings of the first pickle in ``f``, without executing anything."""
    for n, (op, arg, _pos) in enumerate(pickletools.genops(f)):
        if n >= limit:
            return
        if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
            yield from arg.split(" ")
        elif isinstance(arg, str) and len(arg) < 200:
            yield arg
        elif op.name == "STOP":
            return


def _pickle_globals(f: BinaryIO) -> Iterable[tuple[str, str]]:
    """``(module, name)`` of every global the first pickle in ``f`` references (not executed)."""
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # value of each value-producing op (None if not a string)
    for op, arg, _pos in pickletools.genops(f):
        name = op.name
        if name in ("GLOBAL", "INST") and isinstance(arg, str):
            mod, _, attr = arg.partition(" ")
            yield mod, attr
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            module, qualname = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            yield str(module), str(qualname)
            pushed.append(None)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
            memo[arg] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
            pushed.append(memo.get(arg))
        elif name == "STOP":
            return
        else:
            pushed.append(arg if isinstance(arg, str) else None)
        if len(pushed) > 64:
            del pushed[:-8]


def detect_format(path: str | os.PathLike[str]) -> str:
    """Checkpoint format of a file from its content: ``i2score-pt``, ``rosinality-pt``,
    ``nvidia-pkl``, ``nvidia-tf-pkl``; ``torch-save`` for a ``torch.save`` file that has not been
    opened yet (see :func:`load_generator_file`).

    Raises:
        UnsupportedCheckpointError: neither a ``torch.save`` file nor a known pickle.
    """
    with open(path, "rb") as f:
        head = f.read(4)
        if head == _ZIP_MAGIC:
            return "torch-save"
        if not head.startswith(b"\x80"):
            raise UnsupportedCheckpointError(f"{path}: not a torch.save file or pickle (starts with {head!r})")
        f.seek(0)
        try:
            first = [(op.name, arg) for op, arg, _ in itertools.islice(pickletools.genops(f), 4)]
        except Exception:
            first = []
        if any(name.startswith("LONG") and arg == TORCH_LEGACY_MAGIC for name, arg in first):
            return "torch-save"  # legacy (pre-1.6) torch.save stream
        f.seek(0)
        try:
            for s in _pickle_strings(f):
                if s == "torch_utils.persistence":
                    return "nvidia-pkl"
                if s in ("dnnlib.tflib.network", "dnnlib.tflib"):
                    return "nvidia-tf-pkl"
        except Exception as exc:  # a corrupt stream: say so rather than guessing
            raise UnsupportedCheckpointError(f"{path}: unreadable pickle ({exc})") from exc
        # Unknown pickle: name the first global we would refuse, if any (the usual reason to
        # hand someone such a file is that it runs code).
        f.seek(0)
        allowed = checkpoint_globals()
        for module, name in _pickle_globals(f):
            if (module, name) not in allowed and dynamic_globals(module, name) is None:
                raise UnsafePickleError(module, name, f"{Path(path).name} is not a known checkpoint")
    raise UnsupportedCheckpointError(
        f"{path}: a pickle, but neither an NVIDIA stylegan2-ada/stylegan3 network pickle "
        "(torch_utils.persistence) nor a TensorFlow StyleGAN2 pickle (dnnlib.tflib)")
