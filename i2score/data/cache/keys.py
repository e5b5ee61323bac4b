"""Cache keys: which inputs identify an embedding, and how they are hashed.

A key is the hex sha256 of the image and mask hashes, the generator's weights hash, the algorithm,
its canonical parameters and the algorithm version (:func:`cache_key`). The tag
``i2score.cache-key/1`` is hashed first, so a change of the recipe can never collide with keys
made by this one. Keys become object paths (:func:`npz_path`), so only a 64-digit lowercase hex
digest is accepted as one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

_KEY_TAG = b"i2score.cache-key/1"
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def _canonical_value(value: Any, path: str) -> Any:
    """JSON-ready value with one spelling per meaning (see :func:`canonical_params`)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"params{path}: non-finite float {value!r} cannot be part of a cache key")
        # 5000.0 and 5000 run the same computation, so they must give the same key.
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"params{path}: keys must be strings, got {k!r}")
            out[k] = _canonical_value(v, f"{path}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    # str(obj) is not a stable identity for arbitrary objects (addresses, reprs change).
    raise TypeError(f"params{path}: unsupported type {type(value).__name__} in a cache key; "
                    "pass plain JSON values (str, int, float, bool, None, lists, dicts)")


def canonical_params(params: Mapping[str, Any]) -> str:
    """Canonical JSON of algorithm parameters: sorted keys, no whitespace, UTF-8.

    Floats use Python's shortest round-trip ``repr`` (stable across platforms and versions);
    integral floats are written as ints (``5000.0`` == ``5000``); tuples become lists; numpy
    scalars become Python scalars; NaN/inf and non-JSON objects are rejected.
    """
    return json.dumps(_canonical_value(dict(params), ""), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _lp(part: bytes) -> bytes:
    # Length prefix: ("ab", "c") and ("a", "bc") must not hash the same.
    return len(part).to_bytes(8, "big") + part


def _key_from_fields(*, image_sha256: str, mask_sha256: str | None, generator_sha256: str,
                     algorithm: str, params_json: str, algorithm_version: int) -> str:
    if not generator_sha256:
        raise ValueError("generator_sha256 is required (a key without the weights hash would "
                         "serve one generator's latents for another)")
    h = hashlib.sha256()
    for part in (
        _KEY_TAG,
        image_sha256.lower().encode(),
        b"" if mask_sha256 is None else mask_sha256.lower().encode(),  # None != b"" mask
        generator_sha256.lower().encode(),
        algorithm.encode(),
        params_json.encode(),
        str(int(algorithm_version)).encode(),
    ):
        h.update(_lp(part))
    return h.hexdigest()


def cache_key(*, image_bytes: bytes, mask_bytes: bytes | None, generator_sha256: str, algorithm: str,
              params: Mapping[str, Any], algorithm_version: int) -> str:
    """Hex sha256 identifying one embedding.

    ``sha256(tag ‖ lp(sha256(image)) ‖ lp(sha256(mask) or "") ‖ lp(generator_sha256) ‖
    lp(algorithm) ‖ lp(canonical_params(params)) ‖ lp(str(algorithm_version)))`` where ``lp``
    prefixes each part with its 8-byte length, so no two different tuples concatenate to the same
    bytes. The image and mask enter through their own sha256 (hex), which is just as
    collision-resistant and lets the key be recomputed from the stored hashes when an entry is
    verified. ``mask_bytes=None`` (no mask) and ``b""`` give different keys. The generator *name*
    is not part of the key: its weights hash is what determines the result.
    """
    return _key_from_fields(image_sha256=sha256_hex(image_bytes),
                            mask_sha256=None if mask_bytes is None else sha256_hex(mask_bytes),
                            generator_sha256=generator_sha256, algorithm=algorithm,
                            params_json=canonical_params(params), algorithm_version=algorithm_version)


def make_source(*, image_bytes: bytes, mask_bytes: bytes | None, generator_sha256: str, algorithm: str,
                params: Mapping[str, Any], algorithm_version: int, generator_id: str | None = None,
                source_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(key, source)`` for :meth:`LatentCache.put`: the key and the provenance stored with it.

    ``source_id`` is the caller's name for the input (a manifest row id or the image URL without
    credentials); it is informational and not part of the key.
    """
    source = {
        "id": source_id,
        "image_sha256": sha256_hex(image_bytes),
        "mask_sha256": None if mask_bytes is None else sha256_hex(mask_bytes),
        "generator_id": generator_id,
        "generator_sha256": generator_sha256,
        "algorithm": algorithm,
        "algorithm_version": int(algorithm_version),
        "params": json.loads(canonical_params(params)),
    }
    return source_key(source), source


def source_key(source: Mapping[str, Any]) -> str:
    """The cache key described by a ``source`` dict (as built by :func:`make_source`)."""
    missing = [k for k in ("image_sha256", "generator_sha256", "algorithm", "algorithm_version", "params")
               if source.get(k) is None]
    if missing:
        raise ValueError(f"source lacks {missing}; build it with i2score.data.cache.make_source")
    return _key_from_fields(image_sha256=source["image_sha256"], mask_sha256=source.get("mask_sha256"),
                            generator_sha256=source["generator_sha256"], algorithm=source["algorithm"],
                            params_json=canonical_params(source["params"]),
                            algorithm_version=int(source["algorithm_version"]))


def _check_key(key: str) -> str:
    # Keys become object paths: only a lowercase hex digest may get there.
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"not a cache key (64 lowercase hex digits): {key!r}")
    return key


def npz_path(key: str) -> str:
    """Path of an entry's NPZ relative to the root: ``cache/latents/<k[:2]>/<key>.npz``."""
    return f"cache/latents/{_check_key(key)[:2]}/{key}.npz"
