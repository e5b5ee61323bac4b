"""Content-addressed latent cache: one NPZ per embedding plus Parquet index parts.

Layout under a root URL (any fsspec URL: local path, ``file://``, ``s3://``, ``memory://``)::

    <root>/cache/latents/<key[:2]>/<key>.npz     w, every noise map and metadata; one PUT
    <root>/cache/index/part-<ts>-<uuid>.parquet  index rows; one PUT per part, never rewritten

Keys are in :mod:`i2score.data.cache.keys`, the NPZ format in :mod:`i2score.data.cache.entry`
and the index parts in :mod:`i2score.data.cache.index`.

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
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from i2score.data import storage
from i2score.data.cache import index as cache_index
from i2score.data.cache.entry import (
    METRIC_COLUMNS,
    TIMING_COLUMNS,
    CacheEntry,
    CorruptEntryError,
    decode_entry,
    encode_entry,
)
from i2score.data.cache.index import (
    LOOKUP_COLUMNS,
    LookupResult,
    _entry_at,
    _rows_to_table,
    dedupe_latest,
    index_schema,
    part_name,
    table_bytes,
)
from i2score.data.cache.keys import _KEY_RE, _check_key, canonical_params, npz_path

if TYPE_CHECKING:  # i2score.data.latents imports torch; index-only commands (``i2s cache ls``) skip it
    from i2score.data.latents import Latents

log = logging.getLogger(__name__)

#: Up to this many keys, :meth:`LatentCache.lookup` checks NPZ existence with one HEAD per key
#: instead of listing ``cache/latents/`` (up to 256 shard listings, ~1 request per 1000 objects).
HEAD_CHECK_MAX_KEYS = 32


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


# -- storage helpers -------------------------------------------------------------------------
def _redact(text: str) -> str:
    return storage.redact(text)


def _read_many(urls: Sequence[str], max_workers: int = 16) -> dict[str, bytes | Exception]:
    """Whole objects, concurrently; each value is the bytes or the (redacted) exception."""
    return storage.read_many(list(urls), max_workers=max_workers)


def _is_missing(e: BaseException) -> bool:
    return isinstance(e, FileNotFoundError)


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
                    # Through the module, not a name bound at import: patching
                    # index._read_part (tests count part reads) must reach this call.
                    return url, cache_index._read_part(url, columns)
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

    def get_many(self, keys: Iterable[str]) -> dict[str, Latents]:
        """:meth:`get` of every distinct key; absent, partial or corrupt entries are left out."""
        got = {}
        for k in dict.fromkeys(keys):
            lat = self.get(k)
            if lat is not None:
                got[k] = lat
        return got

    # -- warm starts ----------------------------------------------------------------------------
    def state_url(self, key: str) -> str:
        """Where an entry's optimiser state lives: ``cache/states/<k[:2]>/<key>.npz`` (optional:
        an entry without one is still a valid hit, it just cannot be continued)."""
        return storage.join(self.root, "cache", "states", _check_key(key)[:2], f"{key}.npz")

    def put_states(self, states: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Store the optimiser state of each key (a flat dict of arrays; one PUT each, concurrent).
        Written after the entry itself, so a state never describes a missing entry."""
        def write(item: tuple[str, Mapping[str, np.ndarray]]) -> None:
            buf = io.BytesIO()
            cast(Any, np.savez)(buf, **item[1])  # numpy types **kwds as its own options
            storage.write_bytes(self.state_url(item[0]), buf.getvalue())

        with ThreadPoolExecutor(max(1, min(self.max_workers, len(states)))) as ex:
            list(ex.map(write, states.items()))

    def get_state(self, key: str) -> dict[str, np.ndarray] | None:
        """The optimiser state of ``key``, or None when absent or unreadable (logged)."""
        try:
            data = storage.read_bytes(self.state_url(key))
        except FileNotFoundError:
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - a bad state only costs the warm start
            log.warning("optimiser state of %s… is unreadable (%s); starting over", key[:12], e)
            return None

    def warm_starts(self, sources: Mapping[str, Mapping[str, Any]], vary: Sequence[str]
                    ) -> dict[str, list[CacheEntry]]:
        """For each wanted ``key -> source`` (as :func:`make_source` builds it), the cached entries
        of the same image, mask, generator, algorithm and version whose parameters differ from it
        only in the ``vary`` fields (one index read for all). Entries without a stored state are
        included; the caller decides which one it can continue."""
        def family(params: Mapping[str, Any]) -> str:
            return canonical_params({k: v for k, v in params.items() if k not in vary})

        table = self._index_table()
        if not sources or not table.num_rows:
            return {k: [] for k in sources}
        images = {src["image_sha256"] for src in sources.values()}
        table = dedupe_latest(table.filter(pc.is_in(table.column("image_sha256"),
                                                    value_set=pa.array(sorted(images), pa.string()))))
        by_family: dict[tuple[Any, ...], list[CacheEntry]] = {}
        for e in self._entries(table):
            fam = (e.image_sha256, e.mask_sha256, e.generator_sha256, e.algorithm, e.algorithm_version,
                   family(e.params))
            by_family.setdefault(fam, []).append(e)
        out: dict[str, list[CacheEntry]] = {}
        for key, src in sources.items():
            fam = (src["image_sha256"], src.get("mask_sha256"), src["generator_sha256"], src["algorithm"],
                   int(src["algorithm_version"]), family(src["params"]))
            out[key] = [e for e in by_family.get(fam, []) if e.key != key]
        return out

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
        both complete) and both add a row; readers collapse the duplicate rows. ``source`` comes
        from :func:`make_source` and must hash to ``key``. ``metrics``/``timings`` may be one dict
        from ``ReconstructionResult.metrics`` (known keys go to columns, others to ``extra``).
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
            url = storage.join(self.index_url, part_name())
            storage.write_bytes(url, table_bytes(_rows_to_table(group, num_ws, w_dim)))
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
            url = storage.join(self.index_url, part_name())
            storage.write_bytes(url, table_bytes(merged.cast(tables[-1].schema)))
            back = cache_index._read_part(url, ["key"])
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

