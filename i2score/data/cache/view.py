"""A read-only view of the latent cache for people's own code: entries and latents by source id.

:func:`open_cache` (also ``i2score.open_cache``) reads the index once and answers questions a
notebook or a training job asks::

    cache = i2score.open_cache("./i2s-data")
    for e in cache.entries():                  # newest first
        print(e.source_id, e.generator_id, settings_label(e.params), e.metrics["psnr_wn"])
    lat = cache.latents("heldout-00")          # Latents: w [1, L, w_dim], noise maps [1, 1, r, r]

A source id is the manifest row id of the row that first embedded an image (an edit's second
image is ``<row id>.ref``): the cache is content-addressed, so a later run whose row names the
same bytes under another id reuses the entry without adding a row. ``open_run(root,
run_id).latents(id)`` answers by the ids of a given run. Nothing here writes to the store
(orphan NPZs are not adopted; ``i2s cache verify --adopt`` does that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from i2score.data import storage
from i2score.data.cache.entry import CacheEntry
from i2score.data.cache.index import _entry_at
from i2score.data.cache.keys import _check_key
from i2score.data.cache.store import LatentCache

if TYPE_CHECKING:  # i2score.data.latents imports torch; listing the index does not need it
    from i2score.data.latents import Latents

__all__ = ["AmbiguousSourceError", "CacheView", "NotInCacheError", "open_cache", "settings_label"]


class NotInCacheError(LookupError):
    """No usable entry: the source id or key is not in the index, or its NPZ is missing or fails
    verification. ``str()`` is one line naming what was asked and where."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AmbiguousSourceError(LookupError):
    """Several entries match a source id (other schedules, models, algorithms or inpainting
    solutions); ``candidates`` lists them, newest first."""

    def __init__(self, message: str, candidates: list[CacheEntry]) -> None:
        super().__init__(message)
        self.candidates = candidates

    def __str__(self) -> str:
        return str(self.args[0])


_INIT_LABEL = {"encoder": "enc"}


def settings_label(params: Mapping[str, Any]) -> str:
    """A short label of an entry's algorithm parameters: ``"80+80"`` (W+ steps + noise steps),
    then ``enc``/``mean``/``uniform`` when the start was set (an encoder's code, the mean
    latent, ...), ``conv`` when images stop once converged, ``seed=N`` for a seed other than 0
    and ``#j`` for inpainting solution ``j``."""
    label = f"{params.get('steps_w', '?')}+{params.get('steps_n', '?')}"
    if params.get("init"):
        label += f" {_INIT_LABEL.get(params['init'], params['init'])}"
    if params.get("converge"):
        label += " conv"
    if params.get("seed"):
        label += f" seed={params['seed']}"
    if params.get("solution") is not None:
        label += f" #{params['solution']}"
    return label


def _describe(e: CacheEntry) -> str:
    return (f"{e.key[:12]} ({e.algorithm}, {settings_label(e.params)}, model {e.generator_id}, "
            f"{e.created_at:%Y-%m-%d %H:%M})")


class CacheView:
    """The entries of the latent cache under ``root`` (any fsspec URL), newest row per key.

    The index is read on first use and kept (a snapshot): :meth:`refresh` reads it again. Entries
    are :class:`~i2score.data.cache.entry.CacheEntry` (key, ``source_id``, ``generator_id``,
    ``algorithm``, ``params``, ``metrics`` such as ``psnr_wn``, ``timings`` such as ``steps``,
    ``npz_bytes``, ``created_at``); :meth:`latents` loads and verifies an entry's NPZ.
    """

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self._cache = LatentCache(self.root)
        self._entries: list[CacheEntry] | None = None
        self._by_key: dict[str, CacheEntry] = {}
        self._shown = storage.redact(self.root)  # what messages name: never a credential

    def __repr__(self) -> str:
        n = f", {len(self._entries)} entries" if self._entries is not None else ""
        return f"CacheView({self._shown!r}{n})"

    def refresh(self) -> None:
        """Forget the index snapshot; the next call reads the index again."""
        self._entries = None

    def _all(self) -> list[CacheEntry]:
        if self._entries is None:
            table = self._cache.ls()  # oldest first, one row per key
            cols = table.to_pydict()
            self._entries = [_entry_at(self._cache.root, cols, i) for i in reversed(range(table.num_rows))]
            self._by_key = {e.key: e for e in self._entries}
        return self._entries

    def __len__(self) -> int:
        return len(self._all())

    def entries(self, source_id: str | None = None, *, algorithm: str | None = None,
                model: str | None = None) -> list[CacheEntry]:
        """Entries, newest first, optionally only those of ``source_id``, of ``algorithm``
        (``"reconstruct"``, ``"inpaint"``; a prefix of the stored id) and of ``model`` (the
        generator's id, or a prefix of its weights sha256)."""
        out = []
        for e in self._all():
            if source_id is not None and e.source_id != source_id:
                continue
            if algorithm is not None and not e.algorithm.startswith(algorithm):
                continue
            if model is not None and e.generator_id != model and not e.generator_sha256.startswith(model):
                continue
            out.append(e)
        return out

    def source_ids(self) -> list[str]:
        """Every source id in the index, sorted (entries without one are left out)."""
        return sorted({e.source_id for e in self._all() if e.source_id})

    def entry(self, key: str) -> CacheEntry:
        """The entry of a key, or of a unique prefix of one (at least 6 hex digits)."""
        prefix = key.strip().lower()
        if len(prefix) == 64:
            _check_key(prefix)
            self._all()
            if prefix in self._by_key:  # a run's keys are whole: no scan per lookup
                return self._by_key[prefix]
        elif len(prefix) < 6:
            raise ValueError(f"need a cache key or a prefix of at least 6 hex digits, got {key!r}")
        found = [e for e in self._all() if e.key.startswith(prefix)]
        if len(found) != 1:
            raise NotInCacheError(f"{len(found)} entries of the cache under {self._shown!r} have a key starting "
                                  f"with {prefix!r}" + (" (give more digits)" if found else ""))
        return found[0]

    def find(self, source_id: str, *, algorithm: str | None = None, model: str | None = None,
             newest: bool = False) -> CacheEntry:
        """The one entry of ``source_id`` (filtered as in :meth:`entries`).

        Raises :class:`NotInCacheError` when there is none and :class:`AmbiguousSourceError`
        when several match, unless ``newest`` picks the newest of them.
        """
        found = self.entries(source_id, algorithm=algorithm, model=model)
        if not found:
            known = self.source_ids()
            hint = f"; known ids: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''}" if known else \
                "; the cache is empty"
            filters = "".join(f", {k}={v!r}" for k, v in (("algorithm", algorithm), ("model", model)) if v)
            raise NotInCacheError(f"no cache entry of source id {source_id!r}{filters} under "
                                  f"{self._shown!r}{hint}")
        if len(found) > 1 and not newest:
            raise AmbiguousSourceError(
                f"{len(found)} cache entries have source id {source_id!r}: "
                + "; ".join(_describe(e) for e in found[:6]) + (" ..." if len(found) > 6 else "")
                + ". Pass algorithm=, model=, key= or newest=True", found)
        return found[0]

    def latents(self, source_id: str | None = None, *, key: str | None = None, algorithm: str | None = None,
                model: str | None = None, newest: bool = False) -> Latents:
        """The verified latents of one entry, by ``source_id`` (see :meth:`find`) or by ``key``.

        Returns :class:`~i2score.data.latents.Latents` of one image: ``w`` ``[1, L, w_dim]``
        float32 and the noise maps ``[1, 1, r, r]`` float32 (``G.noise_shapes``: ``L - 1`` on
        StyleGAN2, ``L`` on v1, none on StyleGAN3) in synthesis order, on the CPU;
        ``meta["cache"]`` holds the entry's metadata. Raises :class:`NotInCacheError` when the
        NPZ is missing or fails its checksum.
        """
        if (source_id is None) == (key is None):
            raise ValueError("pass either a source id or key=")
        e = self.entry(key) if key is not None else self.find(source_id or "", algorithm=algorithm, model=model,
                                                              newest=newest)
        return self.load(e)

    def load(self, entry: CacheEntry) -> Latents:
        """The verified latents of ``entry`` (as :meth:`latents` returns them)."""
        lat = self._cache.get(entry.key)
        if lat is None:
            raise NotInCacheError(f"the NPZ of cache entry {entry.key[:12]} (source id {entry.source_id!r}) under "
                                  f"{self._shown!r} is missing or fails verification; `i2s cache verify` "
                                  "says which, and re-running the job that made it recomputes it")
        return lat


def open_cache(root: str) -> CacheView:
    """A read-only :class:`CacheView` of the latent cache under ``root`` (a local folder,
    ``s3://bucket/prefix``, ...): entries and latents by source id."""
    return CacheView(root)
