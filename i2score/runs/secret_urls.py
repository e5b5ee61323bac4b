"""Input URLs that carry credentials: batch specs hold them redacted, workers read the real ones
from the manifest.

A presigned URL (``?X-Amz-Signature=...``), a ``user:password@`` URL or a ``?token=`` URL only
works with its secret, yet specs are written redacted like everything else
(:func:`i2score.runs.records.write_json`). So planning marks each URL that redaction changes
with where it comes from in the manifest: a row's ``secret_urls`` lists its fields (``image``,
``mask``, ``ref``) to take from manifest row ``row``; a source to embed carries ``url_row`` and
``url_field``. The worker gets the real manifest URL as an argument (never from a written file:
the job config in ``plan.json`` and the specs holds it redacted too), reads the manifest again,
checks that its bytes are the ones the run was planned from (``manifest_sha256`` of the spec)
and resolves the marked fields as validation did. The parsed manifest is kept per process
(:data:`_KEEP` manifests), so a worker parses a large manifest once, not per batch; specs
without marks (inputs without credentials, the common case) never read the manifest.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from i2score.data import storage
from i2score.data.manifest import Manifest, ManifestRow
from i2score.data.manifest.read import absolute_url, path_resolver
from i2score.data.redact import REDACTED

#: Key of a row's fields (in a spec's row JSON) whose real URL is read from the manifest.
SECRET_URLS = "secret_urls"
#: How many parsed manifests a worker process keeps (runs it works on at the same time).
_KEEP = 2


class ManifestChangedError(RuntimeError):
    """The manifest a batch needs its inputs from is not the one the run was planned from."""


def has_credentials(url: str) -> bool:
    """True when ``url`` is written differently (redacted) from what a reader must use."""
    return storage.redact(url) != url


def mark_secret_urls(row_json: dict[str, Any], row: ManifestRow) -> dict[str, Any]:
    """``row_json`` (a spec's row) with :data:`SECRET_URLS` listing the fields of ``row`` that
    carry credentials; unchanged when none does."""
    fields = [f for f in ("image", "mask", "ref") if (v := getattr(row, f)) is not None and has_credentials(v)]
    return {**row_json, SECRET_URLS: fields} if fields else row_json


def source_json(key: str, url: str, source_id: str, row: ManifestRow, field: str) -> dict[str, Any]:
    """A source to embed as a spec holds it; ``url`` is ``row``'s ``field``, referenced as
    ``url_row``/``url_field`` when it carries credentials."""
    src: dict[str, Any] = {"key": key, "url": url, "id": source_id}
    if has_credentials(url):
        src.update(url_row=row.row, url_field=field)
    return src


def needs_manifest(spec: Mapping[str, Any]) -> bool:
    """True when some input URL of ``spec`` must be read from the manifest."""
    return any(_row_refs(it) or _source_ref(it) for it in spec["items"])


def _rows_of(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "row" in item:
        return [item["row"]]
    if "sources" in item:
        return [s["row"] for s in item["sources"].values()]
    return []


def _row_refs(item: Mapping[str, Any]) -> bool:
    return any(r.get(SECRET_URLS) for r in _rows_of(item))


def _source_ref(item: Mapping[str, Any]) -> bool:
    return "source" in item and "url_row" in item["source"]


def manifest_url_for(recorded: str, given: str | None) -> str:
    """The URL to read a run's manifest from: ``given`` (the real URL, passed down by the flow),
    which must redact to ``recorded`` (the job config's, redacted), or ``recorded`` when it was
    written as it is. Raises ValueError when the real URL is needed but not given, or is
    another manifest's."""
    if given is not None:
        if storage.redact(given) != recorded:
            raise ValueError(f"the manifest URL given ({storage.redact(given)!r}) is not the run's ({recorded!r})")
        return given
    if REDACTED in recorded:
        raise ValueError(f"the run's manifest URL {recorded!r} carries credentials and is stored redacted: "
                         "pass its real URL (manifest_url=...)")
    return recorded


@dataclass(frozen=True)
class _ManifestUrls:
    """One parsed manifest and its resolver: the URL of any row's field."""

    manifest: Manifest

    def url(self, row: int, field: str) -> str:
        if not 1 <= row <= len(self.manifest.records):
            raise ManifestChangedError(f"manifest row {row} does not exist")
        record = self.manifest.records[row - 1]
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value:
            raise ManifestChangedError(f"manifest row {row} has no {field}")
        return path_resolver(self.manifest.url)(value)


_MANIFESTS: dict[tuple[str, str], _ManifestUrls] = {}
_MANIFESTS_LOCK = threading.Lock()


def _manifest_urls(url: str, sha256: str) -> _ManifestUrls:
    """The manifest at ``url`` whose bytes hash to ``sha256``, parsed once per process."""
    url = absolute_url(url)
    with _MANIFESTS_LOCK:
        found = _MANIFESTS.get((url, sha256))
        if found is not None:
            return found
        data = storage.read_bytes(url)
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ManifestChangedError(f"manifest {storage.redact(url)} changed since the run was planned "
                                       f"(sha256 {got[:12]} != {sha256[:12]}): its inputs cannot be trusted; "
                                       "run the job again to plan it anew")
        found = _ManifestUrls(Manifest.from_bytes(data, url))
        _MANIFESTS[(url, sha256)] = found
        while len(_MANIFESTS) > _KEEP:
            _MANIFESTS.pop(next(iter(_MANIFESTS)))
        return found


def restore_urls(spec: Mapping[str, Any], manifest_url: str | None) -> Mapping[str, Any]:
    """``spec`` with the real URL of every input it marks (see the module docstring): ``spec``
    itself when it marks none, else a copy. ``manifest_url`` is the run's real manifest URL.

    Raises:
        ValueError: inputs are marked but ``manifest_url`` is missing or another manifest's.
        ManifestChangedError: the manifest's bytes, or a marked row, differ from the plan's.
    """
    if not needs_manifest(spec):
        return spec
    url = manifest_url_for(spec["config"]["manifest"], manifest_url)
    manifest = _manifest_urls(url, spec["manifest_sha256"])
    out = copy.deepcopy(dict(spec))

    def real(row: int, field: str, written: str) -> str:
        found = manifest.url(row, field)
        if storage.redact(found) != written:
            raise ManifestChangedError(f"manifest row {row}: its {field} is not the one planned ({written!r})")
        return found

    for it in out["items"]:
        for r in _rows_of(it):
            for field in r.pop(SECRET_URLS, None) or ():
                r[field] = real(int(r["row"]), field, r[field])
        src = it.get("source")
        if src is not None and "url_row" in src:
            src["url"] = real(int(src.pop("url_row")), src.pop("url_field"), src["url"])
    return out
