"""The Parquet index: append-only parts of rows that point at NPZ entries.

Index parts (explicit schema, :func:`index_schema`): ``w`` is a
``pa.fixed_shape_tensor(pa.float32(), [L, w_dim])`` column. ``L`` and ``w_dim`` depend on the
generator, and a Parquet column has one type, so **each part holds rows of one w shape**: a
batch mixing generators writes one part per shape, and compaction merges parts per shape. The
shape is also stored in the ``num_ws``/``w_dim`` columns and in the part's schema metadata, so
readers that skip the (large: ``L * w_dim * 4`` bytes a row) ``w`` column still see it. Lookups
read every part once with ``w`` projected out (ranged reads of the other column chunks), so a
100k-entry index costs a few MB to look up rather than gigabytes.

Several parts may hold rows for the same key (concurrent writers, adoption, re-puts);
:func:`dedupe_latest` keeps the newest.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from i2score.data import storage
from i2score.data.cache.entry import METRIC_COLUMNS, TIMING_COLUMNS, CacheEntry

log = logging.getLogger(__name__)

#: Version of the index part schema (``i2score.index_version`` in the part metadata).
INDEX_VERSION = 1


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
            log.warning("reading index part %s failed (%s); retrying", storage.redact(url), storage.redact(str(e)))
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _project(pf: pq.ParquetFile, columns: Sequence[str] | None) -> pa.Table:
    if columns is None:
        return pf.read()
    names = set(pf.schema_arrow.names)
    return pf.read(columns=[c for c in columns if c in names])


def part_name() -> str:
    """A new part's file name: sortable by creation time, unique across concurrent writers."""
    ts = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"part-{ts}-{uuid.uuid4().hex}.parquet"


def table_bytes(table: pa.Table) -> bytes:
    """Parquet bytes of an index part (one PUT), its strings redacted (:func:`storage.parquet_bytes`)."""
    # w is float noise to a compressor; everything else compresses well.
    compression = {name: ("none" if name == "w" else "zstd") for name in table.column_names}
    return storage.parquet_bytes(table, compression=compression)


def _rows_to_table(rows: Sequence[Mapping[str, Any]], num_ws: int, w_dim: int) -> pa.Table:
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


class LookupResult(Mapping[str, CacheEntry]):
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

