"""Input manifests: reading (CSV / TSV / Parquet / JSONL), validation and row loading.

A manifest lists one job per row: ``id``, ``image``, optional ``mask``, and for edit manifests
``op``, ``ref`` and ``params`` (JSON). The full contract (columns, id rules, ops and their
parameters, image and mask policies, reason codes) is in ``manifests/README.md``; the JSON Schema
of one row is ``manifests/schema.json``.

Two stages share one error path:

* :func:`validate_manifest` runs the **schema checks** on every row up front (no file reads):
  ids, ops, URL schemes, params. With ``check_files=True`` it also reads and decodes every file
  through the same function :func:`load_row` uses.
* :func:`load_row` reads and decodes one row's files and fits them to the generator. It raises
  :class:`RowError` with the same reason codes, so a row that goes bad between validation and
  loading is rejected the same way.

A bad row never raises: it becomes a :class:`Rejection` with a stable ``reason_code``
(:class:`Reason`). Only a manifest that cannot be read at all (missing file, unknown format,
corrupt Parquet, duplicate column names) raises :class:`ManifestError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import posixpath
import re
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import pyarrow as pa

from i2score.data import storage
from i2score.data.images import (
    DEFAULT_MAX_PIXELS,
    MASK_MARGIN,
    MASK_MAX_AMBIGUOUS,
    FitPolicy,
    ImageError,
    decode_image,
    decode_mask,
    fit_mask,
    fit_to_resolution,
    to_tensor,
)

__all__ = [
    "ERRORS_SCHEMA",
    "KINDS",
    "OPS",
    "REASON_DESCRIPTIONS",
    "SUPPORTED_SCHEMES",
    "LoadedRow",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "OpSpec",
    "Param",
    "Reason",
    "Rejection",
    "RowError",
    "ValidationResult",
    "check_id",
    "load_row",
    "read_manifest",
    "validate_manifest",
]


# ----------------------------------------------------------------------------------------------
# Reason codes
# ----------------------------------------------------------------------------------------------


class Reason(str, Enum):
    """Why a row was rejected. The string values are the stable codes written to
    ``errors.parquet``; :data:`REASON_DESCRIPTIONS` has one line on each."""

    MISSING_COLUMN = "missing_column"
    MALFORMED_ROW = "malformed_row"
    EMPTY_ID = "empty_id"
    INVALID_ID = "invalid_id"
    PATH_TRAVERSAL = "path_traversal"
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_OP = "unknown_op"
    MISSING_IMAGE = "missing_image"
    MISSING_MASK = "missing_mask"
    MISSING_REF = "missing_ref"
    UNEXPECTED_INPUT = "unexpected_input"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    INVALID_PARAMS = "invalid_params"
    MISSING_FILE = "missing_file"
    UNREADABLE_FILE = "unreadable_file"
    EMPTY_FILE = "empty_file"
    TRUNCATED_IMAGE = "truncated_image"
    UNDECODABLE_IMAGE = "undecodable_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    MASK_SIZE_MISMATCH = "mask_size_mismatch"
    NON_BINARY_MASK = "non_binary_mask"


REASON_DESCRIPTIONS: dict[str, str] = {
    "missing_column": "a column the manifest kind requires is absent (every row is rejected)",
    "malformed_row": "the record cannot be parsed (CSV row with more fields than the header, "
                     "JSONL line that is not a JSON object, a value of the wrong type)",
    "empty_id": "the id is empty",
    "invalid_id": "the id has characters outside [A-Za-z0-9._-], starts with '.', or is longer "
                  "than 128 characters",
    "path_traversal": "the id would leave the output folder ('/', '\\', NUL, '.', '..', a drive "
                      "letter)",
    "duplicate_id": "the id occurs more than once (compared case-insensitively); every "
                    "occurrence is rejected",
    "unknown_op": "the op is empty, not one of the known ops, or not allowed in this manifest kind",
    "missing_image": "the image field is empty",
    "missing_mask": "the op needs a mask and the mask field is empty",
    "missing_ref": "the op needs a second image (ref) and the ref field is empty",
    "unexpected_input": "a mask or ref is given to an op that does not use one",
    "unsupported_scheme": "a URL scheme outside the supported list (or a chained fsspec URL)",
    "invalid_params": "params is not a JSON object, has an unknown key, a wrong type, a value "
                      "out of range, misses a required key, or names a row that is not valid",
    "missing_file": "a referenced file does not exist",
    "unreadable_file": "a referenced file exists but cannot be read (permissions, a folder, "
                       "network errors after retries)",
    "empty_file": "a referenced file has zero bytes",
    "truncated_image": "the image header is valid but the data ends early",
    "undecodable_image": "the file is not an image Pillow can decode (or is EPS, which is refused)",
    "decompression_bomb": "width x height exceeds the pixel limit (64 Mpx by default)",
    "mask_size_mismatch": "the mask size differs from the image and the aspect ratios differ "
                          "(or resize policy 'error')",
    "non_binary_mask": "more than 5% of mask pixels are between 0.25 and 0.75",
}


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (as opposed to one bad row)."""


class RowError(Exception):
    """One row cannot be used; ``reason_code`` is a :class:`Reason` value."""

    def __init__(self, reason_code: str, message: str, *, field: str | None = None,
                 url: str | None = None) -> None:
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = str(reason_code.value if isinstance(reason_code, Reason) else reason_code)
        self.message = message
        self.field = field
        self.url = url


# ----------------------------------------------------------------------------------------------
# Ops and their parameters (the one table)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter of an op.

    ``type``: ``int`` (integral JSON numbers; ``3.0`` is accepted as 3, booleans are not),
    ``float`` (finite numbers), ``str`` (one of ``choices``) or ``id`` (the id of another row of
    the same manifest, which must itself be valid). ``minimum``/``maximum`` are inclusive.
    """

    type: Literal["int", "float", "str", "id"]
    default: Any = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    doc: str = ""


Use = Literal["required", "unused"]


@dataclass(frozen=True)
class OpSpec:
    """What an op needs: ``mask``/``ref`` required or unused, and its parameters."""

    name: str
    mask: Use
    ref: Use
    params: Mapping[str, Param]
    doc: str = ""

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` (already validated) with the defaults of absent parameters filled in."""
        out = {k: p.default for k, p in self.params.items() if p.default is not None}
        out.update(given)
        return out


OPS: dict[str, OpSpec] = {
    op.name: op
    for op in [
        OpSpec("reconstruct", mask="unused", ref="unused", params={},
               doc="Embed the image (Alg. 2): W+ then noise."),
        OpSpec("inpaint", mask="required", ref="unused", params={
            "k": Param("int", 1, minimum=1, maximum=16, doc="number of solutions"),
            "seed": Param("int", 0, doc="seed of the w_ini offsets"),
        }, doc="Fill the mask region (white = missing) (Alg. 4)."),
        OpSpec("crossover", mask="required", ref="required", params={
            "blur_sigma": Param("float", 2.0, minimum=0.0,
                                doc="Gaussian blur of the mask, pixels at the generator resolution"),
        }, doc="Mask region from image, the rest from ref (Alg. 3)."),
        OpSpec("scribble", mask="required", ref="required", params={
            "layers": Param("int", 4, minimum=4, maximum=6, doc="first W+ rows optimised"),
            "reg": Param("float", 0.1, minimum=0.0, doc="weight of ||w* - w||^2"),
        }, doc="image = original, ref = scribbled image, mask = scribble region (Alg. 5)."),
        OpSpec("style_transfer", mask="required", ref="required", params={},
               doc="Restyle the mask region of image with the style image ref (Alg. 6)."),
        OpSpec("attribute_transfer", mask="required", ref="required", params={
            "layer": Param("int", 4, minimum=0, doc="synthesis layer of the activation blend"),
            "mode": Param("str", "copy", choices=("copy", "average", "channels"),
                          doc="spatial copy, averaging or channel-wise copy"),
        }, doc="Blend ref's activations into image inside the mask (Sec. 7.6)."),
        OpSpec("morph", mask="unused", ref="required", params={
            "t": Param("float", 0.5, minimum=0.0, maximum=1.0, doc="0 = image, 1 = ref"),
        }, doc="(1 - t) * w_image + t * w_ref."),
        OpSpec("style_mix", mask="unused", ref="required", params={
            "k": Param("int", 8, minimum=0, doc="first k W+ rows from image, the rest from ref"),
        }, doc="Content from image, style from ref."),
        OpSpec("expression_transfer", mask="unused", ref="unused", params={
            "a": Param("id", required=True, doc="row id of the neutral expression"),
            "b": Param("id", required=True, doc="row id of the target expression"),
            "strength": Param("float", 1.0, doc="lambda in w + lambda * (w_b - w_a)"),
        }, doc="w_image + strength * (w_b - w_a), with a and b other rows of the manifest."),
    ]
}

KINDS: dict[str, dict[str, Any]] = {
    # kind: required columns, default op when the op column is absent/empty, allowed ops
    "reconstruct": {"columns": ("id", "image"), "default_op": "reconstruct", "ops": ("reconstruct",)},
    "inpaint": {"columns": ("id", "image", "mask"), "default_op": "inpaint", "ops": ("inpaint",)},
    "edit": {"columns": ("id", "image", "op"), "default_op": None, "ops": tuple(OPS)},
}

#: Accepted URL schemes ("" = a plain local path).
SUPPORTED_SCHEMES = frozenset({"", "file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss",
                               "http", "https", "memory"})

KNOWN_COLUMNS = ("id", "image", "mask", "op", "ref", "params")

# ----------------------------------------------------------------------------------------------
# Ids
# ----------------------------------------------------------------------------------------------

SAFE_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def check_id(value: str) -> tuple[str, str] | None:
    """``None`` for a safe id, else ``(reason_code, message)``.

    Safe ids match ``[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}``: usable as a file name on every
    filesystem and object store, never a path. Ids with a separator, NUL, a drive letter or
    that are ``.``/``..`` are ``path_traversal``; anything else outside the rule is ``invalid_id``.
    """
    if SAFE_ID_RE.fullmatch(value):
        return None
    if not value:
        return Reason.EMPTY_ID.value, "id is empty"
    if ("/" in value or "\\" in value or "\x00" in value or value in (".", "..")
            or _DRIVE_RE.match(value)):
        return Reason.PATH_TRAVERSAL.value, f"id {value!r} would escape the output folder"
    if len(value) > 128:
        return Reason.INVALID_ID.value, f"id is {len(value)} characters long (at most 128)"
    return Reason.INVALID_ID.value, (f"id {value!r} must match [A-Za-z0-9._-]+ and not start "
                                     "with '.'")


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One validated row.

    Attributes:
        id: safe id (see :func:`check_id`); output files are named after it.
        image: absolute URL or path of the main image (relative paths already resolved).
        op: one of :data:`OPS`.
        mask: URL of the mask (white = the region the user names) or None.
        ref: URL of the second image or None.
        params: the validated params as given (see :meth:`OpSpec.resolve_params` for defaults).
        row: 1-based index of the record in the manifest (header not counted).
        extra: values of columns outside the known set, kept for lineage.
    """

    id: str
    image: str
    op: str
    mask: str | None = None
    ref: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    row: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def urls(self) -> list[str]:
        """The row's file URLs: image, then mask and ref when present."""
        return [u for u in (self.image, self.mask, self.ref) if u is not None]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected row: ``row`` (1-based record index, 0 for the whole manifest), its ``id`` as
    written (None when absent), the ``reason_code``, a human ``message``, and the ``field`` and
    ``url`` involved when one is."""

    row: int
    id: str | None
    reason_code: str
    message: str
    field: str | None = None
    url: str | None = None


#: Schema of ``errors.parquet`` (and of :meth:`ValidationResult.to_arrow`).
ERRORS_SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("reason_code", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("field", pa.string()),
    pa.field("url", pa.string()),
])


def rejections_to_arrow(rejections: Iterable[Rejection], source: str | None = None) -> pa.Table:
    """Rejections as an :data:`ERRORS_SCHEMA` table; URLs and messages are redacted.

    ``source`` is the manifest URL the rows came from.
    """
    rej = list(rejections)
    src = storage.redact(source) if source is not None else None
    return pa.Table.from_pydict({
        "id": [r.id for r in rej],
        "row": [r.row for r in rej],
        "reason_code": [r.reason_code for r in rej],
        "message": [storage.redact(r.message) for r in rej],
        "source": [src] * len(rej),
        "field": [r.field for r in rej],
        "url": [storage.redact(r.url) if r.url is not None else None for r in rej],
    }, schema=ERRORS_SCHEMA)


@dataclass
class ValidationResult:
    """Output of :func:`validate_manifest`: the valid ``rows`` and the ``rejected`` ones, both in
    manifest order."""

    manifest_url: str
    kind: str
    rows: list[ManifestRow]
    rejected: list[Rejection]

    @property
    def n_total(self) -> int:
        return len(self.rows) + len(self.rejected)

    @property
    def ok(self) -> bool:
        """True when no row was rejected."""
        return not self.rejected

    def counts_by_reason(self) -> dict[str, int]:
        return dict(Counter(r.reason_code for r in self.rejected).most_common())

    def to_arrow(self) -> pa.Table:
        """The rejected rows as an ``errors.parquet`` table (:data:`ERRORS_SCHEMA`)."""
        return rejections_to_arrow(self.rejected, self.manifest_url)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


class _Malformed:
    """Placeholder for a record that could not be parsed."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


Record = dict[str, Any] | _Malformed

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
            ".csv, .tsv, .parquet (.pq) or .jsonl (.ndjson), optionally followed by .gz")
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
                records.append(_Malformed(f"{len(fields)} fields, the header has {n}"))
                continue
            records.append({c: f.strip() for c, f in zip(columns, fields) if c})
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
            records.append(_Malformed(f"not valid JSON: {e}"))
            continue
        if not isinstance(obj, dict):
            records.append(_Malformed(f"a JSON {type(obj).__name__}, not an object"))
            continue
        rec = {str(k).strip().lower(): _clean(v) for k, v in obj.items()}
        for k in rec:
            seen.setdefault(k, None)
        records.append(rec)
    return list(seen), records


def _parse_parquet(data: bytes, url: str) -> tuple[list[str], list[Record]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for corrupt files
        raise ManifestError(f"{storage.redact(url)}: not a readable Parquet file: {e}") from None
    columns = _norm_columns(table.column_names, url)
    values = [table.column(i).to_pylist() for i in range(table.num_columns)]
    records: list[Record] = []
    for rec_values in zip(*values):
        records.append({c: _clean(v) for c, v in zip(columns, rec_values)})
    return columns, records


@dataclass
class Manifest:
    """A parsed manifest: normalised (stripped, lower-case) ``columns`` and one record per row.

    Use :meth:`read` (any storage URL) or :meth:`from_bytes`; :meth:`validate` checks it.
    """

    url: str
    format: str
    columns: list[str]
    records: list[Record]

    @classmethod
    def from_bytes(cls, data: bytes, url: str, format: str | None = None) -> Manifest:
        """Parse ``data``; ``url`` names the manifest (relative paths resolve against it)."""
        fmt, gz = (format, False) if format else _format_of(url)
        if gz or data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
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
    def read(cls, url: str) -> Manifest:
        """Read and parse the manifest at ``url`` (a local path or any supported URL).

        Raises:
            FileNotFoundError: no manifest at ``url``.
            ManifestError: the format is unknown or the file cannot be parsed.
        """
        url = _absolute(url)
        fmt, _ = _format_of(url)
        return cls.from_bytes(storage.read_bytes(url), url, fmt)

    def __len__(self) -> int:
        return len(self.records)

    def validate(self, kind: str = "reconstruct", **kwargs: Any) -> ValidationResult:
        """Same as :func:`validate_manifest` on this manifest."""
        return _validate(self, kind, **kwargs)


def read_manifest(url: str) -> Manifest:
    """Shorthand for :meth:`Manifest.read`."""
    return Manifest.read(url)


# ----------------------------------------------------------------------------------------------
# URLs
# ----------------------------------------------------------------------------------------------

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def _scheme(url: str) -> str | None:
    """The URL's scheme ("" for a plain path) or None when it is not acceptable."""
    if ":" not in url:
        return ""  # the common case: a relative or absolute path
    if "::" in url:
        return None  # chained fsspec URLs (simplecache::s3://...) bypass our storage rules
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        return scheme if scheme in SUPPORTED_SCHEMES else None
    m = _SCHEME_RE.match(url)
    if m and len(m.group(1)) > 1:  # "data:...", "ftp:x"; one letter is a Windows drive
        return None
    return ""


def _absolute(url: str) -> str:
    """A local manifest path made absolute, so resolved rows do not depend on the cwd."""
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


def _needs_normpath(p: str) -> bool:
    """True if ``p`` has ``.``/``..`` segments, empty segments or a trailing slash."""
    return p.startswith(".") or "/." in p or "//" in p or p.endswith("/") or not p


def _resolver(manifest_url: str) -> Callable[[str], str]:
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


# ----------------------------------------------------------------------------------------------
# Schema checks
# ----------------------------------------------------------------------------------------------


def _check_param(name: str, spec: Param, value: Any) -> Any:
    """The validated value, or raise ValueError with a message."""
    if spec.type == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    elif spec.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        value = float(value)
    elif spec.type in ("str", "id"):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if spec.choices is not None and value not in spec.choices:
            raise ValueError(f"{name} must be one of {list(spec.choices)}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"{name} must be >= {spec.minimum:g}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"{name} must be <= {spec.maximum:g}, got {value!r}")
    return value


def _parse_params_cached(raw: Any, op: OpSpec, cache: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """:func:`_parse_params` memoised on ``(op, text)``: large manifests repeat a few params
    strings, and JSON parsing dominates the per-row cost otherwise."""
    if not isinstance(raw, str):
        return _parse_params(raw, op)
    key = (op.name, raw)
    hit = cache.get(key)
    if hit is None:
        try:
            hit = _parse_params(raw, op)
        except ValueError as e:
            hit = e
        if len(cache) < 4096:
            cache[key] = hit
    if isinstance(hit, ValueError):
        raise hit
    return dict(hit)


def _parse_params(raw: Any, op: OpSpec) -> dict[str, Any]:
    """Validated params dict; raises ValueError (-> ``invalid_params``)."""
    if raw is None or raw == "":
        given: Any = {}
    elif isinstance(raw, str):
        try:
            given = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"params is not valid JSON: {e}") from None
    elif isinstance(raw, list) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in raw):
        given = dict(raw)  # a Parquet map column
    else:
        given = raw
    if not isinstance(given, dict):
        raise ValueError(f"params must be a JSON object, got {type(given).__name__}")  # noqa: TRY004 - ValueError = invalid_params
    out: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue  # null = not given (Parquet struct columns fill absent keys with null)
        spec = op.params.get(key)
        if spec is None:
            allowed = ", ".join(op.params) or "none"
            raise ValueError(f"unknown parameter {key!r} for op {op.name} (allowed: {allowed})")
        out[key] = _check_param(f"params.{key}", spec, value)
    missing = [k for k, p in op.params.items() if p.required and k not in out]
    if missing:
        raise ValueError(f"op {op.name} requires params {missing}")
    return out


class _Checker:
    """Per-row schema checks for one manifest; one reason per row, the first failing check in
    this order: parse, id, duplicate, op, image, mask, ref, params."""

    def __init__(self, manifest: Manifest, kind: str) -> None:
        self.kind = KINDS[kind]
        self.has_op = "op" in manifest.columns
        self.resolve = _resolver(manifest.url)
        self.extra_cols = [c for c in manifest.columns if c and c not in KNOWN_COLUMNS]
        self.counts: Counter[str] = Counter()
        self.params_cache: dict[tuple[str, str], Any] = {}

    def id_of(self, rec: Record) -> str | None:
        if isinstance(rec, _Malformed):
            return None
        value = rec.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # Parquet/JSONL integer ids
        return value if isinstance(value, str) else None

    def url(self, rec: dict[str, Any], name: str, row: int, rid: str) -> str | Rejection | None:
        value = rec.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            return Rejection(row, rid, Reason.MALFORMED_ROW.value,
                             f"{name} must be a string, got {type(value).__name__}", name)
        if _scheme(value) is None:
            shown = storage.redact(value)
            scheme = "chained URL" if "::" in value else repr(value.split(":", 1)[0])
            return Rejection(row, rid, Reason.UNSUPPORTED_SCHEME.value,
                             f"{name} {shown!r}: unsupported URL scheme {scheme} (use a path or "
                             f"{', '.join(sorted(s for s in SUPPORTED_SCHEMES if s))})",
                             name, shown)
        return self.resolve(value)

    def check(self, rec: Record, row: int, rid: str | None) -> ManifestRow | Rejection:
        """``rid`` is ``self.id_of(rec)``, computed once by the caller."""
        if isinstance(rec, _Malformed):
            return Rejection(row, None, Reason.MALFORMED_ROW.value, rec.message)
        raw_id = rec.get("id")
        if raw_id is None or raw_id == "":
            return Rejection(row, None, Reason.EMPTY_ID.value, "id is empty", "id")
        if rid is None:
            return Rejection(row, str(raw_id), Reason.MALFORMED_ROW.value,
                             f"id must be a string, got {type(raw_id).__name__}", "id")
        bad = check_id(rid)
        if bad is not None:
            return Rejection(row, rid, bad[0], bad[1], "id")
        if self.counts[rid.casefold()] > 1:
            return Rejection(row, rid, Reason.DUPLICATE_ID.value,
                             f"id {rid!r} occurs {self.counts[rid.casefold()]} times "
                             "(ids are compared case-insensitively)", "id")

        op_name = rec.get("op") if self.has_op else None
        if op_name is None or op_name == "":
            op_name = self.kind["default_op"]
            if op_name is None:
                return Rejection(row, rid, Reason.UNKNOWN_OP.value,
                                 f"op is empty (one of {', '.join(self.kind['ops'])})", "op")
        if not isinstance(op_name, str) or op_name not in self.kind["ops"]:
            return Rejection(row, rid, Reason.UNKNOWN_OP.value,
                             f"unknown op {op_name!r} (expected {', '.join(self.kind['ops'])})", "op")
        op = OPS[op_name]

        image = self.url(rec, "image", row, rid)
        if isinstance(image, Rejection):
            return image
        if image is None:
            return Rejection(row, rid, Reason.MISSING_IMAGE.value, "image is empty", "image")
        found: dict[str, str | None] = {}
        for name, use, missing in (("mask", op.mask, Reason.MISSING_MASK),
                                   ("ref", op.ref, Reason.MISSING_REF)):
            value = self.url(rec, name, row, rid)
            if isinstance(value, Rejection):
                return value
            if value is None and use == "required":
                return Rejection(row, rid, missing.value, f"op {op.name} needs a {name}", name)
            if value is not None and use == "unused":
                return Rejection(row, rid, Reason.UNEXPECTED_INPUT.value,
                                 f"op {op.name} does not use a {name}, but one is given", name,
                                 storage.redact(value))
            found[name] = value
        try:
            params = _parse_params_cached(rec.get("params"), op, self.params_cache)
        except ValueError as e:
            return Rejection(row, rid, Reason.INVALID_PARAMS.value, str(e), "params")
        extra = {c: rec.get(c) for c in self.extra_cols if rec.get(c) not in (None, "")}
        return ManifestRow(id=rid, image=image, op=op.name, mask=found["mask"], ref=found["ref"],
                           params=params, row=row, extra=extra)


def _check_references(rows: list[ManifestRow], rejected: list[Rejection]) -> list[ManifestRow]:
    """Reject rows whose ``id`` params name a row that is not valid, until none does (a row
    rejected here can invalidate another that names it)."""
    id_params = {name: [k for k, p in spec.params.items() if p.type == "id"] for name, spec in OPS.items()}
    if not any(id_params[r.op] for r in rows):
        return rows
    while True:
        valid = {r.id for r in rows}
        keep: list[ManifestRow] = []
        for r in rows:
            bad = next((k for k in id_params[r.op] if r.params.get(k) not in valid), None)
            if bad is None:
                keep.append(r)
            else:
                rejected.append(Rejection(r.row, r.id, Reason.INVALID_PARAMS.value,
                                          f"params.{bad} = {r.params[bad]!r} is not the id of a "
                                          "valid row of this manifest", "params"))
        if len(keep) == len(rows):
            return keep
        rows = keep


def _validate(manifest: Manifest, kind: str, *, check_files: bool = False,
              resolution: int | None = None, policy: FitPolicy = "center-crop",
              threshold: float = 0.5, mask_resize: Literal["nearest", "error"] = "nearest",
              max_pixels: int = DEFAULT_MAX_PIXELS, chunk_size: int = 64,
              max_workers: int = 16) -> ValidationResult:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    rejected: list[Rejection] = []
    missing = [c for c in KINDS[kind]["columns"] if c not in manifest.columns]
    if missing:
        checker = _Checker(manifest, kind)
        for i, rec in enumerate(manifest.records, 1):
            rid = checker.id_of(rec)
            rejected.append(Rejection(i, rid or None, Reason.MISSING_COLUMN.value,
                                      f"the {kind} manifest has no {', '.join(missing)} column "
                                      f"(columns: {', '.join(manifest.columns) or 'none'})",
                                      missing[0]))
        return ValidationResult(manifest.url, kind, [], rejected)

    checker = _Checker(manifest, kind)
    ids = [checker.id_of(rec) for rec in manifest.records]
    checker.counts = Counter(i.casefold() for i in ids if i)
    rows: list[ManifestRow] = []
    for i, (rec, rid) in enumerate(zip(manifest.records, ids), 1):
        out = checker.check(rec, i, rid)
        (rows if isinstance(out, ManifestRow) else rejected).append(out)  # type: ignore[arg-type]

    if check_files and rows:
        passed: list[ManifestRow] = []
        for start in range(0, len(rows), chunk_size):
            chunk = rows[start:start + chunk_size]
            fetched = storage.read_many([u for r in chunk for u in r.urls()], max_workers=max_workers)
            for r in chunk:
                try:
                    decoded = _decode_row(r, fetched, threshold=threshold, mask_resize=mask_resize,
                                          max_pixels=max_pixels)
                    if resolution is not None:
                        _fit(decoded, resolution, policy)
                except RowError as e:
                    rejected.append(Rejection(r.row, r.id, e.reason_code, e.message, e.field, e.url))
                else:
                    passed.append(r)
            del fetched
        rows = passed

    rows = _check_references(rows, rejected)
    rejected.sort(key=lambda r: r.row)
    return ValidationResult(manifest.url, kind, rows, rejected)


def validate_manifest(url: str, *, kind: str = "reconstruct", check_files: bool = False,
                      resolution: int | None = None, policy: FitPolicy = "center-crop",
                      threshold: float = 0.5, mask_resize: Literal["nearest", "error"] = "nearest",
                      max_pixels: int = DEFAULT_MAX_PIXELS, max_workers: int = 16) -> ValidationResult:
    """Validate the manifest at ``url``; bad rows are returned, never raised.

    Args:
        url: manifest location (local path or URL); format from the extension.
        kind: ``reconstruct`` (columns id, image), ``inpaint`` (id, image, mask) or ``edit``
            (id, image, op; ref/mask/params per op).
        check_files: also read and decode every file (the path :func:`load_row` takes), reading
            up to ``max_workers`` files at a time, 64 rows per batch.
        resolution, policy: when given with ``check_files``, also fit to the generator.
        threshold, mask_resize, max_pixels: image/mask policies (see :mod:`i2score.data.images`).

    Returns:
        :class:`ValidationResult` with the valid rows and the rejections, in manifest order.

    Raises:
        FileNotFoundError: no manifest at ``url``.
        ManifestError: the manifest as a whole cannot be parsed.
    """
    return _validate(Manifest.read(url), kind, check_files=check_files, resolution=resolution,
                     policy=policy, threshold=threshold, mask_resize=mask_resize,
                     max_pixels=max_pixels, max_workers=max_workers)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedRow:
    """A row's decoded inputs, fitted to the generator.

    Attributes:
        row: the manifest row.
        image: ``[3, R, R]`` float32 in [-1, 1].
        mask: ``[1, R, R]`` float32 in {0, 1} (1 = the region the user names) or None.
        ref: ``[3, R, R]`` float32 in [-1, 1] or None.
        image_bytes, mask_bytes, ref_bytes: the files as read (for cache keys).
        image_size: native ``(width, height)`` of the image before fitting.
    """

    row: ManifestRow
    image: Any
    mask: Any | None
    ref: Any | None
    image_bytes: bytes
    mask_bytes: bytes | None
    ref_bytes: bytes | None
    image_size: tuple[int, int]


@dataclass
class _Decoded:
    row: ManifestRow
    image: Any  # PIL RGB
    mask: Any | None  # [1, H, W] at the image's size
    ref: Any | None  # PIL RGB
    image_bytes: bytes
    mask_bytes: bytes | None
    ref_bytes: bytes | None


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while not isinstance(seen, FileNotFoundError) and (seen.__cause__ or seen.__context__):
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return seen if isinstance(seen, FileNotFoundError) else exc


def _read(url: str, name: str, fetched: Mapping[str, bytes | BaseException] | None) -> bytes:
    """Bytes of ``url`` (from ``fetched`` when there), storage errors -> :class:`RowError`."""
    shown = storage.redact(url)
    try:
        if fetched is not None and url in fetched:
            got = fetched[url]
            if isinstance(got, BaseException):
                raise got
            data = got
        else:
            data = storage.read_bytes(url)
    except Exception as e:  # noqa: BLE001 - any read failure is this row's error, never the run's
        cause = _root_cause(e)
        if isinstance(cause, FileNotFoundError):
            raise RowError(Reason.MISSING_FILE.value, f"{name} {shown!r} does not exist",
                           field=name, url=shown) from None
        if isinstance(cause, IsADirectoryError):
            raise RowError(Reason.UNREADABLE_FILE.value, f"{name} {shown!r} is a folder",
                           field=name, url=shown) from None
        raise RowError(Reason.UNREADABLE_FILE.value,
                       storage.redact(f"{name} {shown!r} cannot be read: {type(e).__name__}: {e}"),
                       field=name, url=shown) from None
    if len(data) == 0:
        raise RowError(Reason.EMPTY_FILE.value, f"{name} {shown!r} is empty (0 bytes)",
                       field=name, url=shown)
    return bytes(data)


def _decode_row(row: ManifestRow, fetched: Mapping[str, bytes | BaseException] | None = None, *,
                threshold: float = 0.5, mask_resize: Literal["nearest", "error"] = "nearest",
                max_pixels: int = DEFAULT_MAX_PIXELS,
                background: tuple[int, int, int] = (255, 255, 255)) -> _Decoded:
    """Read and decode a row's files at native size: the one per-row file error path."""
    current = ("image", row.image)
    try:
        image_bytes = _read(row.image, "image", fetched)
        image = decode_image(image_bytes, max_pixels=max_pixels, background=background, what="image")
        mask_bytes = ref_bytes = mask = ref = None
        if row.mask is not None:
            current = ("mask", row.mask)
            mask_bytes = _read(row.mask, "mask", fetched)
            mask = decode_mask(mask_bytes, image.size, threshold=threshold, resize=mask_resize,
                               margin=MASK_MARGIN, max_ambiguous=MASK_MAX_AMBIGUOUS,
                               max_pixels=max_pixels)
        if row.ref is not None:
            current = ("ref", row.ref)
            ref_bytes = _read(row.ref, "ref", fetched)
            ref = decode_image(ref_bytes, max_pixels=max_pixels, background=background, what="ref")
    except ImageError as e:
        raise RowError(e.reason, e.message, field=current[0],
                       url=storage.redact(current[1])) from None
    return _Decoded(row, image, mask, ref, image_bytes, mask_bytes, ref_bytes)


def _fit(d: _Decoded, resolution: int, policy: FitPolicy) -> tuple[Any, Any | None, Any | None]:
    image = to_tensor(fit_to_resolution(d.image, resolution, policy))
    mask = fit_mask(d.mask, resolution, policy) if d.mask is not None else None
    ref = to_tensor(fit_to_resolution(d.ref, resolution, policy)) if d.ref is not None else None
    return image, mask, ref


def load_row(row: ManifestRow, *, resolution: int, policy: FitPolicy = "center-crop",
             threshold: float = 0.5, mask_resize: Literal["nearest", "error"] = "nearest",
             max_pixels: int = DEFAULT_MAX_PIXELS,
             background: tuple[int, int, int] = (255, 255, 255),
             fetched: Mapping[str, bytes | BaseException] | None = None) -> LoadedRow:
    """Read, decode and fit one row's files to ``resolution x resolution``.

    Args:
        row: a validated row.
        resolution: the generator's resolution R.
        policy: ``center-crop`` | ``pad`` | ``stretch`` (:func:`i2score.data.images.fit_to_resolution`);
            image, mask and ref all use it.
        threshold, mask_resize, max_pixels, background: see :mod:`i2score.data.images`.
        fetched: bytes (or read errors) already fetched, e.g. by ``storage.read_many``.

    Returns:
        :class:`LoadedRow` with ``image``/``ref`` ``[3, R, R]`` in [-1, 1] and ``mask``
        ``[1, R, R]`` in {0, 1}.

    Raises:
        RowError: with the reason codes validation uses (``missing_file``, ``unreadable_file``,
            ``empty_file``, ``truncated_image``, ``undecodable_image``, ``decompression_bomb``,
            ``mask_size_mismatch``, ``non_binary_mask``).
    """
    d = _decode_row(row, fetched, threshold=threshold, mask_resize=mask_resize,
                    max_pixels=max_pixels, background=background)
    image, mask, ref = _fit(d, resolution, policy)
    return LoadedRow(row=row, image=image, mask=mask, ref=ref, image_bytes=d.image_bytes,
                     mask_bytes=d.mask_bytes, ref_bytes=d.ref_bytes, image_size=d.image.size)


# ----------------------------------------------------------------------------------------------
# JSON Schema (manifests/schema.json is generated from this and checked by the tests)
# ----------------------------------------------------------------------------------------------


def row_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one manifest row, built from :data:`OPS`.

    It states the schema checks that a JSON validator can express (ids, op, which of mask/ref
    each op needs, params); relative-path resolution, duplicates, cross-row ids and file checks
    are :func:`validate_manifest`'s.
    """
    url_schema = {"type": "string", "minLength": 1,
                  "pattern": r"^(?![A-Za-z][A-Za-z0-9+.-]+:)|^(file|s3|s3a|gs|gcs|az|abfs|abfss|"
                             r"http|https|memory)://",
                  "description": "local path (relative to the manifest's folder) or URL"}

    def param_schema(p: Param) -> dict[str, Any]:
        s: dict[str, Any] = {"int": {"type": "integer"}, "float": {"type": "number"},
                             "str": {"type": "string"},
                             "id": {"type": "string", "pattern": f"^{SAFE_ID_RE.pattern}$"}}[p.type]
        s = dict(s)
        if p.minimum is not None:
            s["minimum"] = p.minimum
        if p.maximum is not None:
            s["maximum"] = p.maximum
        if p.choices is not None:
            s["enum"] = list(p.choices)
        if p.default is not None:
            s["default"] = p.default
        if p.doc:
            s["description"] = p.doc
        return s

    per_op = []
    for op in OPS.values():
        then: dict[str, Any] = {"properties": {}}
        required = [name for name, use in (("mask", op.mask), ("ref", op.ref)) if use == "required"]
        if required:
            then["required"] = required
        for name, use in (("mask", op.mask), ("ref", op.ref)):
            if use == "unused":
                then["properties"][name] = {"type": ["string", "null"], "maxLength": 0}
        params: dict[str, Any] = {
            "type": "object",
            "properties": {k: param_schema(p) for k, p in op.params.items()},
            "additionalProperties": False,
        }
        req_params = [k for k, p in op.params.items() if p.required]
        if req_params:
            params["required"] = req_params
        then["properties"]["params"] = {"anyOf": [params, {"type": "string"}, {"type": "null"}]}
        per_op.append({"if": {"properties": {"op": {"const": op.name}}, "required": ["op"]},
                       "then": then})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "i2score manifest row",
        "description": "One row of a CSV / Parquet / JSONL manifest (see manifests/README.md). "
                       "In CSV every value is a string and params is a JSON string.",
        "type": "object",
        "required": ["id", "image"],
        "properties": {
            "id": {"type": ["string", "integer"], "pattern": f"^{SAFE_ID_RE.pattern}$",
                   "description": "safe id: [A-Za-z0-9._-], not starting with '.', at most 128"},
            "image": url_schema,
            "mask": {**url_schema, "type": ["string", "null"],
                     "description": "binary mask, white = the region the user names"},
            "ref": {**url_schema, "type": ["string", "null"], "description": "second image"},
            "op": {"enum": list(OPS), "description": "required in edit manifests"},
            "params": {"type": ["object", "string", "null"],
                       "description": "JSON object of the op's parameters"},
        },
        "additionalProperties": True,
        "allOf": per_op,
    }


if __name__ == "__main__":  # pragma: no cover - regenerate manifests/schema.json
    import sys

    json.dump(row_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
