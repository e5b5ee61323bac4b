"""The language of a manifest: reason codes, rows and rejections, ids, and how ops are described.

A manifest lists one job per row: ``id``, ``image``, optional ``mask``, and for edit manifests
``op``, ``ref`` and ``params`` (JSON). The full contract (columns, id rules, ops and their
parameters, image and mask policies, reason codes) is in ``manifests/README.md``; the JSON Schema
of one row is ``manifests/schema.json``.

The data plane does not know the ops themselves: they are declared once in the op registry
(:mod:`i2score.runs.ops`), which hands an :class:`OpCatalog` (every op's inputs and parameter
schema, and the manifest kinds) to :func:`~i2score.data.manifest.validate.validate_manifest`.
A bad row never raises: it becomes a :class:`Rejection` with a stable ``reason_code``
(:class:`Reason`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from i2score.data import storage

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
    OUTSIDE_ALLOWED_INPUTS = "outside_allowed_inputs"
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    FILE_TOO_LARGE = "file_too_large"
    CREDENTIALS_IN_URL = "credentials_in_url"
    NO_FACE = "no_face"


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
    "outside_allowed_inputs": "a file outside the allowed input prefixes (by default the manifest's folder; "
                              "'..' escapes and symlinks are resolved first) or an http(s) host on a loopback, "
                              "private or link-local address",
    "not_a_regular_file": "a referenced path is a folder, named pipe, device or socket (only regular files "
                          "and objects are read)",
    "credentials_in_url": "a URL carries its credential (user:password@, a signed query) where it would have "
                          "to be written: a shard manifest of the sharded flow",
    "file_too_large": "a referenced file is larger than the input size limit (64 MiB by default, "
                      "--max-input-bytes)",
    "no_face": "the face detector found no face in the image (or ref) of a run with --align, or of i2s align",
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
# How an op is described to the manifest
# ----------------------------------------------------------------------------------------------


#: Generator limits a :class:`Param` can be bounded by (see :attr:`Param.maximum_of`).
GeneratorBound = Literal["num_ws", "last_layer"]


@dataclass(frozen=True)
class GeneratorLimits:
    """What a generator allows of parameters that count W+ rows or name synthesis layers.

    Whoever loads the generator (the plan, ``i2s validate``) builds it and hands it to
    validation through :meth:`OpCatalog.for_generator`, so the data layer never imports the
    generator.

    Attributes:
        name: the generator as the job names it (registry name, path or URL), quoted in messages.
        num_ws: rows of its W+ code (``L``).
        layer_names: its synthesis layers in execution order (``conv0``, ``conv1``, ...); a layer
            parameter is an index into them.
    """

    name: str
    num_ws: int
    layer_names: tuple[str, ...]

    def maximum(self, bound: GeneratorBound) -> int:
        """The inclusive upper bound ``bound`` puts on a value."""
        return self.num_ws if bound == "num_ws" else len(self.layer_names) - 1

    def explain(self, bound: GeneratorBound) -> str:
        """Where the bound comes from, for messages."""
        if bound == "num_ws":
            return f"generator {self.name} has {self.num_ws} W+ rows"
        return (f"generator {self.name} has {len(self.layer_names)} synthesis layers, "
                f"{self.layer_names[0]}..{self.layer_names[-1]}")


def _number(x: float) -> str:
    """A bound as people read it: integers exactly (``9223372036854775807``, not ``9.2e18``)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Param:
    """One parameter of an op.

    ``type``: ``int`` (integral JSON numbers; ``3.0`` is accepted as 3, booleans are not),
    ``float`` (finite numbers), ``str`` (one of ``choices``) or ``id`` (the id of another row of
    the same manifest, which must itself be valid). ``minimum``/``maximum`` are inclusive; give
    integer bounds of ``int`` parameters as ints (a float cannot hold ``2**63 - 1``).
    ``maximum_of`` bounds the value by the generator as well (the smaller bound wins):
    ``num_ws`` (a count of W+ rows) or ``last_layer`` (the index of a synthesis layer); it is
    checked when validation is given the generator's :class:`GeneratorLimits`.
    ``job_default`` names the job setting that supplies the value when a row gives none (the
    ``default`` is then that setting's own default, shown in the JSON Schema).
    """

    type: Literal["int", "float", "str", "id"]
    default: Any = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    doc: str = ""
    job_default: str | None = None
    maximum_of: GeneratorBound | None = None

    def bounds(self, limits: GeneratorLimits | None = None) -> tuple[float | None, float | None]:
        """The inclusive ``(minimum, maximum)`` of the value, the generator's bound included
        when ``limits`` are given."""
        hi = self.maximum
        if self.maximum_of is not None and limits is not None:
            g = limits.maximum(self.maximum_of)
            hi = g if hi is None else min(hi, g)
        return self.minimum, hi

    def range_text(self, limits: GeneratorLimits | None = None) -> str:
        """The allowed range as messages show it: ``[0, 8]``, ``>= 0``, ``<= 4``."""
        lo, hi = self.bounds(limits)
        if lo is not None and hi is not None:
            text = f"[{_number(lo)}, {_number(hi)}]"
        elif lo is not None:
            text = f">= {_number(lo)}"
        elif hi is not None:
            text = f"<= {_number(hi)}"
        else:
            return "any number"
        if self.maximum_of is not None and limits is not None and hi == limits.maximum(self.maximum_of):
            text += f" ({limits.explain(self.maximum_of)})"
        return text

    def check(self, name: str, value: Any, limits: GeneratorLimits | None = None) -> Any:
        """The validated value of parameter ``name``, or ValueError with a message that names
        ``name`` and the allowed range. ``limits`` add the generator's bound (:attr:`maximum_of`)."""
        if self.type == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer{self._within(limits)}, got {value!r}")
        elif self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number{self._within(limits)}, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number{self._within(limits)}, got {value!r}")
            value = float(value)
        elif self.type in ("str", "id"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"{name} must be one of {list(self.choices)}, got {value!r}")
            return value
        lo, hi = self.bounds(limits)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{name} must be in {self.range_text(limits)}, got {value!r}")
        return value

    def _within(self, limits: GeneratorLimits | None) -> str:
        lo, hi = self.bounds(limits)
        return "" if lo is None and hi is None else f" in {self.range_text(limits)}"


Use = Literal["required", "unused"]


class OpSchema(Protocol):
    """What validation needs to know of an op: which of ``mask``/``ref`` a row must give (or
    must not), and its parameters. :class:`i2score.runs.ops.Op` is the one implementation."""

    @property
    def name(self) -> str: ...

    @property
    def doc(self) -> str: ...

    @property
    def mask(self) -> Use: ...

    @property
    def ref(self) -> Use: ...

    @property
    def params(self) -> Mapping[str, Param]: ...


@dataclass(frozen=True)
class ManifestKind:
    """A kind of manifest: the columns it must have, the op of a row that names none (None: the
    op column is required) and the ops it may use."""

    name: str
    columns: tuple[str, ...]
    default_op: str | None
    ops: tuple[str, ...]


@dataclass(frozen=True)
class OpCatalog:
    """Everything a manifest may say: the ops by name, the manifest kinds by name, and the
    limits of the generator the rows will run on (None: parameters bounded by the generator
    are checked against their fixed bounds only; a run always validates with its generator's)."""

    ops: Mapping[str, OpSchema]
    kinds: Mapping[str, ManifestKind]
    limits: GeneratorLimits | None = None

    def for_generator(self, limits: GeneratorLimits) -> OpCatalog:
        """This catalog checking parameters against ``limits`` too."""
        return replace(self, limits=limits)

    def kind(self, name: str) -> ManifestKind:
        """The kind ``name``; ValueError for an unknown one."""
        if name not in self.kinds:
            raise ValueError(f"kind must be one of {list(self.kinds)}, got {name!r}")
        return self.kinds[name]

    def id_params(self, op: str) -> list[str]:
        """Parameters of ``op`` that name another row of the manifest (type ``id``)."""
        return [k for k, p in self.ops[op].params.items() if p.type == "id"]


#: Accepted URL schemes ("" = a plain local path).
SUPPORTED_SCHEMES: tuple[str, ...] = ("", "file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss",
                                      "http", "https", "memory")

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
        op: the name of an op of the catalog it was validated against.
        mask: URL of the mask (white = the region the user names) or None.
        ref: URL of the second image or None.
        params: the validated params as given (see :meth:`i2score.runs.ops.Op.resolve_params` for defaults).
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


#: Columns of a rejection list written by :func:`write_rejections`, in order.
REJECTION_COLUMNS = ("row", "id", "reason", "field", "message", "url")


def write_rejections(rejections: Iterable[Rejection], url: str) -> int:
    """Write every rejection to ``url`` in one PUT, in the format its extension names: ``.csv``,
    ``.parquet`` or ``.jsonl``, with the columns :data:`REJECTION_COLUMNS` (URLs and messages
    redacted). Returns the number written; ValueError for another extension."""
    table = rejections_to_arrow(rejections)
    records = [{"row": r["row"], "id": r["id"], "reason": r["reason_code"], "field": r["field"],
                "message": r["message"], "url": r["url"]} for r in table.to_pylist()]
    ext = url.rsplit(".", 1)[-1].lower() if "." in storage.basename(url) else ""
    if ext == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=REJECTION_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        data = text.getvalue().encode()
    elif ext == "jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    elif ext == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records, schema=pa.schema([
            pa.field("row", pa.int64(), nullable=False), pa.field("id", pa.string()),
            pa.field("reason", pa.string(), nullable=False), pa.field("field", pa.string()),
            pa.field("message", pa.string(), nullable=False), pa.field("url", pa.string())])), buf)
        data = buf.getvalue()
    else:
        raise ValueError(f"cannot write rejections to {storage.redact(url)!r}: use a .csv, .parquet or .jsonl name")
    storage.write_bytes(url, data)
    return len(records)


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
