"""What a checkpoint pickle may build: the allow-list of inert globals.

NVIDIA's network pickles (stylegan2-ada-pytorch / stylegan3, and the original TensorFlow
ones) are read with i2score's restricted unpickler
(:class:`~i2score.weights.unpickle.RestrictedUnpickler`), which resolves only the globals listed
here: safe re-implementations of torch's tensor/storage rebuilders, ``OrderedDict``, numpy's
array helpers (:func:`~i2score.weights.unpickle.array_globals`), and data-only stand-ins for
NVIDIA's persistence records, ``dnnlib``'s ``EasyDict`` and TF networks. No code from the file
ever runs, and NVIDIA's packages are not needed.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Any, BinaryIO

import torch
from torch import Tensor

from i2score.generator.checkpoints.errors import UnsupportedCheckpointError
from i2score.weights.unpickle import RestrictedUnpickler, array_globals

__all__ = [
    "TORCH_LEGACY_MAGIC",
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


class _EasyDict(dict[str, Any]):
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
        extent = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True)) + 1
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

    def plain(context: str) -> RestrictedUnpickler:  # the small header pickles: no globals at all
        return RestrictedUnpickler(f, {}, context=context)

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
    ref = RestrictedUnpickler(f, allowed, persistent=persistent, context="storage").load()
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


def _reconstruct_persistent_obj(meta: Any) -> PickledObject:
    """Replacement for NVIDIA's ``torch_utils.persistence._reconstruct_persistent_obj``.

    Theirs ``exec``s ``meta['module_src']`` (the pickled source of the network module) and
    instantiates the class from it. Ours records the class name and the state and ignores the
    source entirely: no code from the pickle is ever compiled or run.
    """
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("unexpected torch_utils.persistence record")
    return PickledObject("persistent", str(meta.get("class_name")), state=meta.get("state"))


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
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("dnnlib.tflib.network", "Network"): _stub_class("dnnlib.tflib.network.Network"),
        **array_globals(),
    }
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
    """Unpickle a checkpoint with the allow-list; see :class:`~i2score.weights.unpickle.RestrictedUnpickler`.

    Raises:
        UnsafePickleError: the pickle names any other global (``os.system``, ``eval``, ...).
    """
    return RestrictedUnpickler(file, checkpoint_globals(), dynamic=dynamic_globals, context=context).load()
