"""Reading manifests: CSV / TSV / Parquet / JSONL (optionally gzipped) from any storage URL, and
resolving each row's paths against the manifest's folder.

Only a manifest that cannot be read at all (missing file, unknown format, corrupt Parquet,
duplicate column names) raises :class:`~i2score.data.manifest.schema.ManifestError`; a record
that cannot be parsed is kept as a malformed record and rejected row by row by validation.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import posixpath
import re
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from i2score.data import storage
from i2score.data.inputs import InputPolicy
from i2score.data.manifest.discover import discover, is_manifest_source
from i2score.data.manifest.schema import SUPPORTED_SCHEMES, ManifestError

#: Largest manifest read, compressed and decompressed (1 GiB: about ten million rows).
MAX_MANIFEST_BYTES = 2**30

# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


class Malformed:
    """Placeholder for a record that could not be parsed."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


Record = dict[str, Any] | Malformed

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _format_of(url: str) -> tuple[str, bool]:
    """``(format, gzipped)`` from the file name; the query of an http URL is ignored."""
    path = urllib.parse.urlsplit(url).path if url.lower().startswith(("http://", "https://")) else url
    name = posixpath.basename(path.rstrip("/")).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    ext = posixpath.splitext(name)[1]
    if ext not in _FORMATS:
        raise ManifestError(
            f"cannot tell the manifest format of {storage.redact(url)!r} from its extension; use "
            ".csv, .tsv, .parquet (.pq) or .jsonl (.ndjson), optionally followed by .gz (a folder or a "
            "glob of images must be local or in an fsspec store such as s3://, not on a web server)")
    return _FORMATS[ext], gz


def _norm_columns(names: Iterable[Any], url: str) -> list[str]:
    cols = [str(c).strip().lower() for c in names]
    dup = [c for c, n in Counter(cols).items() if n > 1 and c]
    if dup:
        raise ManifestError(f"{storage.redact(url)}: duplicate column names {dup}")
    return cols


def _clean(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _parse_delimited(text: str, url: str, delimiter: str) -> tuple[list[str], list[Record]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return [], []
        columns = _norm_columns(header, url)
        n = len(columns)
        records: list[Record] = []
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) > n and any(f.strip() for f in fields[n:]):
                records.append(Malformed(f"{len(fields)} fields, the header has {n}"))
                continue
            # A short record leaves its last columns absent (empty), as in any CSV reader.
            records.append({c: f.strip() for c, f in zip(columns, fields, strict=False) if c})
    except csv.Error as e:
        raise ManifestError(f"{storage.redact(url)}: CSV error near record "
                            f"{reader.line_num}: {e}") from None
    return columns, records


def _parse_jsonl(text: str) -> tuple[list[str], list[Record]]:
    records: list[Record] = []
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            records.append(Malformed(f"not valid JSON: {e}"))
            continue
        if not isinstance(obj, dict):
            records.append(Malformed(f"a JSON {type(obj).__name__}, not an object"))
            continue
        rec = {str(k).strip().lower(): _clean(v) for k, v in obj.items()}
        for k in rec:
            seen.setdefault(k, None)
        records.append(rec)
    return list(seen), records


def _parse_parquet(data: bytes, url: str) -> tuple[list[str], list[Record]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for corrupt files
        raise ManifestError(f"{storage.redact(url)}: not a readable Parquet file: {e}") from None
    columns = _norm_columns(table.column_names, url)
    values = [table.column(i).to_pylist() for i in range(table.num_columns)]
    records: list[Record] = []
    for rec_values in zip(*values, strict=True):
        records.append({c: _clean(v) for c, v in zip(columns, rec_values, strict=True)})
    return columns, records


@dataclass
class Manifest:
    """A parsed manifest: normalised (stripped, lower-case) ``columns`` and one record per row.

    Use :meth:`read` (any storage URL) or :meth:`from_bytes`;
    :func:`~i2score.data.manifest.validate.validate_manifest` checks it.
    """

    url: str
    format: str
    columns: list[str]
    records: list[Record]

    @classmethod
    def from_bytes(cls, data: bytes, url: str, format: str | None = None) -> Manifest:
        """Parse ``data``; ``url`` names the manifest (relative paths resolve against it). The
        format comes from ``url``'s extension unless given; a folder or glob ``url`` is the CSV
        that :func:`read_manifest_bytes` writes of it."""
        if format is None and not is_manifest_source(url):
            format = "csv"
        fmt, gz = (format, False) if format else _format_of(url)
        if gz or data[:2] == b"\x1f\x8b":
            try:
                with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                    data = stream.read(MAX_MANIFEST_BYTES + 1)
                if len(data) > MAX_MANIFEST_BYTES:
                    raise ManifestError(f"{storage.redact(url)}: more than {MAX_MANIFEST_BYTES} bytes "
                                        "once decompressed")
            except (OSError, EOFError) as e:
                raise ManifestError(f"{storage.redact(url)}: bad gzip data: {e}") from None
        if fmt == "parquet":
            columns, records = _parse_parquet(data, url)
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise ManifestError(f"{storage.redact(url)}: not UTF-8 text: {e}") from None
            if fmt == "jsonl":
                columns, records = _parse_jsonl(text)
            elif fmt in ("csv", "tsv"):
                columns, records = _parse_delimited(text, url, "\t" if fmt == "tsv" else ",")
            else:
                raise ManifestError(f"unknown manifest format {fmt!r}")
        return cls(url=url, format=fmt, columns=columns, records=records)

    @classmethod
    def read(cls, url: str, *, masks: str | None = None, mask_column: bool = True) -> Manifest:
        """Read and parse the manifest at ``url`` (a local path or any supported URL), or the
        rows of a folder or glob of images (``masks``, ``mask_column``: see
        :func:`read_manifest_bytes`).

        Raises:
            FileNotFoundError: no manifest (or folder) at ``url``.
            OSError: not a regular file, or larger than :data:`MAX_MANIFEST_BYTES`
                (:class:`~i2score.data.inputs.InputRejected`), or a storage error.
            ManifestError: the format is unknown or the file cannot be parsed; a folder or
                glob without images (:class:`~i2score.data.manifest.discover.DiscoveryError`).
        """
        url = absolute_url(url)
        fmt = _format_of(url)[0] if is_manifest_source(url) else "csv"
        return cls.from_bytes(read_manifest_bytes(url, masks=masks, mask_column=mask_column), url, fmt)

    def __len__(self) -> int:
        return len(self.records)


def read_manifest_bytes(url: str, *, masks: str | None = None, mask_column: bool = True) -> bytes:
    """The manifest file's bytes: a regular file (a named pipe given as a manifest cannot block)
    of at most :data:`MAX_MANIFEST_BYTES`. The manifest itself is the operator's choice, so it
    is not confined; the files it names are.

    A folder or glob ``url`` (:func:`~i2score.data.manifest.discover.is_manifest_source`) gives
    the CSV manifest of its images instead (:func:`~i2score.data.manifest.discover.discover`,
    full URLs, rows sorted): ``masks`` is its masks folder (None: the ``name_mask`` rule), and
    ``mask_column=False`` leaves the masks out (a reconstruct job's rows take none).

    Raises:
        ManifestError: ``masks`` given with a manifest file (its ``mask`` column names the masks).
    """
    url = absolute_url(url)
    if not is_manifest_source(url):
        return discover(url, masks).to_csv(mask_column=mask_column)
    if masks is not None:
        raise ManifestError(f"masks {storage.redact(masks)}: a masks folder goes with a folder or glob of images; "
                            f"the manifest {storage.redact(url)} names its masks in its mask column")
    return _MANIFEST_READER.read(url)


_MANIFEST_READER = InputPolicy(None, MAX_MANIFEST_BYTES)


def read_manifest(url: str) -> Manifest:
    """Shorthand for :meth:`Manifest.read`."""
    return Manifest.read(url)


# ----------------------------------------------------------------------------------------------
# URLs
# ----------------------------------------------------------------------------------------------

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def url_scheme(url: str) -> str | None:
    """The URL's scheme ("" for a plain path) or None when it is not acceptable."""
    if ":" not in url:
        return ""  # the common case: a relative or absolute path
    head = url.split("://", 1)[0]
    if "::" in head:
        return None  # chained fsspec URLs (simplecache::s3://...) bypass our storage rules
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        return scheme if scheme in SUPPORTED_SCHEMES else None
    m = _SCHEME_RE.match(url)
    if m and len(m.group(1)) > 1:  # "data:...", "ftp:x"; one letter is a Windows drive
        return None
    return ""


def absolute_url(url: str) -> str:
    """A local manifest path made absolute, so resolved rows do not depend on the cwd."""
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


def _needs_normpath(p: str) -> bool:
    """True if ``p`` has ``.``/``..`` segments, empty segments or a trailing slash."""
    return p.startswith(".") or "/." in p or "//" in p or p.endswith("/") or not p


def path_resolver(manifest_url: str) -> Callable[[str], str]:
    """A function resolving a row's path against the manifest's folder.

    Absolute paths and URLs with a scheme are returned unchanged.
    """
    if manifest_url.lower().startswith(("http://", "https://")):
        return lambda p: p if "://" in p or p.startswith("/") else urllib.parse.urljoin(manifest_url, p)
    if "://" in manifest_url:
        proto, path = manifest_url.split("://", 1)
        base = posixpath.dirname(path)
        prefix = f"{proto}://"
        base_prefix = f"{prefix}{base}/" if base else prefix

        def resolve_remote(p: str) -> str:
            if "://" in p or p.startswith("/"):
                return p
            if not _needs_normpath(p):
                return base_prefix + p  # fast path: nothing to normalise
            return prefix + posixpath.normpath(posixpath.join(base, p))

        return resolve_remote
    base_dir = os.path.dirname(manifest_url)
    base_dir_prefix = base_dir.rstrip(os.sep) + os.sep

    def resolve_local(p: str) -> str:
        if "://" in p or os.path.isabs(p):
            return p
        if os.sep == "/" and not _needs_normpath(p):
            return base_dir_prefix + p
        return os.path.normpath(os.path.join(base_dir, p))

    return resolve_local
