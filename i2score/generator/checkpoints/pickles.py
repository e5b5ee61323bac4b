"""What a checkpoint pickle may build: the allow-list of inert globals.

NVIDIA's network pickles (stylegan2-ada-pytorch / stylegan3, and the original TensorFlow
ones) are read with a restricted unpickler that resolves only the globals listed here: safe
re-implementations of torch's tensor/storage rebuilders, ``OrderedDict``, a few numpy helpers,
and data-only stand-ins for NVIDIA's persistence records, ``dnnlib``'s ``EasyDict`` and TF
networks. No code from the file ever runs, and NVIDIA's packages are not needed.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import pickle
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from i2score.generator.checkpoints.errors import UnsupportedCheckpointError
from i2score.weights.unpickle import UnsafePickleError

__all__ = [
    "TORCH_LEGACY_MAGIC",
    "NDArrayRecord",
    "PickledObject",
    "checkpoint_globals",
    "dynamic_globals",
    "restricted_pickle_load",
]

# Magic number that opens the legacy (pre-zip) torch.save stream, and that torch still writes
# inside every storage pickled with plain ``pickle`` (``torch.storage._load_from_bytes``).
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001


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
    if plain("storage magic").load() != TORCH_LEGACY_MAGIC:
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


class NDArrayRecord:
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


def _np_reconstruct(cls: Any, shape: Any = (0,), dtype: Any = b"b") -> NDArrayRecord:
    if cls is not _NDArrayMarker:
        raise pickle.UnpicklingError("numpy _reconstruct of something other than ndarray")
    return NDArrayRecord()


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


def checkpoint_globals() -> dict[tuple[str, str], Any]:
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


def dynamic_globals(module: str, name: str) -> Any | None:
    """Stand-in for a global not in :func:`checkpoint_globals` that is still safe, else ``None``."""
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
    return _RestrictedUnpickler(file, checkpoint_globals(), dynamic=dynamic_globals,
                                context=context).load()
