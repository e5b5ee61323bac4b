"""Content-addressed latent cache: one NPZ per embedding plus Parquet index parts.

Layout under a root URL (any fsspec URL: local path, ``file://``, ``s3://``, ``memory://``)::

    <root>/cache/latents/<key[:2]>/<key>.npz     w, every noise map and metadata; one PUT
    <root>/cache/index/part-<ts>-<uuid>.parquet  index rows; one PUT per part, never rewritten

Write protocol (S3 has no rename and no multi-object transaction):

1. The NPZ is written in one PUT (local files: temp file + atomic rename), so an object either
   does not exist or is complete. It carries a sha256 of its arrays and every field of its index
   row, so it can be verified on its own and re-indexed without recomputation.
2. Only then an index part holding the row is written (one PUT, never modified afterwards).

A crash between 1 and 2 leaves an *orphan* NPZ. :meth:`LatentCache.lookup` adopts orphans
among the keys it is asked about, and :meth:`LatentCache.adopt_orphans` (call it once at the
start of a run) adopts all of them: the NPZ is verified and an index row written from its
metadata (``status="adopted"``). Nothing is recomputed.

Concurrent writers of the same key are harmless: each writes a complete NPZ (the last PUT
wins; the arrays of a deterministic embedding are identical) and its own index part; readers
collapse duplicate rows for a key to the newest one. A reader never trusts an index row alone:
:meth:`LatentCache.lookup` drops rows whose NPZ is absent (a listing, see there) and
:meth:`LatentCache.get` verifies the NPZ's checksum, returning ``None`` for a partial or corrupt
object so the caller recomputes and re-puts (``put`` overwrites an NPZ that fails verification).

Index parts (explicit schema, :func:`index_schema`): ``w`` is a
``pa.fixed_shape_tensor(pa.float32(), [L, w_dim])`` column. ``L`` and ``w_dim`` depend on the
generator, and a Parquet column has one type, so **each part holds rows of one w shape**: a
batch mixing generators writes one part per shape, and compaction merges parts per shape. The
shape is also stored in the ``num_ws``/``w_dim`` columns and in the part's schema metadata, so
readers that skip the (large: ``L * w_dim * 4`` bytes a row) ``w`` column still see it. Lookups
read every part once with ``w`` projected out (ranged reads of the other column chunks), so a
100k-entry index costs a few MB to look up rather than gigabytes.

Noise maps are float32 by default; ``noise_dtype="float16"`` halves the NPZ size (noise maps are
most of it at high resolution: ~2.8 M values at 1024 px vs 9,216 for ``w``). Measured cost on
the small test generator (``StyleGAN2(32, channel_max=32, n_mapping=2, seed=1)``, CPU), as the
PSNR between renders of the same ``w`` with float32 noise and with float16-rounded noise:
87.6 dB mean (85.2 dB worst of 8) for random ``N(0, 1)`` noise, and 79.4 dB mean (76.9 dB worst
of 4) for noise optimised by a short reconstruction (100 + 200 steps; optimised noise reaches
|n| ~ 135, so its absolute rounding error is larger). Reconstruction PSNRs against the target
are 25-40 dB, so the rounding is invisible there. ``w`` always stays float32.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from i2score.data import storage

if TYPE_CHECKING:  # i2score.data.latents imports torch; index-only commands (``i2s cache ls``) skip it
    from i2score.data.latents import Latents

log = logging.getLogger(__name__)

#: Format tag of the NPZ metadata (``meta["cache"]["format"]``).
ENTRY_FORMAT = "i2score.latent-cache/1"
#: Version of the index part schema (``i2score.index_version`` in the part metadata).
INDEX_VERSION = 1
_KEY_TAG = b"i2score.cache-key/1"
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_NOISE_DTYPES = {"float32": np.float32, "float16": np.float16}
#: Metric columns of the index (nullable float64).
METRIC_COLUMNS = ("psnr_w", "psnr_wn", "mse", "ssim", "lpips")
#: Timing columns of the index: ``seconds`` float64, step counts int32 (all nullable).
TIMING_COLUMNS = ("seconds", "steps_w", "steps_n", "steps")
#: Up to this many keys, :meth:`LatentCache.lookup` checks NPZ existence with one HEAD per key
#: instead of listing ``cache/latents/`` (up to 256 shard listings, ~1 request per 1000 objects).
HEAD_CHECK_MAX_KEYS = 32


# -- keys ----------------------------------------------------------------------------------
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
        raise ValueError(f"source lacks {missing}; build it with i2score.data.cache.store.make_source")
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


# -- index schema --------------------------------------------------------------------------
def index_schema(num_ws: int, w_dim: int) -> pa.Schema:
    """Schema of an index part whose rows have ``w`` of shape ``[num_ws, w_dim]``.

    Only the ``w`` type (and the ``i2score.w_shape`` metadata) differ between shapes; every other
    column is identical, so parts read without ``w`` concatenate directly.
    """
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("npz_path", pa.string(), nullable=False),  # relative to the root: no credentials
        pa.field("source_id", pa.string()),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string()),
        pa.field("generator_id", pa.string()),
        pa.field("generator_sha256", pa.string(), nullable=False),
        pa.field("algorithm", pa.string(), nullable=False),
        pa.field("algorithm_version", pa.int32(), nullable=False),
        pa.field("params", pa.string(), nullable=False),  # canonical JSON
        pa.field("num_ws", pa.int32(), nullable=False),
        pa.field("w_dim", pa.int32(), nullable=False),
        pa.field("noise_dtype", pa.string(), nullable=False),
        pa.field("checksum", pa.string(), nullable=False),  # sha256 of the NPZ's arrays
        pa.field("npz_bytes", pa.int64(), nullable=False),
        *[pa.field(m, pa.float64()) for m in METRIC_COLUMNS],
        pa.field("seconds", pa.float64()),
        *[pa.field(s, pa.int32()) for s in TIMING_COLUMNS[1:]],
        pa.field("extra", pa.string()),  # other metric/timing keys as JSON, or null
        pa.field("status", pa.string(), nullable=False),  # "ok" (put) or "adopted" (orphan repair)
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # Last: the other columns of a row group then lie in one contiguous byte range, which a
        # lookup (w projected out) fetches in one ranged read.
        pa.field("w", pa.fixed_shape_tensor(pa.float32(), [num_ws, w_dim]), nullable=False),
    ]
    meta = {"i2score.index_version": str(INDEX_VERSION), "i2score.w_shape": json.dumps([num_ws, w_dim])}
    return pa.schema(fields, metadata=meta)


#: Columns read by lookups (everything but ``w``).
LOOKUP_COLUMNS: tuple[str, ...] = tuple(f.name for f in index_schema(1, 1) if f.name != "w")


# -- entries ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    """One index row (without ``w``; :meth:`LatentCache.get` loads the latents)."""

    key: str
    npz_url: str
    npz_path: str
    source_id: str | None
    image_sha256: str
    mask_sha256: str | None
    generator_id: str | None
    generator_sha256: str
    algorithm: str
    algorithm_version: int
    params_json: str
    w_shape: tuple[int, int]
    noise_dtype: str
    checksum: str
    npz_bytes: int
    metrics: dict[str, float | None]
    timings: dict[str, float | int | None]
    status: str
    created_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)


class CorruptEntryError(ValueError):
    """An NPZ that is partial, unreadable or inconsistent with its own checksum/metadata."""


@dataclass
class VerifyReport:
    """Result of :meth:`LatentCache.verify`. ``ok`` is False when anything needs attention
    besides orphans (which :meth:`LatentCache.adopt_orphans` repairs)."""

    index_parts: int = 0
    index_rows: int = 0
    keys: int = 0
    verified: int = 0
    missing: list[str] = field(default_factory=list)  # index row, no NPZ
    corrupt: dict[str, str] = field(default_factory=dict)  # key -> reason (indexed or orphan)
    mismatched: dict[str, str] = field(default_factory=dict)  # no row agrees with the NPZ
    orphans: list[str] = field(default_factory=list)  # valid NPZ, no index row
    bad_parts: dict[str, str] = field(default_factory=dict)  # unreadable index parts

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.mismatched or self.bad_parts)


@dataclass
class CompactReport:
    """Result of :meth:`LatentCache.compact`."""

    parts_before: int = 0
    parts_after: int = 0
    rows_before: int = 0
    rows_after: int = 0
    duplicates_dropped: int = 0
    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bad_parts: dict[str, str] = field(default_factory=dict)  # unreadable: left in place


# -- NPZ encoding ----------------------------------------------------------------------------
def _array_checksum(arrays: Sequence[tuple[str, np.ndarray]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each array, in order, length-prefixed."""
    h = hashlib.sha256()
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(_lp(name.encode()))
        h.update(_lp(a.dtype.str.encode()))
        h.update(_lp(json.dumps(list(a.shape)).encode()))
        h.update(_lp(a.tobytes()))
    return h.hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _split_numbers(metrics: Mapping[str, Any] | None, timings: Mapping[str, Any] | None
                   ) -> tuple[dict[str, float | None], dict[str, float | int | None], dict[str, Any]]:
    """Known metric and timing columns, plus everything else (kept as JSON in ``extra``)."""
    merged = {**(metrics or {}), **(timings or {})}
    m = {k: (None if merged.get(k) is None else float(merged[k])) for k in METRIC_COLUMNS}
    t: dict[str, float | int | None] = {"seconds": None if merged.get("seconds") is None else float(merged["seconds"])}
    for k in TIMING_COLUMNS[1:]:
        t[k] = None if merged.get(k) is None else int(merged[k])
    extra = {k: v for k, v in merged.items() if k not in METRIC_COLUMNS and k not in TIMING_COLUMNS}
    return m, t, extra


def encode_entry(key: str, latents: Latents, *, source: Mapping[str, Any], metrics: Mapping[str, Any] | None,
                 timings: Mapping[str, Any] | None, noise_dtype: str = "float32",
                 created_at: datetime | None = None) -> tuple[bytes, dict[str, Any]]:
    """NPZ bytes of one entry and its ``cache`` metadata (also stored inside the NPZ).

    ``latents`` must hold one image. The NPZ is :meth:`Latents.to_npz_bytes` with
    ``meta["cache"]`` = key, format, arrays checksum, shapes, noise dtype, created_at, source,
    metrics, timings — all an index row needs, so an orphan can be re-indexed.
    """
    _check_key(key)
    if len(latents) != 1:
        raise ValueError(f"a cache entry holds one image, got a batch of {len(latents)}")
    if noise_dtype not in _NOISE_DTYPES:
        raise ValueError(f"noise_dtype must be one of {sorted(_NOISE_DTYPES)}, got {noise_dtype!r}")
    expected = source_key(source)
    if expected != key:
        raise ValueError(f"key {key[:12]}… does not match its source (which hashes to {expected[:12]}…)")
    np_dtype = _NOISE_DTYPES[noise_dtype]
    # The same conversions Latents.to_npz_bytes applies, so the checksum covers the stored bytes.
    w = latents.w.detach().cpu().float().numpy()
    with np.errstate(over="ignore"):  # overflow is checked just below, with a clearer message
        noises = [n.detach().cpu().float().numpy().astype(np_dtype) for n in latents.noise]
    if not all(np.isfinite(n).all() for n in noises) or not np.isfinite(w).all():
        # float16 tops out at 65504: an overflowing noise map must not be stored as inf.
        raise ValueError(f"non-finite values in w or noise (noise_dtype={noise_dtype})")
    arrays = [("w", w)] + [(f"noise_{i:02d}", n) for i, n in enumerate(noises)]
    m, t, extra = _split_numbers(metrics, timings)
    src = dict(source)
    src["params"] = json.loads(canonical_params(source["params"]))
    cache_meta = {
        "format": ENTRY_FORMAT,
        "key": key,
        "checksum": _array_checksum(arrays),
        "w_shape": list(w.shape),
        "noise_shapes": [list(n.shape) for n in noises],
        "noise_dtype": noise_dtype,
        "created_at": (created_at or _now()).isoformat(),
        "source": src,
        "metrics": m,
        "timings": t,
        "extra": extra,
    }
    meta = dict(latents.meta)
    meta["cache"] = cache_meta
    from i2score.data.latents import Latents

    data = Latents(latents.w, latents.noise, meta).to_npz_bytes(noise_dtype=np_dtype)
    return data, cache_meta


def decode_entry(data: bytes, key: str | None = None) -> tuple[Latents, dict[str, Any]]:
    """Parse and verify NPZ bytes; returns ``(latents, cache_meta)`` (noise upcast to float32).

    Raises :class:`CorruptEntryError` for a truncated/garbled archive, a wrong key, a checksum or
    shape mismatch, or metadata whose source does not hash to the key.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            files = set(z.files)
            if "w" not in files or "meta" not in files:
                raise CorruptEntryError(f"missing arrays (has {sorted(files)})")
            meta = json.loads(str(z["meta"]))
            w = z["w"]
            noise_names = sorted(k for k in files if k.startswith("noise_"))
            noises = [z[k] for k in noise_names]
    except CorruptEntryError:
        raise
    except Exception as e:  # zipfile CRC/truncation, JSON, numpy header errors
        raise CorruptEntryError(f"unreadable NPZ: {type(e).__name__}: {e}") from e
    cm = meta.get("cache")
    if not isinstance(cm, dict) or cm.get("format") != ENTRY_FORMAT:
        raise CorruptEntryError("no i2score cache metadata")
    if key is not None and cm.get("key") != key:
        raise CorruptEntryError(f"stored key {str(cm.get('key'))[:12]}… differs from {key[:12]}…")
    arrays = [("w", w)] + list(zip(noise_names, noises, strict=True))
    if _array_checksum(arrays) != cm.get("checksum"):
        raise CorruptEntryError("array checksum mismatch")
    if list(w.shape) != cm.get("w_shape") or w.ndim != 3 or w.shape[0] != 1 or w.dtype != np.float32:
        raise CorruptEntryError(f"w shape/dtype {list(w.shape)} {w.dtype} inconsistent with metadata")
    if [list(n.shape) for n in noises] != cm.get("noise_shapes"):
        raise CorruptEntryError("noise shapes inconsistent with metadata")
    if any(n.dtype != _NOISE_DTYPES.get(cm.get("noise_dtype", "")) for n in noises):
        raise CorruptEntryError("noise dtype inconsistent with metadata")
    try:
        if source_key(cm["source"]) != cm["key"]:
            raise CorruptEntryError("metadata source does not hash to the key")
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptEntryError(f"bad source metadata: {e}") from e
    import torch  # deferred: listing the index does not need torch

    from i2score.data.latents import Latents

    latents = Latents(torch.from_numpy(w.copy()), [torch.from_numpy(n.astype(np.float32)) for n in noises], meta)
    return latents, cm


# -- storage helpers -------------------------------------------------------------------------
def _redact(text: str) -> str:
    return storage.redact(text)


def _read_many(urls: Sequence[str], max_workers: int = 16) -> dict[str, bytes | Exception]:
    """Whole objects, concurrently; each value is the bytes or the (redacted) exception."""
    return storage.read_many(list(urls), max_workers=max_workers)


def _is_missing(e: BaseException) -> bool:
    return isinstance(e, FileNotFoundError)


def _read_part(url: str, columns: Sequence[str] | None) -> pa.Table:
    """One index part; with ``columns``, only those column chunks are fetched (ranged reads).

    Whole-object reads (``storage.read_many``) would download ``w``, ~97% of a part's bytes at
    ``L=18``; the Parquet footer tells which byte ranges hold the other columns.
    """
    attempts = 3
    for attempt in range(attempts):
        try:
            fs, path = storage.url_to_fs(url)
            if not storage.is_remote(url):
                return _project(pq.ParquetFile(path, memory_map=True), columns)
            # No read-ahead cache: fetch exactly the byte ranges Parquet asks for (footer, then
            # the projected column chunks, coalesced by pre_buffer), never blocks of w.
            with fs.open(path, "rb", cache_type="none") as f:
                return _project(pq.ParquetFile(f, pre_buffer=True), columns)
        except Exception as e:
            # Same transient/permanent split as the storage module's own retries.
            if isinstance(e, FileNotFoundError) or not storage.is_transient(e) or attempt == attempts - 1:
                raise
            log.warning("reading index part %s failed (%s); retrying", _redact(url), _redact(str(e)))
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _project(pf: pq.ParquetFile, columns: Sequence[str] | None) -> pa.Table:
    if columns is None:
        return pf.read()
    names = set(pf.schema_arrow.names)
    return pf.read(columns=[c for c in columns if c in names])


def _part_name() -> str:
    ts = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"part-{ts}-{uuid.uuid4().hex}.parquet"


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    # w is float noise to a compressor; everything else compresses well.
    compression = {name: ("none" if name == "w" else "zstd") for name in table.column_names}
    pq.write_table(table, buf, compression=compression)
    return buf.getvalue()


def _rows_to_table(rows: Sequence[dict[str, Any]], num_ws: int, w_dim: int) -> pa.Table:
    schema = index_schema(num_ws, w_dim)
    cols: dict[str, pa.Array] = {}
    for f in schema:
        if f.name == "w":
            w = np.stack([r["w"] for r in rows]).astype(np.float32, copy=False).reshape(len(rows), num_ws, w_dim)
            cols["w"] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(w))
        else:
            cols[f.name] = pa.array([r[f.name] for r in rows], type=f.type)
    return pa.Table.from_pydict(cols, schema=schema)


def dedupe_latest(table: pa.Table) -> pa.Table:
    """One row per key: the newest ``created_at``; ties go to the later row (later part).
    Row order of the kept rows is preserved."""
    n = table.num_rows
    if n <= 1:
        return table
    # Hash-encode the keys to ints and sort numbers, not strings (100k rows: ms, not a second).
    codes = pc.dictionary_encode(table.column("key").combine_chunks()).indices.to_numpy(zero_copy_only=False)
    if len(np.unique(codes)) == n:
        return table  # the common case after compaction: nothing to collapse
    ts = table.column("created_at").combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(n), ts, codes))
    sorted_codes = codes[order]
    last = np.append(sorted_codes[1:] != sorted_codes[:-1], True)
    return table.take(pa.array(np.sort(order[last])))


class LookupResult(Mapping[str, "CacheEntry"]):
    """Hits of :meth:`LatentCache.lookup`: a read-only, dict-like ``key -> CacheEntry``.

    Entries are built from the Arrow rows on first access, so membership tests over 100k keys
    cost a dict of row numbers, not 100k objects. :attr:`table` holds the rows (without ``w``)
    for vectorised use.
    """

    def __init__(self, root: str, table: pa.Table, extra: Mapping[str, CacheEntry] | None = None) -> None:
        self._root = root
        self.table = table
        self._rows = {k: i for i, k in enumerate(table.column("key").to_pylist())}
        self._extra = dict(extra or {})
        self._cols: dict[str, list[Any]] | None = None
        self._built: dict[str, CacheEntry] = {}

    def __getitem__(self, key: str) -> CacheEntry:
        if key in self._extra:
            return self._extra[key]
        if key not in self._built:
            i = self._rows[key]  # KeyError for a miss, like a dict
            if self._cols is None:
                self._cols = self.table.to_pydict()
            self._built[key] = _entry_at(self._root, self._cols, i)
        return self._built[key]

    def __contains__(self, key: object) -> bool:
        return key in self._rows or key in self._extra

    def __iter__(self) -> Iterator[str]:
        yield from self._rows
        yield from (k for k in self._extra if k not in self._rows)

    def __len__(self) -> int:
        return len(self._rows) + sum(1 for k in self._extra if k not in self._rows)

    def __repr__(self) -> str:
        return f"LookupResult({len(self)} entries)"


def _entry_at(root: str, cols: Mapping[str, list[Any]], i: int) -> CacheEntry:
    extra = cols["extra"][i]
    return CacheEntry(
        key=cols["key"][i], npz_url=storage.join(root, cols["npz_path"][i]), npz_path=cols["npz_path"][i],
        source_id=cols["source_id"][i], image_sha256=cols["image_sha256"][i], mask_sha256=cols["mask_sha256"][i],
        generator_id=cols["generator_id"][i], generator_sha256=cols["generator_sha256"][i],
        algorithm=cols["algorithm"][i], algorithm_version=cols["algorithm_version"][i],
        params_json=cols["params"][i], w_shape=(cols["num_ws"][i], cols["w_dim"][i]),
        noise_dtype=cols["noise_dtype"][i], checksum=cols["checksum"][i], npz_bytes=cols["npz_bytes"][i],
        metrics={m: cols[m][i] for m in METRIC_COLUMNS}, timings={t: cols[t][i] for t in TIMING_COLUMNS},
        status=cols["status"][i], created_at=cols["created_at"][i], extra=json.loads(extra) if extra else {},
    )


# -- the cache ---------------------------------------------------------------------------------
class LatentCache:
    """The latent cache under ``root_url`` (see the module docstring for layout and protocol).

    Typical run::

        cache = LatentCache(root)
        cache.adopt_orphans()                 # once per run: repair crashes of earlier runs
        hits = cache.lookup(keys)             # one read of the index
        todo = [k for k in keys if k not in hits]
        ... compute ...; cache.put_many(todo, result.latents, sources=..., metrics=result.metrics)
        latents = cache.get(key)              # verified; None -> recompute and put again
    """

    def __init__(self, root_url: str, *, max_workers: int = 16) -> None:
        self.root = root_url.rstrip("/")
        self.max_workers = max_workers
        self.index_url = storage.join(self.root, "cache", "index")
        self.latents_url = storage.join(self.root, "cache", "latents")
        # Keys known to have an index row: filled by index reads and our own writes, so a re-put
        # of an indexed key writes nothing. Staleness only costs a duplicate (harmless) row.
        self._indexed: set[str] | None = None

    def __repr__(self) -> str:
        return f"LatentCache({_redact(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------
    def npz_url(self, key: str) -> str:
        return storage.join(self.root, npz_path(key))

    def _key_of_npz_url(self, url: str) -> str | None:
        name = storage.basename(url)
        key = name[:-4] if name.endswith(".npz") else ""
        if not _KEY_RE.match(key) or not url.rstrip("/").endswith(f"{key[:2]}/{name}"):
            return None  # stray object, not ours
        return key

    # -- index reads ----------------------------------------------------------------------
    def index_parts(self) -> list[str]:
        """URLs of every index part (one listing)."""
        return [u for u in storage.list_files(self.index_url, ".parquet")
                if storage.basename(u).startswith("part-")]

    def _read_index(self, columns: Sequence[str] | None = LOOKUP_COLUMNS
                    ) -> tuple[list[tuple[str, pa.Table]], dict[str, str]]:
        """Read every part once, concurrently: ``([(part_url, table)], {bad_part: reason})``.

        A part deleted by a concurrent :meth:`compact` between listing and reading is skipped
        and the listing repeated once more, which finds the merged part holding its rows.
        """
        done: dict[str, pa.Table] = {}
        bad: dict[str, str] = {}
        for _ in range(3):
            todo = [u for u in self.index_parts() if u not in done and u not in bad]
            if not todo:
                break
            vanished = False

            def one(url: str) -> tuple[str, pa.Table | Exception]:
                try:
                    return url, _read_part(url, columns)
                except Exception as e:  # noqa: BLE001 - classified below (missing / unreadable)
                    return url, e

            with ThreadPoolExecutor(max(1, min(self.max_workers, len(todo)))) as ex:
                for url, res in ex.map(one, todo):
                    if isinstance(res, pa.Table):
                        done[url] = res
                    elif _is_missing(res):
                        vanished = True
                    else:
                        bad[url] = f"{type(res).__name__}: {_redact(str(res))}"
                        log.warning("unreadable index part %s: %s", _redact(url), bad[url])
            if not vanished:
                break
        return sorted(done.items()), bad

    def _index_table(self, columns: Sequence[str] | None = LOOKUP_COLUMNS) -> pa.Table:
        parts, _ = self._read_index(columns)
        tables = [t for _, t in parts if t.num_rows]
        if not tables:
            return index_schema(1, 1).empty_table().select(list(columns or LOOKUP_COLUMNS))
        table = pa.concat_tables(tables, promote_options="default")
        self._indexed = set(table.column("key").to_pylist())
        return table

    def _indexed_keys(self) -> set[str]:
        if self._indexed is None:
            self._index_table(["key"])
            if self._indexed is None:
                self._indexed = set()
        return self._indexed

    def _present_keys(self, keys: Iterable[str] | None = None) -> set[str]:
        """Keys whose NPZ exists: one HEAD per key for a few keys, else a listing.

        On object stores the listing runs per shard prefix (``cache/latents/<k[:2]>/``, only the
        shards of the requested keys, all 256 for a full scan), concurrently: an S3 listing
        returns 1000 keys a page, page after page, so 100k objects are ~100 sequential round trips
        as one listing but ~1 page per shard in parallel (SeaweedFS on 2 shared cores, 100k
        objects: 12.1 s vs 14.2 s; on AWS, where a page costs network latency rather than server
        CPU, the gain should be larger). Local folders are walked once.
        """
        shards: list[str] = [f"{i:02x}" for i in range(256)]
        if keys is not None:
            keys = list(keys)
            if len(keys) <= HEAD_CHECK_MAX_KEYS:
                with ThreadPoolExecutor(max(1, min(self.max_workers, len(keys)))) as ex:
                    flags = list(ex.map(lambda k: storage.exists(self.npz_url(k)), keys))
                return {k for k, f in zip(keys, flags, strict=True) if f}
            shards = sorted({k[:2] for k in keys})
        if not storage.is_remote(self.latents_url):
            # A local walk is CPU-bound: one walk beats 256 threads contending for the GIL (1.2 s
            # vs 3.5 s for 100k files here).
            listings = [storage.list_files(self.latents_url, ".npz")]
        else:
            with ThreadPoolExecutor(max(1, min(self.max_workers, len(shards)))) as ex:
                listings = list(ex.map(lambda sh: storage.list_files(storage.join(self.latents_url, sh), ".npz"),
                                       shards))
        found = set()
        for urls in listings:
            for url in urls:
                k = self._key_of_npz_url(url)
                if k is not None:
                    found.add(k)
        return found

    def _entries(self, table: pa.Table) -> list[CacheEntry]:
        cols = table.to_pydict()
        return [_entry_at(self.root, cols, i) for i in range(table.num_rows)]

    # -- public reads -----------------------------------------------------------------------
    def lookup(self, keys: Iterable[str], *, check_npz: bool = True, adopt: bool = True) -> LookupResult:
        """Entries for the given keys that are in the cache (absent keys are simply missing),
        as a dict-like :class:`LookupResult`.

        Reads every index part once, concurrently, without the ``w`` column, then filters and
        collapses duplicate rows in Arrow; no per-key object reads. With ``check_npz`` (default)
        rows whose NPZ is absent are dropped: for up to :data:`HEAD_CHECK_MAX_KEYS` keys by one
        HEAD each, otherwise by listing ``cache/latents/`` (~1 request per 1000 objects on S3, the
        shards listed concurrently) rather than a HEAD per key. Existence is all a lookup checks; :meth:`get` verifies
        content. With ``adopt`` (default), requested keys whose NPZ exists without an index row (a
        crash between the two writes) are verified, indexed and returned instead of being
        recomputed.
        """
        wanted = list(dict.fromkeys(keys))
        for k in wanted:
            _check_key(k)
        table = self._index_table()
        table = dedupe_latest(table.filter(pc.is_in(table.column("key"), value_set=pa.array(wanted, pa.string()))))
        adopted: dict[str, CacheEntry] = {}
        if check_npz and wanted:
            present = self._present_keys(wanted)
            keep = pc.is_in(table.column("key"), value_set=pa.array(list(present), pa.string()))
            if table.num_rows and not pc.all(keep).as_py():
                gone = table.filter(pc.invert(keep)).column("key").to_pylist()
                log.warning("%d index row(s) have no NPZ (e.g. %s…); treated as misses", len(gone), gone[0][:12])
                table = table.filter(keep)
            if adopt:
                indexed = set(table.column("key").to_pylist())
                orphans = [k for k in wanted if k in present and k not in indexed]
                if orphans:
                    adopted = {e.key: e for e in self._adopt(orphans)}
        return LookupResult(self.root, table, adopted)

    def get(self, key: str) -> Latents | None:
        """The verified latents of ``key`` (noise as float32), or None when absent, partial or
        corrupt (logged). ``latents.meta["cache"]`` holds the entry's metadata."""
        url = self.npz_url(key)
        try:
            data = storage.read_bytes(url)
        except FileNotFoundError:
            return None
        try:
            latents, _ = decode_entry(data, key)
        except CorruptEntryError as e:
            log.warning("cache entry %s… is corrupt (%s); ignoring it", key[:12], e)
            return None
        return latents

    def ls(self, *, with_w: bool = False, dedupe: bool = True) -> pa.Table:
        """The index as a table (newest row per key unless ``dedupe=False``), oldest first.

        ``with_w`` adds the ``w`` tensor column; it needs every part to share one w shape.
        """
        cols = None if with_w else LOOKUP_COLUMNS
        parts, _ = self._read_index(cols)
        tables = [t for _, t in parts if t.num_rows]
        if not tables:
            return index_schema(1, 1).empty_table().select(list(cols or index_schema(1, 1).names))
        if with_w and len({t.schema.field("w").type for t in tables}) > 1:
            raise ValueError("index parts hold different w shapes; use with_w=False or filter by generator")
        table = pa.concat_tables(tables, promote_options="default")
        if dedupe:
            table = dedupe_latest(table)
        return table.sort_by("created_at")

    def resolve(self, prefix: str) -> str:
        """The full key for a unique prefix (>= 6 hex digits) of an indexed key or an orphan NPZ."""
        prefix = prefix.strip().lower()
        if len(prefix) == 64:
            return _check_key(prefix)
        if len(prefix) < 6 or not re.fullmatch(r"[0-9a-f]+", prefix):
            raise ValueError(f"need a key or a prefix of at least 6 hex digits, got {prefix!r}")
        keys = self._index_table(["key"]).column("key").to_pylist()
        found = {k for k in keys if k.startswith(prefix)}
        if not found:
            found = {k for k in self._present_keys() if k.startswith(prefix)}
        if len(found) != 1:
            raise KeyError(f"{len(found)} cache keys start with {prefix!r}")
        return found.pop()

    def show(self, key: str) -> dict[str, Any]:
        """Everything about one key: its index rows, whether the NPZ exists and verifies, its meta."""
        _check_key(key)
        table = self._index_table()
        rows = table.filter(pc.equal(table.column("key"), key))
        out: dict[str, Any] = {"key": key, "npz_path": npz_path(key), "index_rows": rows.num_rows,
                               "entries": self._entries(rows.sort_by("created_at"))}
        try:
            data = storage.read_bytes(self.npz_url(key))
        except FileNotFoundError:
            out.update(npz_exists=False, npz_ok=False, reason="NPZ missing")
            return out
        out.update(npz_exists=True, npz_size=len(data))
        try:
            latents, cm = decode_entry(data, key)
            out.update(npz_ok=True, reason=None, cache_meta=cm,
                       meta={k: v for k, v in latents.meta.items() if k != "cache"})
        except CorruptEntryError as e:
            out.update(npz_ok=False, reason=str(e))
        return out

    # -- writes -------------------------------------------------------------------------------
    def put(self, key: str, latents: Latents, *, source: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
            timings: Mapping[str, Any] | None = None, noise_dtype: str = "float32", status: str = "ok") -> CacheEntry:
        """Store one image's latents: NPZ (one PUT), then an index part with its row (one PUT).

        Idempotent: if a valid NPZ for ``key`` exists, nothing is written and the existing entry
        is returned, even if ``latents`` differ (the key says the inputs are the same; the first
        stored result stays). An index row is added only if the key has none yet (adoption). An
        existing NPZ that fails verification is overwritten: it is useless to every reader, and
        the new PUT replaces it whole. Two writers racing on a new key both PUT (last one wins,
        both complete) and both add a row; readers collapse the duplicate rows. ``source`` comes from :func:`make_source` and
        must hash to ``key``. ``metrics``/``timings`` may be one dict from
        ``ReconstructionResult.metrics`` (known keys go to columns, others to ``extra``).
        """
        return self.put_many([key], latents, sources=[source], metrics=[metrics or {}],
                             timings=[timings or {}], noise_dtype=noise_dtype, status=status)[0]

    def put_many(self, keys: Sequence[str], latents: Latents, *, sources: Sequence[Mapping[str, Any]],
                 metrics: Sequence[Mapping[str, Any]] | None = None, timings: Sequence[Mapping[str, Any]] | None = None,
                 noise_dtype: str = "float32", status: str = "ok") -> list[CacheEntry]:
        """Store a batch (``latents`` holds ``len(keys)`` images): the NPZs concurrently, then ONE
        index part for all new rows (one per w shape). Same idempotency as :meth:`put`.
        Returns one entry per key, in order."""
        n = len(keys)
        if len(latents) != n or len(sources) != n:
            raise ValueError(f"{n} keys, {len(latents)} latents, {len(sources)} sources")
        metrics = list(metrics) if metrics is not None else [{}] * n
        timings = list(timings) if timings is not None else [{}] * n
        if len(metrics) != n or len(timings) != n:
            raise ValueError("metrics/timings must have one dict per key")
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(_check_key(k), i)
        order = list(first)
        # Encode first: a bad source fails before anything is written.
        encoded = {k: encode_entry(k, latents[first[k]], source=sources[first[k]], metrics=metrics[first[k]],
                                   timings=timings[first[k]], noise_dtype=noise_dtype) for k in order}
        existing = _read_many([self.npz_url(k) for k in order], self.max_workers)
        rows: dict[str, dict[str, Any]] = {}
        result: dict[str, CacheEntry] = {}
        to_write: list[str] = []
        need_row: list[str] = []
        for k in order:
            got = existing[self.npz_url(k)]
            if isinstance(got, bytes):
                try:
                    old, cm = decode_entry(got, k)
                except CorruptEntryError as e:
                    log.warning("overwriting corrupt cache entry %s… (%s)", k[:12], e)
                    to_write.append(k)
                    continue
                if k not in self._indexed_keys():
                    # A valid NPZ without an index row: adopt it, as adopt_orphans would.
                    rows[k] = self._row(cm, old.w[0].numpy(), len(got), status="adopted")
                    need_row.append(k)
                else:
                    result[k] = self._entry_from_row(self._row(cm, old.w[0].numpy(), len(got), status=status))
            elif _is_missing(got):
                to_write.append(k)
            else:
                raise got
        failed: list[BaseException] = []
        if to_write:
            def write(k: str) -> BaseException | None:
                try:
                    storage.write_bytes(self.npz_url(k), encoded[k][0])
                    return None
                except Exception as e:  # noqa: BLE001 - re-raised below, after indexing the NPZs that made it
                    return e

            with ThreadPoolExecutor(max(1, min(self.max_workers, len(to_write)))) as ex:
                errors = list(ex.map(write, to_write))
            failed = [e for e in errors if e is not None]
            to_write = [k for k, e in zip(to_write, errors, strict=True) if e is None]  # no row without NPZ
            for k in to_write:
                data, cm = encoded[k]
                rows[k] = self._row(cm, latents[first[k]].w[0].detach().cpu().float().numpy(), len(data), status=status)
        new_rows = [rows[k] for k in to_write + need_row]
        if new_rows:
            self._write_index_part(new_rows)
        if failed:
            raise failed[0]
        for k in to_write + need_row:
            result[k] = self._entry_from_row(rows[k])
        return [result[k] for k in keys]

    def _row(self, cm: Mapping[str, Any], w: np.ndarray, size: int, *, status: str) -> dict[str, Any]:
        src = cm["source"]
        return {
            "key": cm["key"], "npz_path": npz_path(cm["key"]), "source_id": src.get("id"),
            "image_sha256": src["image_sha256"], "mask_sha256": src.get("mask_sha256"),
            "generator_id": src.get("generator_id"), "generator_sha256": src["generator_sha256"],
            "algorithm": src["algorithm"], "algorithm_version": int(src["algorithm_version"]),
            "params": canonical_params(src["params"]), "num_ws": int(w.shape[0]), "w_dim": int(w.shape[1]),
            "w": w, "noise_dtype": cm["noise_dtype"], "checksum": cm["checksum"], "npz_bytes": int(size),
            **{m: cm["metrics"].get(m) for m in METRIC_COLUMNS},
            **{t: cm["timings"].get(t) for t in TIMING_COLUMNS},
            "extra": json.dumps(cm["extra"], sort_keys=True) if cm.get("extra") else None,
            "status": status, "created_at": datetime.fromisoformat(cm["created_at"]),
        }

    def _entry_from_row(self, row: Mapping[str, Any]) -> CacheEntry:
        return self._entries(_rows_to_table([row], row["num_ws"], row["w_dim"]).drop_columns(["w"]))[0]

    def _write_index_part(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """One PUT per w shape present in ``rows``; returns the part URLs."""
        by_shape: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in rows:
            by_shape.setdefault((r["num_ws"], r["w_dim"]), []).append(r)
        urls = []
        for (num_ws, w_dim), group in by_shape.items():
            url = storage.join(self.index_url, _part_name())
            storage.write_bytes(url, _table_bytes(_rows_to_table(group, num_ws, w_dim)))
            urls.append(url)
        if self._indexed is not None:
            self._indexed.update(r["key"] for r in rows)
        return urls

    # -- repair and maintenance ------------------------------------------------------------------
    def _adopt(self, keys: Sequence[str]) -> list[CacheEntry]:
        """Verify the NPZs of ``keys`` and write one index part for the valid ones."""
        got = _read_many([self.npz_url(k) for k in keys], self.max_workers)
        rows = []
        for k in keys:
            data = got[self.npz_url(k)]
            if not isinstance(data, bytes):
                continue  # deleted meanwhile: nothing to adopt
            try:
                latents, cm = decode_entry(data, k)
            except CorruptEntryError as e:
                log.warning("orphan NPZ %s… is corrupt (%s); not adopted (a put will overwrite it)", k[:12], e)
                continue
            rows.append(self._row(cm, latents.w[0].numpy(), len(data), status="adopted"))
        if rows:
            self._write_index_part(rows)
            log.info("adopted %d orphan cache entries", len(rows))
        return [self._entry_from_row(r) for r in rows]

    def orphans(self) -> list[str]:
        """Keys with an NPZ but no index row (a listing of ``cache/latents/`` + one index read)."""
        present = self._present_keys()
        indexed = set(self._index_table(["key"]).column("key").to_pylist())
        return sorted(present - indexed)

    def adopt_orphans(self) -> list[str]:
        """Index every valid orphan NPZ (crash between NPZ and index write); returns their keys.

        Call once at the start of a run (the flows' planning step does); :meth:`lookup` also
        adopts orphans among the keys it is asked about. Corrupt orphans are left for
        :meth:`verify` to report and for the next :meth:`put` of that key to overwrite.
        """
        return [e.key for e in self._adopt(self.orphans())]

    def verify(self, *, batch: int = 256) -> VerifyReport:
        """Check every entry: each indexed key's NPZ exists, loads, matches its checksum, shape
        and key, and at least one of its index rows agrees with it; list orphans and corrupt
        ones. Reads every NPZ (in concurrent batches of ``batch``)."""
        report = VerifyReport()
        parts, report.bad_parts = self._read_index(LOOKUP_COLUMNS)
        report.index_parts = len(parts) + len(report.bad_parts)
        tables = [t for _, t in parts if t.num_rows]
        rows_by_key: dict[str, list[tuple[str, tuple[int, int]]]] = {}
        for t in tables:
            report.index_rows += t.num_rows
            cols = [t.column(c).to_pylist() for c in ("key", "checksum", "num_ws", "w_dim")]
            for k, c, L, d in zip(*cols, strict=True):
                rows_by_key.setdefault(k, []).append((c, (L, d)))
        present = self._present_keys()
        report.keys = len(rows_by_key)
        report.missing = sorted(k for k in rows_by_key if k not in present)
        orphan_keys = sorted(present - set(rows_by_key))
        to_check = sorted(k for k in rows_by_key if k in present) + orphan_keys
        for start in range(0, len(to_check), batch):
            chunk = to_check[start:start + batch]
            got = _read_many([self.npz_url(k) for k in chunk], self.max_workers)
            for k in chunk:
                data = got[self.npz_url(k)]
                if not isinstance(data, bytes):
                    if _is_missing(data):
                        if k in rows_by_key:
                            report.missing.append(k)
                    else:
                        report.corrupt[k] = f"unreadable: {type(data).__name__}: {_redact(str(data))}"
                    continue
                try:
                    _, cm = decode_entry(data, k)
                except CorruptEntryError as e:
                    report.corrupt[k] = str(e)
                    continue
                report.verified += 1
                if k not in rows_by_key:
                    report.orphans.append(k)
                    continue
                shape = tuple(cm["w_shape"][1:])
                if not any(c == cm["checksum"] and s == shape for c, s in rows_by_key[k]):
                    report.mismatched[k] = "no index row has the NPZ's checksum and w shape"
        report.missing.sort()
        return report

    def compact(self) -> CompactReport:
        """Merge all index parts into one per w shape; duplicate rows of a key collapse to the
        newest. The merged part is written and read back (row count checked) before any old part
        is deleted, and only parts that were read are deleted, so a concurrent writer's new part
        survives and a crash at any point loses no row (at worst rows are duplicated, which
        readers collapse). Unreadable parts are left in place and reported."""
        report = CompactReport()
        urls = self.index_parts()
        report.parts_before = len(urls)
        if len(urls) <= 1:
            report.parts_after = len(urls)
            return report
        got = _read_many(urls, self.max_workers)
        groups: dict[str, list[tuple[str, pa.Table]]] = {}
        for url in urls:
            data = got[url]
            if not isinstance(data, bytes):
                if not _is_missing(data):
                    report.bad_parts[url] = f"{type(data).__name__}: {_redact(str(data))}"
                continue  # missing: another compaction merged it already
            try:
                t = pq.read_table(pa.BufferReader(data))
            except Exception as e:  # noqa: BLE001 - not Parquet: keep the object, report it
                report.bad_parts[url] = f"{type(e).__name__}: {e}"
                continue
            report.rows_before += t.num_rows
            groups.setdefault(str(t.schema.field("w").type), []).append((url, t))
        to_delete = []
        for members in groups.values():
            tables = [t for _, t in members]
            merged = dedupe_latest(pa.concat_tables(tables, promote_options="default")).sort_by("created_at")
            if len(members) == 1 and merged.num_rows == tables[0].num_rows:
                report.rows_after += merged.num_rows  # already one clean part for this shape
                continue
            url = storage.join(self.index_url, _part_name())
            storage.write_bytes(url, _table_bytes(merged.cast(tables[-1].schema)))
            back = _read_part(url, ["key"])
            if back.num_rows != merged.num_rows:
                raise OSError(f"merged index part {_redact(url)} reads back {back.num_rows} rows, "
                              f"expected {merged.num_rows}; old parts kept")
            report.rows_after += merged.num_rows
            report.written.append(url)
            to_delete += [u for u, _ in members]
        report.duplicates_dropped = report.rows_before - report.rows_after
        for url in to_delete:  # only after every merged part is written and read back
            storage.delete(url)
            report.deleted.append(url)
        report.parts_after = len(self.index_parts())
        return report
