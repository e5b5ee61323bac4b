"""Validating a manifest against the op catalog: every row is checked up front and a bad row
becomes a :class:`~i2score.data.manifest.schema.Rejection`, never an exception.

Two stages share one error path:

* :func:`validate_manifest` runs the **schema checks** on every row (no file reads): ids, ops,
  URL schemes, params. With ``check_files=True`` it also reads and decodes every file through
  the functions :func:`~i2score.data.manifest.load.load_row` uses.
* :func:`~i2score.data.manifest.load.load_row` reads and decodes one row's files and fits them
  to the generator. It raises :class:`~i2score.data.manifest.schema.RowError` with the same
  reason codes, so a row that goes bad between validation and loading is rejected the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Literal

from i2score.data import storage
from i2score.data.images import DEFAULT_MAX_PIXELS, FitPolicy
from i2score.data.inputs import InputPolicy, InputRejected
from i2score.data.manifest.load import UNCONFINED, decode_row, fit_row
from i2score.data.manifest.read import Malformed, Manifest, Record, path_resolver, url_scheme
from i2score.data.manifest.schema import (
    KNOWN_COLUMNS,
    SUPPORTED_SCHEMES,
    GeneratorLimits,
    ManifestRow,
    OpCatalog,
    OpSchema,
    Reason,
    Rejection,
    RowError,
    ValidationResult,
    check_id,
)

# ----------------------------------------------------------------------------------------------
# Schema checks
# ----------------------------------------------------------------------------------------------


def _parse_params_cached(raw: Any, op: OpSchema, limits: GeneratorLimits | None,
                         cache: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """:func:`_parse_params` memoised on ``(op, text)`` (one cache per manifest and catalog):
    large manifests repeat a few params strings, and JSON parsing dominates the per-row cost
    otherwise."""
    if not isinstance(raw, str):
        return _parse_params(raw, op, limits)
    key = (op.name, raw)
    hit = cache.get(key)
    if hit is None:
        try:
            hit = _parse_params(raw, op, limits)
        except ValueError as e:
            hit = e
        if len(cache) < 4096:
            cache[key] = hit
    if isinstance(hit, ValueError):
        raise hit
    return dict(hit)


def _parse_params(raw: Any, op: OpSchema, limits: GeneratorLimits | None) -> dict[str, Any]:
    """Validated params dict (types and ranges, the generator's ``limits`` included when
    given); raises ValueError (-> ``invalid_params``) naming the field and its allowed range."""
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
        out[key] = spec.check(f"params.{key}", value, limits)
    missing = [k for k, p in op.params.items() if p.required and k not in out]
    if missing:
        raise ValueError(f"op {op.name} requires params {missing}")
    if limits is not None:
        # A default that a small generator cannot take (style_mix's k = 8 with 6 W+ rows) must
        # be given explicitly, not fail the batch or be clipped behind the user's back.
        for key, spec in op.params.items():
            if key not in out and spec.maximum_of is not None and spec.default is not None:
                try:
                    spec.check(f"params.{key}", spec.default, limits)
                except ValueError as e:
                    raise ValueError(f"params.{key} is not given and its default does not fit: {e}") from None
    return out


class _Checker:
    """Per-row schema checks for one manifest; one reason per row, the first failing check in
    this order: parse, id, duplicate, op, image, mask, ref, params."""

    def __init__(self, manifest: Manifest, catalog: OpCatalog, kind: str,
                 inputs: InputPolicy | None = None) -> None:
        self.catalog = catalog
        self.inputs = inputs
        self.kind = catalog.kind(kind)
        self.has_op = "op" in manifest.columns
        self.resolve = path_resolver(manifest.url)
        self.extra_cols = [c for c in manifest.columns if c and c not in KNOWN_COLUMNS]
        self.counts: Counter[str] = Counter()
        self.params_cache: dict[tuple[str, str], Any] = {}

    def id_of(self, rec: Record) -> str | None:
        if isinstance(rec, Malformed):
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
        if url_scheme(value) is None:
            shown = storage.redact(value)
            scheme = "chained URL" if "::" in value else repr(value.split(":", 1)[0])
            return Rejection(row, rid, Reason.UNSUPPORTED_SCHEME.value,
                             f"{name} {shown!r}: unsupported URL scheme {scheme} (use a path or "
                             f"{', '.join(sorted(s for s in SUPPORTED_SCHEMES if s))})",
                             name, shown)
        resolved = self.resolve(value)
        if self.inputs is not None:
            try:
                self.inputs.check(resolved)
            except InputRejected as e:
                return Rejection(row, rid, e.reason, f"{name} {e}", name, e.url)
        return resolved

    def check(self, rec: Record, row: int, rid: str | None) -> ManifestRow | Rejection:
        """``rid`` is ``self.id_of(rec)``, computed once by the caller."""
        if isinstance(rec, Malformed):
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
            op_name = self.kind.default_op
            if op_name is None:
                return Rejection(row, rid, Reason.UNKNOWN_OP.value,
                                 f"op is empty (one of {', '.join(self.kind.ops)})", "op")
        if not isinstance(op_name, str) or op_name not in self.kind.ops:
            return Rejection(row, rid, Reason.UNKNOWN_OP.value,
                             f"unknown op {op_name!r} (expected {', '.join(self.kind.ops)})", "op")
        op = self.catalog.ops[op_name]

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
            params = _parse_params_cached(rec.get("params"), op, self.catalog.limits, self.params_cache)
        except ValueError as e:
            return Rejection(row, rid, Reason.INVALID_PARAMS.value, str(e), "params")
        extra = {c: rec.get(c) for c in self.extra_cols if rec.get(c) not in (None, "")}
        return ManifestRow(id=rid, image=image, op=op.name, mask=found["mask"], ref=found["ref"],
                           params=params, row=row, extra=extra)


def _check_references(rows: list[ManifestRow], rejected: list[Rejection], catalog: OpCatalog) -> list[ManifestRow]:
    """Reject rows whose ``id`` params name a row that is not valid, until none does (a row
    rejected here can invalidate another that names it)."""
    id_params = {name: catalog.id_params(name) for name in catalog.ops}
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


def validate_manifest(source: str | Manifest, catalog: OpCatalog, *, kind: str = "reconstruct",
                      check_files: bool = False, resolution: int | None = None, policy: FitPolicy = "center-crop",
                      threshold: float = 0.5, mask_resize: Literal["nearest", "error"] = "nearest",
                      max_pixels: int = DEFAULT_MAX_PIXELS, chunk_size: int = 64,
                      max_workers: int = 16, inputs: InputPolicy | None = None) -> ValidationResult:
    """Validate a manifest against ``catalog``; bad rows are returned, never raised.

    Args:
        source: manifest location (local path or URL; format from the extension) or a
            :class:`~i2score.data.manifest.read.Manifest` already parsed.
        catalog: the ops and manifest kinds (:data:`i2score.runs.ops.CATALOG`); parameters
            bounded by the generator (layers, W+ rows) are checked against its limits when the
            catalog has them (``CATALOG.for_generator(limits)``, see
            :func:`i2score.runs.ops.generator_limits`).
        kind: a kind of ``catalog``: ``reconstruct`` (columns id, image), ``inpaint`` (id, image,
            mask) or ``edit`` (id, image, op; ref/mask/params per op).
        check_files: also read and decode every file (the path ``load_row`` takes), reading up to
            ``max_workers`` files at a time, ``chunk_size`` rows per batch.
        resolution, policy: when given with ``check_files``, also fit to the generator.
        threshold, mask_resize, max_pixels: image/mask policies (see :mod:`i2score.data.images`).
        inputs: what rows may name and how files are read
            (:class:`~i2score.data.inputs.InputPolicy`): a row naming a file outside its allowed
            prefixes is ``outside_allowed_inputs`` without any read. None confines nothing (files
            checked with ``check_files`` are still read as regular files up to the default size).

    Returns:
        :class:`~i2score.data.manifest.schema.ValidationResult` with the valid rows and the
        rejections, in manifest order.

    Raises:
        FileNotFoundError: no manifest at ``source``.
        ManifestError: the manifest as a whole cannot be parsed.
        ValueError: ``kind`` is not a kind of ``catalog``.
    """
    manifest = source if isinstance(source, Manifest) else Manifest.read(source)
    manifest_kind = catalog.kind(kind)
    rejected: list[Rejection] = []
    missing = [c for c in manifest_kind.columns if c not in manifest.columns]
    if missing:
        checker = _Checker(manifest, catalog, kind)
        for i, rec in enumerate(manifest.records, 1):
            rid = checker.id_of(rec)
            rejected.append(Rejection(i, rid or None, Reason.MISSING_COLUMN.value,
                                      f"the {kind} manifest has no {', '.join(missing)} column "
                                      f"(columns: {', '.join(manifest.columns) or 'none'})",
                                      missing[0]))
        return ValidationResult(manifest.url, kind, [], rejected)

    checker = _Checker(manifest, catalog, kind, inputs)
    ids = [checker.id_of(rec) for rec in manifest.records]
    checker.counts = Counter(i.casefold() for i in ids if i)
    rows: list[ManifestRow] = []
    for i, (rec, rid) in enumerate(zip(manifest.records, ids, strict=True), 1):
        out = checker.check(rec, i, rid)
        (rows if isinstance(out, ManifestRow) else rejected).append(out)  # type: ignore[arg-type]

    if check_files and rows:
        passed: list[ManifestRow] = []
        for start in range(0, len(rows), chunk_size):
            chunk = rows[start:start + chunk_size]
            fetched = (inputs or UNCONFINED).read_many([u for r in chunk for u in r.urls()],
                                                       max_workers=max_workers)
            for r in chunk:
                try:
                    decoded = decode_row(r, fetched, threshold=threshold, mask_resize=mask_resize,
                                         max_pixels=max_pixels)
                    if resolution is not None:
                        fit_row(decoded, resolution, policy)
                except RowError as e:
                    rejected.append(Rejection(r.row, r.id, e.reason_code, e.message, e.field, e.url))
                else:
                    passed.append(r)
            del fetched
        rows = passed

    rows = _check_references(rows, rejected, catalog)
    rejected.sort(key=lambda r: r.row)
    return ValidationResult(manifest.url, kind, rows, rejected)
