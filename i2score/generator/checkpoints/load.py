"""Load StyleGAN2 generators from the checkpoint formats people actually have.

Supported formats (detected from the file's *content*, never from its name):

``i2score-pt``
    Our own ``torch.save`` file (:func:`save_generator`): ``{"format": "i2score-stylegan2",
    "version": 1, "config": asdict(GeneratorConfig), "state_dict": ...}``.
``rosinality-pt``
    rosinality/stylegan2-pytorch checkpoints: a ``torch.save`` dict with the generator state
    under ``g_ema`` (or a bare state dict) and, in converted official weights, ``latent_avg``.
    The architecture is inferred from tensor shapes and checked key by key.
``nvidia-pkl``
    NVIDIA stylegan2-ada-pytorch / stylegan3 pickles (``G_ema`` of a StyleGAN2 generator).
    These pickles embed the Python source of NVIDIA's network modules and *execute* it on a
    normal ``pickle.load``. We read them with a restricted unpickler that allows only inert
    globals (tensor/storage rebuilders, ``OrderedDict``, a few numpy scalar helpers) and
    replaces NVIDIA's persistence hook by a stub that merely records the class name and the
    state, so no code from the file runs and NVIDIA's packages are not needed.
``nvidia-tf-pkl``
    The original TensorFlow StyleGAN2 pickles (``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``)
    read the same way (only their variable arrays are used), converted like
    stylegan2-ada-pytorch's ``legacy.py`` does.

All loaders produce an :class:`~i2score.generator.network.StyleGAN2` whose state dict uses our
canonical names, with ``w_avg``/``has_w_avg``, ``source``, ``weights_sha256`` set, and
``checkpoint_noise`` holding the checkpoint's fixed noise maps when it has them (NVIDIA's
``noise_const`` buffers, rosinality's ``noises.*``): a list of ``[1, 1, r, r]`` tensors in
synthesis order, so ``G.synthesize(w, G.checkpoint_noise)`` reproduces NVIDIA's
``noise_mode='const'`` renders and rosinality's ``randomize_noise=False``.

NVIDIA pickles trained with ``num_fp16_res > 0`` run their top blocks in float16 on GPU; we
always compute in float32, so renders match theirs to float16 precision, not bitwise.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import dataclasses
import io
import itertools
import logging
import math
import os
import pickle
import pickletools
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from i2score.generator.network import GeneratorConfig, StyleGAN2
from i2score.generator.ops import make_fir_filter
from i2score.generator.registry import DEFAULT_MODEL, MODELS, resolve_model_file, sha256_file
from i2score.weights.unpickle import UnsafePickleError

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "UnsafePickleError",
    "UnsupportedCheckpointError",
    "PickledObject",
    "NATIVE_FORMAT",
    "detect_format",
    "load_generator",
    "load_generator_file",
    "save_generator",
    "save_rosinality",
    "to_rosinality_state",
    "rosinality_state_shapes",
    "infer_rosinality_config",
    "read_nvidia_pickle",
    "nvidia_noise_const",
    "restricted_pickle_load",
]

log = logging.getLogger(__name__)

NATIVE_FORMAT = "i2score-stylegan2"
NATIVE_VERSION = 1

# Magic number that opens the legacy (pre-zip) torch.save stream, and that torch still writes
# inside every storage pickled with plain ``pickle`` (``torch.storage._load_from_bytes``).
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------------------------
# Errors


class CheckpointError(ValueError):
    """A checkpoint that cannot be turned into a generator."""


class UnsupportedCheckpointError(CheckpointError):
    """The file is a checkpoint, but of a kind or architecture we do not load."""


class CheckpointMismatchError(CheckpointError):
    """Tensor names/shapes in a checkpoint differ from those the inferred architecture needs.

    Attributes ``missing``, ``unexpected`` (key lists), ``mismatched`` (``{key: (got,
    expected)}``) and ``config`` (the inferred :class:`GeneratorConfig`) are also in the message.
    """

    def __init__(self, fmt: str, config: GeneratorConfig | None, missing: list[str],
                 unexpected: list[str], mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                 note: str = "") -> None:
        self.format = fmt
        self.config = config
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"{fmt} checkpoint does not match the inferred architecture"]
        if note:
            lines[0] += f" ({note})"
        lines.append(f"  inferred config: {config}")
        lines.append(f"  missing keys ({len(missing)}): {_short_list(missing)}")
        lines.append(f"  unexpected keys ({len(unexpected)}): {_short_list(unexpected)}")
        shapes = [f"{k}: got {list(g)}, expected {list(e)}" for k, (g, e) in mismatched.items()]
        lines.append(f"  shape mismatches ({len(shapes)}): {_short_list(shapes)}")
        super().__init__("\n".join(lines))


def _short_list(items: list[str], limit: int = 40) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------
# Restricted unpickling


class PickledObject:
    """Inert record of an object a pickle would have built (a module, a TF network, ...).

    ``kind`` says where it came from (``"persistent"`` for NVIDIA's persistence hook,
    ``"newobj"`` for a plain class instance), ``qualname`` is ``module.Class`` (or the class
    name alone for persistent objects), ``state`` is what ``__setstate__`` would have received.
    """

    def __init__(self, kind: str, qualname: str, state: Any = None, args: tuple[Any, ...] = ()) -> None:
        self.kind = kind
        self.qualname = qualname
        self.state = state
        self.args = args

    @property
    def class_name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: record, never act on it
        self.state = state

    def __repr__(self) -> str:
        return f"PickledObject({self.kind}, {self.qualname})"


def _stub_class(qualname: str) -> type:
    """A class whose instances are :class:`PickledObject` records (for ``NEWOBJ`` opcodes)."""
    cached = _STUB_CLASSES.get(qualname)
    if cached is not None:
        return cached

    def __new__(cls: type, *args: Any, **kwargs: Any) -> PickledObject:  # noqa: N807
        return PickledObject("newobj", qualname, args=args)

    stub = type(f"Stub[{qualname}]", (), {"__new__": __new__, "__module__": __name__})
    _STUB_CLASSES[qualname] = stub
    return stub


_STUB_CLASSES: dict[str, type] = {}


class _EasyDict(dict):  # type: ignore[type-arg]
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access); holds data only."""

    def __getattr__(self, name: str) -> Any:
        # Never answer dunder lookups from the data: pickle's BUILD asks for __setstate__.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Storage:
    """A storage read from a pickle: a flat tensor of one dtype."""

    def __init__(self, data: Tensor) -> None:
        self.data = data


class _StorageType:
    """Marker for ``torch.FloatStorage`` etc. inside torch's legacy storage stream."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype


_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}

_TORCH_DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")}


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` answers only from an allow-list.

    Every callable a pickle can invoke (``REDUCE``, ``NEWOBJ``, ``BUILD`` on a created object)
    must first be obtained through ``find_class`` (or the extension registry, which also goes
    through it), so an allow-list of inert functions and data-only stub classes is enough to
    guarantee that loading runs no code chosen by the file.
    """

    def __init__(self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any], *,
                 dynamic: Callable[[str, str], Any | None] | None = None,
                 persistent: Callable[[Any], Any] | None = None, context: str = "") -> None:
        super().__init__(file)
        self._allowed = allowed
        self._dynamic = dynamic
        self._persistent = persistent
        self._context = context

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles written by Python 3 use Python 2 names (__builtin__.set, ...);
        # the stock find_class translates them, so must we. (Python 2 module names never
        # occur in protocol 3+ pickles, so translating unconditionally is equivalent.)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        obj = self._allowed.get((module, name))
        if obj is None and self._dynamic is not None:
            obj = self._dynamic(module, name)
        if obj is None:
            raise UnsafePickleError(module, name, self._context)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError(f"unexpected persistent id in {self._context or 'pickle'}: {pid!r}")
        return self._persistent(pid)


# -- safe replacements for the globals a checkpoint pickle legitimately uses -----------------


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Tensor:
    """Safe ``torch._utils._rebuild_tensor[_v2]``: a strided view, bounds-checked, copied."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor rebuild got {type(storage).__name__}, not a storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(offset)
    flat = storage.data
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"invalid tensor geometry size={size} stride={stride} offset={offset}")
    if all(s > 0 for s in size):
        extent = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
        if extent > flat.numel():
            raise pickle.UnpicklingError(
                f"tensor [{size}, stride {stride}, offset {offset}] exceeds its storage ({flat.numel()})")
        return torch.as_strided(flat, size, stride, offset).clone()
    return torch.empty(size, dtype=flat.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *state: Any) -> Tensor:
    """Safe ``torch._utils._rebuild_parameter[_with_state]``: parameters become plain tensors."""
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError(f"parameter rebuild got {type(data).__name__}, not a tensor")
    return data


def _load_storage_bytes(blob: Any) -> _Storage:
    """Safe ``torch.storage._load_from_bytes``: parse torch's legacy single-storage stream.

    ``pickle.dumps(tensor)`` stores each storage as the bytes of a legacy ``torch.save`` of that
    storage alone: three small pickles (magic number, protocol version, system info), a pickle
    whose only object is the persistent id ``('storage', torch.<Type>Storage, key, location,
    numel[, view_metadata])``, a pickle of the key list, then per key an int64 element count
    and the raw little-endian data.
    """
    if not isinstance(blob, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    f = io.BytesIO(blob)
    plain = lambda ctx: _RestrictedUnpickler(f, {}, context=ctx)  # noqa: E731
    if plain("storage magic").load() != _TORCH_LEGACY_MAGIC:
        raise pickle.UnpicklingError("storage payload lacks torch's legacy magic number")
    if plain("storage protocol").load() != _TORCH_LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("unknown torch legacy storage protocol")
    sys_info = plain("storage sys_info").load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise UnsupportedCheckpointError("big-endian torch storages are not supported")

    records: dict[str, tuple[torch.dtype, int]] = {}

    def persistent(pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} in a storage payload")
        key, numel = str(pid[2]), int(pid[4])
        records[key] = (pid[1].dtype, numel)
        view = pid[5] if len(pid) > 5 else None
        return ("ref", key, view)

    allowed = {("torch", name): _StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()}
    ref = _RestrictedUnpickler(f, allowed, persistent=persistent, context="storage").load()
    keys = plain("storage keys").load()
    data: dict[str, Tensor] = {}
    for key in keys:
        key = str(key)
        if key not in records:
            raise pickle.UnpicklingError(f"storage key {key!r} has no record")
        dtype, numel = records[key]
        header = f.read(8)
        if len(header) != 8:
            raise pickle.UnpicklingError("truncated storage payload")
        (count,) = struct.unpack("<q", header)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if count < 0 or count != numel:
            raise pickle.UnpicklingError(f"storage {key}: {count} elements, record says {numel}")
        raw = f.read(count * itemsize)
        if len(raw) != count * itemsize:
            raise pickle.UnpicklingError("truncated storage payload")
        data[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if count else torch.empty(0, dtype=dtype)
    if not (isinstance(ref, tuple) and len(ref) == 3 and ref[0] == "ref" and ref[1] in data):
        raise pickle.UnpicklingError("storage payload does not reference its data")
    flat = data[ref[1]]
    if ref[2] is not None:  # very old torch: (view_key, offset, size) into the root storage
        _, view_offset, view_size = ref[2]
        flat = flat[int(view_offset): int(view_offset) + int(view_size)]
    return _Storage(flat)


_NUMPY_DTYPE = re.compile(r"^[<>|=]?(b1|bool|[iuf][1248]|f16|float(16|32|64)|u?int(8|16|32|64)|S\d+|U\d+)$")


def _np_dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """Safe ``numpy.dtype`` for plain numeric/bytes dtypes.

    Always a fresh copy: pickle then calls ``__setstate__`` on it, which must never touch the
    process-wide builtin dtype singletons (a hostile ``copy=False`` would).
    """
    if not isinstance(name, str) or not _NUMPY_DTYPE.match(name):
        raise UnsafePickleError("numpy", f"dtype({name!r})", "only plain numeric dtypes are allowed")
    return np.dtype(name, bool(align), True)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    """Safe ``numpy.core.multiarray.scalar`` for non-object dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar with an unsupported dtype or payload")
    if len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar payload has the wrong size")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


class _NDArrayMarker:
    """Stands for ``numpy.ndarray`` as the first argument of ``_reconstruct``."""


class _NDArrayRecord:
    """An ndarray being rebuilt: ``_reconstruct`` creates it, ``BUILD`` fills it."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected ndarray state")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("only numeric numpy arrays can be loaded")
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise pickle.UnpicklingError("ndarray payload has the wrong size")
        self.value = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _np_reconstruct(cls: Any, shape: Any = (0,), dtype: Any = b"b") -> _NDArrayRecord:
    if cls is not _NDArrayMarker:
        raise pickle.UnpicklingError("numpy _reconstruct of something other than ndarray")
    return _NDArrayRecord()


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """Safe ``numpy.core.numeric._frombuffer`` (how numpy pickles arrays at protocol 5)."""
    if isinstance(buf, pickle.PickleBuffer):
        buf = bytes(buf.raw())
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("only numeric numpy arrays can be loaded")
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) * dtype.itemsize != len(buf):
        raise pickle.UnpicklingError("ndarray payload has the wrong size")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order="F" if order == "F" else "C").copy()


def _reconstruct_persistent_obj(meta: Any) -> PickledObject:
    """Replacement for NVIDIA's ``torch_utils.persistence._reconstruct_persistent_obj``.

    Theirs ``exec``s ``meta['module_src']`` (the pickled source of the network module) and
    instantiates the class from it. Ours records the class name and the state and ignores the
    source entirely: no code from the pickle is ever compiled or run.
    """
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("unexpected torch_utils.persistence record")
    return PickledObject("persistent", str(meta.get("class_name")), state=meta.get("state"))


def _latin1_bytes(text: Any, encoding: Any = "utf-8") -> bytes:
    """Safe ``_codecs.encode``: protocol 2 has no bytes opcode and writes bytes this way."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 byte strings")
    return text.encode("latin1")


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Safe ``copyreg._reconstructor`` (protocol 0/1 objects) for our stub classes only."""
    if isinstance(cls, type) and cls in _STUB_CLASSES.values():
        return cls()
    if cls is _EasyDict:
        return _EasyDict()
    raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r} is not allowed")


def _checkpoint_globals() -> dict[tuple[str, str], Any]:
    """The allow-list for NVIDIA (PyTorch and TensorFlow) checkpoint pickles."""
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("copyreg", "_reconstructor"): _copyreg_reconstructor,
        ("_codecs", "encode"): _latin1_bytes,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("dnnlib.tflib.network", "Network"): _stub_class("dnnlib.tflib.network.Network"),
        ("numpy", "dtype"): _np_dtype,
        ("numpy", "ndarray"): _NDArrayMarker,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "scalar")] = _np_scalar
        allowed[(mod, "_reconstruct")] = _np_reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _np_frombuffer
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = dtype
    return allowed


def _dynamic_globals(module: str, name: str) -> Any | None:
    # Plain torch.nn containers (ModuleList, Sequential, ...) pickled by value in some forks:
    # inert records of their state, like the persistent classes.
    if (module == "torch.nn.modules" or module.startswith("torch.nn.modules.")) and name.isidentifier():
        return _stub_class(f"{module}.{name}")
    return None


def restricted_pickle_load(file: BinaryIO, *, context: str = "checkpoint pickle") -> Any:
    """Unpickle a checkpoint with the allow-list; see :class:`_RestrictedUnpickler`.

    Raises:
        UnsafePickleError: the pickle names any other global (``os.system``, ``eval``, ...).
    """
    return _RestrictedUnpickler(file, _checkpoint_globals(), dynamic=_dynamic_globals,
                                context=context).load()


# --------------------------------------------------------------------------------------------
# Format detection


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
            mod, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            yield str(mod), str(attr)
            pushed.append(None)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(int(arg)))
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
        if any(name.startswith("LONG") and arg == _TORCH_LEGACY_MAGIC for name, arg in first):
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
        allowed = _checkpoint_globals()
        for module, name in _pickle_globals(f):
            if (module, name) not in allowed and _dynamic_globals(module, name) is None:
                raise UnsafePickleError(module, name, f"{Path(path).name} is not a known checkpoint")
    raise UnsupportedCheckpointError(
        f"{path}: a pickle, but neither an NVIDIA stylegan2-ada/stylegan3 network pickle "
        "(torch_utils.persistence) nor a TensorFlow StyleGAN2 pickle (dnnlib.tflib)")


# --------------------------------------------------------------------------------------------
# Public entry points


def load_generator(source: str | os.PathLike[str] = DEFAULT_MODEL, *, device: str | torch.device | None = None,
                   cache_dir: str | os.PathLike[str] | None = None, sha256: str | None = None) -> StyleGAN2:
    """Load a generator from a registry name, a local path or a URL (default: the bundled
    demo model, :data:`~i2score.generator.registry.DEFAULT_MODEL`).

    The file is resolved (and, when the registry or ``sha256`` gives a checksum, verified) by
    :func:`~i2score.generator.registry.resolve_model_file`; its format is detected from its
    content. Returns an eval-mode, ``requires_grad=False`` :class:`StyleGAN2` on ``device``
    (default CPU) with ``source`` = ``str(source)`` and ``weights_sha256`` set.
    """
    src = os.fspath(source)
    path = resolve_model_file(src, cache_dir=cache_dir, sha256=sha256)
    G = load_generator_file(path, device=device)
    G.source = src
    spec = MODELS.get(src)
    if spec is not None and spec.format != G.checkpoint_format:
        # Content wins (the file is what it is); the registry entry may deserve a look.
        log.warning("%s: registry says format %s, the file is %s", src, spec.format, G.checkpoint_format)
    if spec is not None and spec.resolution != G.resolution:
        raise CheckpointError(f"{src}: registry says {spec.resolution}x{spec.resolution}, "
                              f"the file {path} holds a {G.resolution}x{G.resolution} generator")
    if spec is not None:
        G.domain = spec.domain  # decides the W+ initialisation (face: mean latent)
    return G


def load_generator_file(path: str | os.PathLike[str], *, device: str | torch.device | None = None) -> StyleGAN2:
    """Load a local checkpoint file of any supported format (see the module docstring)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "torch-save":
        G = _load_torch_save(path)
    elif fmt == "nvidia-pkl":
        with open(path, "rb") as f:
            G = _nvidia_from_pickle(restricted_pickle_load(f, context=f"NVIDIA pickle {path.name}"))
    elif fmt == "nvidia-tf-pkl":
        with open(path, "rb") as f:
            G = _tf_from_pickle(restricted_pickle_load(f, context=f"TensorFlow pickle {path.name}"))
    else:  # pragma: no cover - detect_format only returns the above
        raise UnsupportedCheckpointError(fmt)
    G.source = str(path)
    G.weights_sha256 = sha256_file(path)
    if device is not None:
        G.to(device)
        if G.checkpoint_noise is not None:
            G.checkpoint_noise = [n.to(device) for n in G.checkpoint_noise]
    return G


def save_generator(G: StyleGAN2, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> None:
    """Write ``G`` in i2score's native format (``torch.save``; loads with ``weights_only=True``).

    Besides config and state dict the file keeps ``has_w_avg`` and, when present, the
    checkpoint noise maps, so a native copy of a converted checkpoint loses nothing.
    ``dtype=torch.float16`` halves the file (the bundled demo model); loading always gives
    float32 parameters, equal to the float16-rounded values.
    """
    payload: dict[str, Any] = {
        "format": NATIVE_FORMAT,
        "version": NATIVE_VERSION,
        "config": dataclasses.asdict(G.cfg),
        "state_dict": {k: v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()
                       for k, v in G.state_dict().items()},
        "has_w_avg": bool(G.has_w_avg),
    }
    noise = getattr(G, "checkpoint_noise", None)
    if noise is not None:
        payload["checkpoint_noise"] = [n.detach().cpu() for n in noise]
    _atomic_torch_save(payload, Path(path))


def nvidia_noise_const(source: str | os.PathLike[str] | StyleGAN2) -> list[Tensor]:
    """The fixed noise maps of a checkpoint (NVIDIA's ``noise_const``), ``[1, 1, r, r]`` each.

    Accepts a loaded generator or anything :func:`load_generator` accepts. With them,
    ``G.synthesize(w, maps)`` equals NVIDIA's ``G.synthesis(w, noise_mode='const')``.
    """
    G = source if isinstance(source, StyleGAN2) else load_generator(source)
    noise = getattr(G, "checkpoint_noise", None)
    if noise is None:
        raise CheckpointError(f"{G.source}: the checkpoint has no stored noise maps")
    return list(noise)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    # Write next to the target and rename, so a crash never leaves a truncated checkpoint.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _finish(cfg: GeneratorConfig, sd: dict[str, Tensor], fmt: str, *, has_w_avg: bool,
            noise: list[Tensor] | None, note: str = "") -> StyleGAN2:
    """Build ``StyleGAN2(cfg)`` and load ``sd`` (canonical names) after a strict check."""
    G = StyleGAN2(cfg)
    expected = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    _strict_check(fmt, cfg, got, expected, note)
    G.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    G.has_w_avg = has_w_avg
    if noise is not None:
        shapes = [(1, *s) for s in G.noise_shapes]
        if [tuple(n.shape) for n in noise] != shapes:
            raise CheckpointMismatchError(fmt, cfg, [], [], {
                f"noise[{i}]": (tuple(n.shape), s) for i, (n, s) in enumerate(zip(noise, shapes))
                if tuple(n.shape) != s}, "stored noise maps")
        noise = [n.to(torch.float32).contiguous() for n in noise]
    G.checkpoint_noise = noise
    G.checkpoint_format = fmt
    return G


def _strict_check(fmt: str, cfg: GeneratorConfig | None, got: Mapping[str, tuple[int, ...]],
                  expected: Mapping[str, tuple[int, ...]], note: str = "") -> None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = {k: (got[k], expected[k]) for k in expected if k in got and got[k] != expected[k]}
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(fmt, cfg, missing, unexpected, mismatched, note)


# --------------------------------------------------------------------------------------------
# torch.save files: native and rosinality


def _torch_load(path: Path) -> Any:
    # weights_only=True: torch's own restricted unpickler. rosinality's training checkpoints
    # also hold the argparse Namespace of the run, which is plain data.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
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


def _load_torch_save(path: Path) -> StyleGAN2:
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == NATIVE_FORMAT:
        return _from_native(obj)
    if isinstance(obj, dict) and isinstance(obj.get("g_ema"), Mapping):
        return _from_rosinality(obj["g_ema"], obj.get("latent_avg"))
    if isinstance(obj, Mapping) and any(str(k).startswith(("style.", "input.input", "conv1.")) for k in obj):
        return _from_rosinality(obj, None)
    keys = list(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
    raise UnsupportedCheckpointError(
        f"{path}: a torch.save file, but neither an i2score checkpoint nor a rosinality "
        f"stylegan2-pytorch one (top level: {keys})")


def _from_native(obj: Mapping[str, Any]) -> StyleGAN2:
    if obj.get("version") != NATIVE_VERSION:
        raise UnsupportedCheckpointError(f"i2score checkpoint version {obj.get('version')!r}; "
                                         f"this i2score reads version {NATIVE_VERSION}")
    cfg = GeneratorConfig(**obj["config"])
    return _finish(cfg, dict(obj["state_dict"]), "i2score-pt",
                   has_w_avg=bool(obj.get("has_w_avg", False)), noise=obj.get("checkpoint_noise"))


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


def _from_rosinality(sd: Mapping[str, Tensor], latent_avg: Tensor | None) -> StyleGAN2:
    sd = {str(k): v for k, v in sd.items()}
    try:
        cfg = infer_rosinality_config(sd)
    except (ValueError, AttributeError, IndexError) as exc:
        raise CheckpointMismatchError("rosinality-pt", None, [], sorted(sd)[:40], {},
                                      f"cannot infer the architecture: {exc}") from exc
    _strict_check("rosinality-pt", cfg, {k: tuple(v.shape) for k, v in sd.items()},
                  rosinality_state_shapes(cfg))
    kernel = _rosinality_kernel()
    for k, v in sd.items():
        if k.endswith((".blur.kernel", ".upsample.kernel")) and not torch.allclose(v.float(), kernel):
            raise UnsupportedCheckpointError(f"rosinality checkpoint uses a blur kernel other than "
                                             f"[1, 3, 3, 1] ({k}); not supported")

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
    return _finish(cfg, out, "rosinality-pt", has_w_avg=has_w_avg, noise=noise)


def to_rosinality_state(G: StyleGAN2) -> dict[str, Tensor]:
    """``G`` as a rosinality ``Generator.state_dict()`` (same keys, order and buffers).

    Their ``noises.noise_{i}`` buffers get ``G.checkpoint_noise`` when set, else seeded
    standard-normal maps (what rosinality initialises them with).
    """
    cfg = G.cfg
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
            dst = f"synthesis.convs.{i}"
            v = {"conv.weight": lambda: sd[f"{dst}.weight"][None],
                 "conv.modulation.weight": lambda: sd[f"{dst}.affine.weight"],
                 "conv.modulation.bias": lambda: sd[f"{dst}.affine.bias"],
                 "noise.weight": lambda: sd[f"{dst}.noise_strength"].reshape(1),
                 "activate.bias": lambda: sd[f"{dst}.bias"]}[tail]()
        else:  # to_rgb1 / to_rgbs.k
            kk = 0 if parts[0] == "to_rgb1" else int(parts[1]) + 1
            tail = ".".join(parts[1:] if parts[0] == "to_rgb1" else parts[2:])
            dst = f"synthesis.to_rgbs.{kk}"
            v = {"bias": lambda: sd[f"{dst}.bias"].reshape(1, 3, 1, 1),
                 "conv.weight": lambda: sd[f"{dst}.weight"][None],
                 "conv.modulation.weight": lambda: sd[f"{dst}.affine.weight"],
                 "conv.modulation.bias": lambda: sd[f"{dst}.affine.bias"]}[tail]()
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
    _atomic_torch_save(payload, Path(path))


# --------------------------------------------------------------------------------------------
# NVIDIA stylegan2-ada-pytorch / stylegan3 pickles


def _module_tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Parameters and buffers of a pickled module tree under their dotted names."""
    if not isinstance(obj, PickledObject) or not isinstance(obj.state, Mapping):
        raise UnsupportedCheckpointError(f"expected a pickled torch module at {prefix or 'top level'!r}")
    out: dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (obj.state.get(group) or {}).items():
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise UnsupportedCheckpointError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[f"{prefix}{name}"] = t
    for name, sub in (obj.state.get("_modules") or {}).items():
        if sub is not None:
            out.update(_module_tensors(sub, f"{prefix}{name}."))
    return out


def _submodule(obj: PickledObject, name: str) -> PickledObject | None:
    mods = obj.state.get("_modules") if isinstance(obj.state, Mapping) else None
    sub = (mods or {}).get(name)
    return sub if isinstance(sub, PickledObject) else None


_NV_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels",
                      "mapping_kwargs", "synthesis_kwargs")


def read_nvidia_pickle(path: str | os.PathLike[str], key: str = "G_ema") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(init_kwargs, tensors)`` of the generator ``key`` in an NVIDIA network pickle.

    Read with the restricted unpickler: ``init_kwargs`` as NVIDIA's ``Generator`` received them
    (nested dicts), ``tensors`` its parameters and buffers under NVIDIA's dotted names
    (``synthesis.b4.conv1.weight``, ``mapping.w_avg``, ...).
    """
    with open(path, "rb") as f:
        data = restricted_pickle_load(f, context=f"NVIDIA pickle {Path(path).name}")
    gen = _nvidia_generator_object(data, key)
    return _nvidia_init_kwargs(gen), _module_tensors(gen)


def _nvidia_generator_object(data: Any, key: str = "G_ema") -> PickledObject:
    if isinstance(data, Mapping):
        if key not in data:
            raise UnsupportedCheckpointError(f"NVIDIA pickle has no {key!r} (keys: {sorted(map(str, data))})")
        gen = data[key]
    else:
        gen = data
    if not isinstance(gen, PickledObject) or gen.class_name != "Generator":
        raise UnsupportedCheckpointError(f"{key} in the pickle is {gen!r}, not a Generator")
    return gen


def _nvidia_init_kwargs(gen: PickledObject) -> dict[str, Any]:
    state = gen.state if isinstance(gen.state, Mapping) else {}
    args = tuple(state.get("_init_args") or ())
    kwargs = dict(state.get("_init_kwargs") or {})
    kwargs.update(zip(_NV_GENERATOR_ARGS, args))  # positional arguments, if any were used
    return _plain(kwargs)


def _plain(obj: Any) -> Any:
    """EasyDicts and numpy scalars -> plain dicts and Python numbers (JSON-able)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _NDArrayRecord) and obj.value is not None:
        return obj.value.tolist()
    return obj


def _nvidia_config(kw: Mapping[str, Any], fmt: str = "nvidia-pkl") -> GeneratorConfig:
    """Our config from NVIDIA ``Generator`` init kwargs; refuse what our network cannot run."""
    mk = dict(kw.get("mapping_kwargs") or {})
    sk = dict(kw.get("synthesis_kwargs") or {})
    problems = []
    if int(kw.get("c_dim", 0) or 0) > 0:
        problems.append(f"conditional generator (c_dim={kw.get('c_dim')}): class labels are not supported")
    if int(kw.get("img_channels", 3)) != 3:
        problems.append(f"img_channels={kw.get('img_channels')} (only RGB generators are supported)")
    if sk.get("architecture", "skip") != "skip":
        problems.append(f"synthesis architecture {sk.get('architecture')!r} (only 'skip', the "
                        "StyleGAN2 config-e/f generator, is supported)")
    for name, val in (("mapping activation", mk.get("activation", "lrelu")),
                      ("synthesis activation", sk.get("activation", "lrelu"))):
        if val != "lrelu":
            problems.append(f"{name} {val!r} (only 'lrelu')")
    if mk.get("layer_features") not in (None, kw.get("w_dim", 512)):
        problems.append(f"mapping layer_features={mk.get('layer_features')} != w_dim")
    rf = sk.get("resample_filter", [1, 3, 3, 1])
    if list(rf) != [1, 3, 3, 1]:
        problems.append(f"resample_filter {rf} (only [1, 3, 3, 1])")
    if problems:
        raise UnsupportedCheckpointError(f"{fmt}: cannot load this generator: " + "; ".join(problems))
    channel_base = int(sk.get("channel_base", 32768))
    cm = channel_base / 16384
    conv_clamp = sk.get("conv_clamp")
    return GeneratorConfig(
        resolution=int(kw["img_resolution"]),
        channel_multiplier=int(cm) if cm.is_integer() else cm,
        channel_max=int(sk.get("channel_max", 512)),
        n_mapping=int(mk.get("num_layers", 8)),
        w_dim=int(kw.get("w_dim", 512)),
        z_dim=int(kw.get("z_dim", 512)),
        mapping_lr_mul=float(mk.get("lr_multiplier", 0.01)),
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
    )


def _nvidia_to_canonical(cfg: GeneratorConfig, t: Mapping[str, Tensor], fmt: str,
                         use_noise: bool = True) -> tuple[dict[str, Tensor], list[Tensor], bool]:
    """NVIDIA names -> ours. Returns ``(state_dict, noise_const maps, has_w_avg)``."""
    expected = _nvidia_state_shapes(cfg, use_noise=use_noise, has_w_avg="mapping.w_avg" in t)
    _strict_check(fmt, cfg, {k: tuple(v.shape) for k, v in t.items()}, expected)
    fir = make_fir_filter()
    for k, v in t.items():
        if k.endswith("resample_filter") and not torch.allclose(v.float(), fir):
            raise UnsupportedCheckpointError(f"{fmt}: {k} is not the normalised [1, 3, 3, 1] filter")

    out: dict[str, Tensor] = {}
    for i in range(cfg.n_mapping):
        out[f"mapping.fcs.{i}.weight"] = t[f"mapping.fc{i}.weight"]
        out[f"mapping.fcs.{i}.bias"] = t[f"mapping.fc{i}.bias"]
    has_w_avg = "mapping.w_avg" in t
    out["w_avg"] = t["mapping.w_avg"] if has_w_avg else torch.zeros(cfg.w_dim)
    out["synthesis.const"] = t["synthesis.b4.const"]
    noise: list[Tensor] = []
    for i, name in enumerate(_nvidia_conv_names(cfg)):
        dst = f"synthesis.convs.{i}"
        for ours, theirs in (("weight", "weight"), ("bias", "bias"), ("affine.weight", "affine.weight"),
                             ("affine.bias", "affine.bias")):
            out[f"{dst}.{ours}"] = t[f"{name}.{theirs}"]
        r = cfg.conv_resolution(i)
        if use_noise:
            out[f"{dst}.noise_strength"] = t[f"{name}.noise_strength"]
            noise.append(t[f"{name}.noise_const"].reshape(1, 1, r, r))
        else:  # use_noise=False: the layer has no noise input at all
            out[f"{dst}.noise_strength"] = torch.zeros(())
            noise.append(torch.zeros(1, 1, r, r))
    for k in range(cfg.log2_res - 1):
        r = 4 * 2**k
        for part in ("weight", "bias", "affine.weight", "affine.bias"):
            out[f"synthesis.to_rgbs.{k}.{part}"] = t[f"synthesis.b{r}.torgb.{part}"]
    return out, noise, has_w_avg


def _nvidia_conv_names(cfg: GeneratorConfig) -> list[str]:
    """NVIDIA layer names in our conv order: b4.conv1, b8.conv0, b8.conv1, b16.conv0, ..."""
    names = ["synthesis.b4.conv1"]
    for j in range(cfg.log2_res - 2):
        r = 8 * 2**j
        names += [f"synthesis.b{r}.conv0", f"synthesis.b{r}.conv1"]
    return names


def _nvidia_state_shapes(cfg: GeneratorConfig, *, use_noise: bool = True,
                         has_w_avg: bool = True) -> dict[str, tuple[int, ...]]:
    """Every parameter/buffer of NVIDIA's skip ``Generator`` (c_dim=0) for ``cfg``."""
    c, w = cfg.channels, cfg.w_dim
    shapes: dict[str, tuple[int, ...]] = {}
    shapes["synthesis.b4.const"] = (c(4), 4, 4)
    for res in (4 * 2**k for k in range(cfg.log2_res - 1)):
        b = f"synthesis.b{res}"
        shapes[f"{b}.resample_filter"] = (4, 4)
        layers = [("conv1", c(4), False)] if res == 4 else [("conv0", c(res // 2), True), ("conv1", c(res), False)]
        for name, cin, _up in layers:
            p = f"{b}.{name}"
            shapes[f"{p}.weight"] = (c(res), cin, 3, 3)
            shapes[f"{p}.bias"] = (c(res),)
            shapes[f"{p}.affine.weight"] = (cin, w)
            shapes[f"{p}.affine.bias"] = (cin,)
            shapes[f"{p}.resample_filter"] = (4, 4)
            if use_noise:
                shapes[f"{p}.noise_strength"] = ()
                shapes[f"{p}.noise_const"] = (res, res)
        shapes[f"{b}.torgb.weight"] = (3, c(res), 1, 1)
        shapes[f"{b}.torgb.bias"] = (3,)
        shapes[f"{b}.torgb.affine.weight"] = (c(res), w)
        shapes[f"{b}.torgb.affine.bias"] = (c(res),)
    dims = [cfg.z_dim] + [w] * cfg.n_mapping
    for i in range(cfg.n_mapping):
        shapes[f"mapping.fc{i}.weight"] = (dims[i + 1], dims[i])
        shapes[f"mapping.fc{i}.bias"] = (dims[i + 1],)
    if has_w_avg:
        shapes["mapping.w_avg"] = (w,)
    return shapes


def _nvidia_from_pickle(data: Any, key: str = "G_ema") -> StyleGAN2:
    gen = _nvidia_generator_object(data, key)
    synthesis = _submodule(gen, "synthesis")
    if synthesis is None or _submodule(synthesis, "b4") is None:
        names = sorted((synthesis.state.get("_modules") or {}) if synthesis is not None else [])
        raise UnsupportedCheckpointError(
            "NVIDIA pickle: the generator's synthesis network has no StyleGAN2 blocks (b4, b8, ...); "
            f"found {names[:8]}. StyleGAN3 (alias-free) generators are not supported.")
    kw = _nvidia_init_kwargs(gen)
    cfg = _nvidia_config(kw)
    use_noise = bool(dict(kw.get("synthesis_kwargs") or {}).get("use_noise", True))
    sd, noise, has_w_avg = _nvidia_to_canonical(cfg, _module_tensors(gen), "nvidia-pkl", use_noise)
    return _finish(cfg, sd, "nvidia-pkl", has_w_avg=has_w_avg, noise=noise)


# --------------------------------------------------------------------------------------------
# TensorFlow StyleGAN2 pickles


def _tf_state(net: Any, what: str) -> Mapping[str, Any]:
    if not (isinstance(net, PickledObject) and net.qualname == "dnnlib.tflib.network.Network"
            and isinstance(net.state, Mapping)):
        raise UnsupportedCheckpointError(f"TensorFlow pickle: {what} is not a dnnlib.tflib Network")
    return net.state


def _tf_variables(net: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """All variables of a TF network and its components, ``component/.../name`` -> array."""
    state = _tf_state(net, prefix or "the network")
    out: dict[str, np.ndarray] = {}
    for name, value in state.get("variables") or []:
        arr = value.value if isinstance(value, _NDArrayRecord) else value
        if isinstance(arr, np.generic):
            arr = np.asarray(arr)
        if not isinstance(arr, np.ndarray):
            raise UnsupportedCheckpointError(f"TensorFlow variable {prefix}{name} is not an array")
        out[f"{prefix}{name}"] = arr
    for name, comp in (state.get("components") or {}).items():
        out.update(_tf_variables(comp, f"{prefix}{name}/"))
    return out


# static_kwargs of a TF G_main -> what they mean for us (names as in NVIDIA's networks_stylegan2.py)
_TF_KNOWN_KWARGS = {
    "latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers",
    "label_fmaps", "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta",
    "fmap_base", "fmap_max", "num_fp16_res", "conv_clamp", "architecture", "resample_kernel",
    "use_noise", "nonlinearity", "truncation_psi", "truncation_cutoff", "style_mixing_prob",
    "structure",
}


def _tf_from_pickle(data: Any) -> StyleGAN2:
    if isinstance(data, tuple) and len(data) == 3:
        net = data[2]  # (G, D, Gs): Gs is the moving average, the one to use
    else:
        net = data
    state = _tf_state(net, "Gs")
    if int(state.get("version", 0)) < 4:
        raise UnsupportedCheckpointError(f"TensorFlow pickle version {state.get('version')} < 4 is too old")
    kw = dict(state.get("static_kwargs") or {})
    unknown = sorted(set(kw) - _TF_KNOWN_KWARGS)
    if unknown:
        raise UnsupportedCheckpointError(f"TensorFlow pickle: unknown generator kwargs {unknown}")
    variables = _tf_variables(net)
    if any(k.startswith("ToRGB_lod") or "/ToRGB_lod" in k for k in variables):
        raise UnsupportedCheckpointError("TensorFlow pickle: progressive-growing ('orig') generator not supported")

    def get(name: str, default: Any) -> Any:
        val = kw.get(name, default)
        return default if val is None else val

    nv_kwargs = {
        "z_dim": get("latent_size", 512), "c_dim": get("label_size", 0), "w_dim": get("dlatent_size", 512),
        "img_resolution": get("resolution", 1024), "img_channels": get("num_channels", 3),
        "mapping_kwargs": {"num_layers": get("mapping_layers", 8), "layer_features": kw.get("mapping_fmaps"),
                           "activation": get("mapping_nonlinearity", "lrelu"),
                           "lr_multiplier": get("mapping_lrmul", 0.01)},
        "synthesis_kwargs": {"channel_base": get("fmap_base", 16384) * 2, "channel_max": get("fmap_max", 512),
                             "conv_clamp": kw.get("conv_clamp"), "architecture": get("architecture", "skip"),
                             "resample_filter": list(get("resample_kernel", [1, 3, 3, 1])),
                             "use_noise": get("use_noise", True), "activation": get("nonlinearity", "lrelu")},
    }
    cfg = _nvidia_config(nv_kwargs, "nvidia-tf-pkl")
    use_noise = bool(nv_kwargs["synthesis_kwargs"]["use_noise"])
    tensors = _tf_to_nvidia_names(cfg, variables, use_noise)
    sd, noise, has_w_avg = _nvidia_to_canonical(cfg, tensors, "nvidia-tf-pkl", use_noise)
    return _finish(cfg, sd, "nvidia-tf-pkl", has_w_avg=has_w_avg, noise=noise)


def _tf_to_nvidia_names(cfg: GeneratorConfig, v: Mapping[str, np.ndarray], use_noise: bool) -> dict[str, Tensor]:
    """TF variable names/layouts -> NVIDIA PyTorch names/layouts (as their legacy.py maps them).

    TF convolution kernels are ``[kh, kw, in, out]`` (-> ``[out, in, kh, kw]``), dense weights
    ``[in, out]``; TF's modulation bias is stored without the +1 init; TF's up-sampling conv is
    a true transposed convolution, so its kernel is spatially flipped relative to PyTorch's.
    """
    def take(name: str) -> np.ndarray:
        if name not in v:
            raise CheckpointMismatchError("nvidia-tf-pkl", cfg, [name], [], {}, "TensorFlow variables")
        return np.asarray(v[name], dtype=np.float32)

    def conv(prefix: str, flip: bool = False) -> np.ndarray:
        k = take(f"{prefix}/weight")
        if flip:
            k = k[::-1, ::-1]
        return k.transpose(3, 2, 0, 1)

    out: dict[str, np.ndarray] = {}
    fir = make_fir_filter().numpy()
    if "dlatent_avg" in v:
        out["mapping.w_avg"] = take("dlatent_avg")
    for i in range(cfg.n_mapping):
        out[f"mapping.fc{i}.weight"] = take(f"mapping/Dense{i}/weight").T
        out[f"mapping.fc{i}.bias"] = take(f"mapping/Dense{i}/bias")
    out["synthesis.b4.const"] = take("synthesis/4x4/Const/const")[0]
    for i, name in enumerate(_nvidia_conv_names(cfg)):
        r = cfg.conv_resolution(i)
        tf_name = f"synthesis/{r}x{r}/" + ("Conv" if i == 0 else "Conv0_up" if i % 2 else "Conv1")
        out[f"{name}.weight"] = conv(tf_name, flip=i % 2 == 1)
        out[f"{name}.bias"] = take(f"{tf_name}/bias")
        out[f"{name}.affine.weight"] = take(f"{tf_name}/mod_weight").T
        out[f"{name}.affine.bias"] = take(f"{tf_name}/mod_bias") + 1
        out[f"{name}.resample_filter"] = fir
        if use_noise:
            out[f"{name}.noise_strength"] = take(f"{tf_name}/noise_strength").reshape(())
            out[f"{name}.noise_const"] = take(f"synthesis/noise{i}")[0, 0]
    for k in range(cfg.log2_res - 1):
        r = 4 * 2**k
        tf_name = f"synthesis/{r}x{r}/ToRGB"
        out[f"synthesis.b{r}.resample_filter"] = fir
        out[f"synthesis.b{r}.torgb.weight"] = conv(tf_name)
        out[f"synthesis.b{r}.torgb.bias"] = take(f"{tf_name}/bias")
        out[f"synthesis.b{r}.torgb.affine.weight"] = take(f"{tf_name}/mod_weight").T
        out[f"synthesis.b{r}.torgb.affine.bias"] = take(f"{tf_name}/mod_bias") + 1
    # np.array, not np.ascontiguousarray: the latter turns 0-d arrays (noise_strength) into [1].
    return {k: torch.from_numpy(np.array(a, dtype=np.float32, order="C")) for k, a in out.items()}

