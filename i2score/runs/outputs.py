"""Run outputs: images under ``runs/<run-id>/outputs/``, the output manifest with lineage and
the errors table.

Layout (``docs/ARCHITECTURE.md``, "Storage layout")::

    <root>/runs/<run-id>/outputs/<id><suffix>.png    edited / reconstructed images
    <root>/runs/<run-id>/manifest.parquet            one row per output (OUTPUT_SCHEMA)
    <root>/runs/<run-id>/errors.parquet              one row per rejected input (ERRORS_SCHEMA)

An image is checked before it is written (:func:`check_output_image`): one that is not finite
or is one flat colour raises :class:`DegenerateOutputError` instead of becoming a success.

Every object is written in one PUT (Parquet is built in memory first), so a reader never sees a
partial file. Write the images before the manifest that points at them. URLs and messages pass
through :func:`i2score.data.storage.redact` before they are written, so credentials embedded in a URL
(``https://user:pass@...``, signed query strings) never reach a Parquet file.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from i2score import __version__
from i2score.data import storage
from i2score.data.images import tensor_to_png_bytes
from i2score.data.manifest import ERRORS_SCHEMA, Rejection, check_id, rejections_to_arrow

__all__ = [
    "ERRORS_SCHEMA",
    "METRICS",
    "MIN_OUTPUT_STD",
    "DegenerateOutputError",
    "OUTPUT_SCHEMA",
    "OutputRecord",
    "RunOutputs",
    "check_output_image",
    "code_version",
    "new_run_id",
    "read_table",
]

#: Metrics with their own nullable column in the output manifest.
METRICS = ("psnr", "lpips", "ssim")

#: Schema of ``runs/<run-id>/manifest.parquet``.
OUTPUT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),           # output row id (safe id)
    pa.field("source_ids", pa.list_(pa.string())),         # input manifest ids used
    pa.field("source_urls", pa.list_(pa.string())),        # their files (redacted URLs)
    pa.field("cache_keys", pa.list_(pa.string())),         # latent cache keys used / written
    pa.field("op", pa.string(), nullable=False),
    pa.field("params", pa.string()),                       # JSON object, sorted keys
    pa.field("generator_id", pa.string()),
    pa.field("generator_sha256", pa.string()),
    pa.field("code_version", pa.string(), nullable=False),  # i2score version + git describe
    pa.field("output_url", pa.string()),
    pa.field("psnr", pa.float64()),                         # dB, vs the source image
    pa.field("lpips", pa.float64()),
    pa.field("ssim", pa.float64()),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    # --align runs: the input's FFHQ transform (quad, size, source_size, faces found, box; JSON),
    # with --paste-back the aligned output's URL too; null otherwise.
    pa.field("alignment", pa.string()),
])

_SUFFIX_RE = re.compile(r"[A-Za-z0-9._-]{0,64}")

#: Smallest standard deviation (over all pixels and channels, in [-1, 1] units, after the
#: clipping to [-1, 1] the PNG applies) of an image that is written. One 8-bit level is
#: 2/255 = 0.0078: below it the PNG is a single flat colour give or take one level. No render of
#: a face or a photo is that flat; the black image of a NaN render or of a code pushed far out
#: of range (every pixel clipped) is.
MIN_OUTPUT_STD = 2 / 255


class DegenerateOutputError(ValueError):
    """An output image that would be a lie if written: not finite, or one flat colour."""


def check_output_image(t: Tensor) -> None:
    """Raise :class:`DegenerateOutputError` unless ``t`` (``[3, H, W]`` or ``[1, 3, H, W]``,
    nominally in [-1, 1]) is finite everywhere and, clipped to [-1, 1] as written, has a
    standard deviation of at least :data:`MIN_OUTPUT_STD`."""
    x = t.detach().float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DegenerateOutputError(f"the output has {bad} of {x.numel()} values that are not finite "
                                    "(NaN or infinite): it would be written as a black image")
    std = float(x.clamp(-1, 1).std())
    if std < MIN_OUTPUT_STD:
        raise DegenerateOutputError(f"the output is one flat colour (std {std:.2g} in [-1, 1] units, below "
                                    f"{MIN_OUTPUT_STD:.4f}, one 8-bit level; mean {float(x.clamp(-1, 1).mean()):.3f})")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``i2score.__version__``, plus ``+git.<describe>`` when the package runs from a git
    checkout (``0.1.0+git.637b7c4-dirty``); installed wheels report the version alone."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=here,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return __version__
    describe = out.stdout.strip()
    if out.returncode != 0 or not re.fullmatch(r"[A-Za-z0-9._+-]{1,80}", describe):
        return __version__
    return f"{__version__}+git.{describe}"


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A sortable, unique, safe run id: ``20250101T120000Z-1a2b3c4d``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


@dataclass
class OutputRecord:
    """One row of the output manifest (see :data:`OUTPUT_SCHEMA`)."""

    id: str
    op: str
    output_url: str | None = None
    source_ids: list[str] = field(default_factory=list)
    source_urls: list[str] = field(default_factory=list)
    cache_keys: list[str] = field(default_factory=list)
    params: Mapping[str, Any] | str | None = None
    generator_id: str | None = None
    generator_sha256: str | None = None
    psnr: float | None = None
    lpips: float | None = None
    ssim: float | None = None
    code_version: str | None = None  # None = :func:`code_version`
    created_at: _dt.datetime | None = None  # None = now (UTC)
    alignment: Mapping[str, Any] | str | None = None


_RECORD_FIELDS = {f.name for f in fields(OutputRecord)}


def _as_record(r: OutputRecord | Mapping[str, Any]) -> OutputRecord:
    if isinstance(r, OutputRecord):
        return r
    data = dict(r)
    metrics = data.pop("metrics", None) or {}
    unknown_metrics = set(metrics) - set(METRICS)
    if unknown_metrics:
        raise ValueError(f"unknown metrics {sorted(unknown_metrics)} (columns: {list(METRICS)})")
    data.update(metrics)
    unknown = set(data) - _RECORD_FIELDS
    if unknown:
        raise ValueError(f"unknown output record fields {sorted(unknown)}")
    return OutputRecord(**data)


def _params_json(params: Mapping[str, Any] | str | None) -> str | None:
    if params is None:
        return None
    if isinstance(params, str):
        json.loads(params)  # must be JSON already; fail here, not in a reader later
        return params
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def _alignment_json(alignment: Mapping[str, Any] | str | None) -> str | None:
    if alignment is None or isinstance(alignment, str):
        return alignment
    d = dict(alignment)
    if d.get("aligned_url"):
        d["aligned_url"] = storage.redact(d["aligned_url"])
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _redact_opt(url: str | None) -> str | None:
    return storage.redact(url) if url is not None else None


def _table_to_bytes(table: pa.Table) -> bytes:
    return storage.parquet_bytes(table)


def read_table(url: str) -> pa.Table:
    """Read a Parquet file written here (one GET)."""
    return pq.read_table(pa.BufferReader(storage.read_bytes(url)))


class RunOutputs:
    """Writer for one run's outputs below ``<root_url>/runs/<run_id>/``.

    ``run_id`` and every row id must be safe ids (:func:`i2score.data.manifest.check_id`), so no
    output can land outside the run folder.
    """

    def __init__(self, root_url: str, run_id: str) -> None:
        bad = check_id(run_id)
        if bad is not None:
            raise ValueError(f"run_id: {bad[1]}")
        self.root_url = root_url
        self.run_id = run_id
        self.run_url = storage.join(root_url, "runs", run_id)
        self.outputs_url = storage.join(self.run_url, "outputs")
        self.manifest_url = storage.join(self.run_url, "manifest.parquet")
        self.errors_url = storage.join(self.run_url, "errors.parquet")

    def __repr__(self) -> str:
        return f"RunOutputs({storage.redact(self.run_url)!r})"

    def image_url(self, row_id: str, suffix: str = "") -> str:
        """``<run>/outputs/<row_id><suffix>.png``; ``suffix`` (``[A-Za-z0-9._-]{0,64}``) tells
        several outputs of one row apart (``"_k0"``)."""
        bad = check_id(row_id)
        if bad is not None:
            raise ValueError(f"row id: {bad[1]}")
        if not _SUFFIX_RE.fullmatch(suffix):
            raise ValueError(f"suffix {suffix!r} must match [A-Za-z0-9._-]{{0,64}}")
        return storage.join(self.outputs_url, f"{row_id}{suffix}.png")

    def write_image(self, row_id: str, tensor: Tensor, suffix: str = "") -> str:
        """Write ``tensor`` (``[3, R, R]`` float in [-1, 1]) as a PNG; returns its URL.

        Raises :class:`DegenerateOutputError` (and writes nothing) when the image is not finite
        or is one flat colour (:func:`check_output_image`).
        """
        url = self.image_url(row_id, suffix)
        check_output_image(tensor)
        storage.write_bytes(url, tensor_to_png_bytes(tensor))
        return url

    def manifest_table(self, records: Iterable[OutputRecord | Mapping[str, Any]]) -> pa.Table:
        """The output manifest as an :data:`OUTPUT_SCHEMA` table (URLs redacted)."""
        recs = [_as_record(r) for r in records]
        now = _dt.datetime.now(_dt.timezone.utc)
        version = code_version()
        for r in recs:
            bad = check_id(r.id)
            if bad is not None:
                raise ValueError(f"output record id: {bad[1]}")

        def col(name: str) -> list[Any]:
            return [getattr(r, name) for r in recs]

        def float_or_none(v: Any) -> float | None:
            return None if v is None else float(v)

        data = {
            "id": col("id"),
            "source_ids": [list(r.source_ids) for r in recs],
            "source_urls": [[storage.redact(u) for u in r.source_urls] for r in recs],
            "cache_keys": [list(r.cache_keys) for r in recs],
            "op": col("op"),
            "params": [_params_json(r.params) for r in recs],
            "generator_id": [_redact_opt(r.generator_id) for r in recs],
            "generator_sha256": col("generator_sha256"),
            "code_version": [r.code_version or version for r in recs],
            "output_url": [_redact_opt(r.output_url) for r in recs],
            **{m: [float_or_none(getattr(r, m)) for r in recs] for m in METRICS},
            "created_at": [_utc(r.created_at) if r.created_at else now for r in recs],
            "alignment": [_alignment_json(r.alignment) for r in recs],
        }
        return pa.Table.from_pydict(data, schema=OUTPUT_SCHEMA)

    def write_manifest(self, records: Iterable[OutputRecord | Mapping[str, Any]]) -> str:
        """Write ``runs/<run-id>/manifest.parquet`` in one PUT; returns its URL.

        ``records`` are :class:`OutputRecord` or mappings with the same keys (metrics may also
        come as ``metrics={"psnr": ...}``). Write it after the images it points at.
        """
        storage.write_bytes(self.manifest_url, _table_to_bytes(self.manifest_table(records)))
        return self.manifest_url

    def write_errors(self, rejections: Sequence[Rejection], source: str | None = None) -> str:
        """Write ``runs/<run-id>/errors.parquet`` (:data:`ERRORS_SCHEMA`) in one PUT; ``source``
        is the input manifest URL. Returns its URL."""
        table = rejections_to_arrow(rejections, source)
        storage.write_bytes(self.errors_url, _table_to_bytes(table))
        return self.errors_url


def _utc(t: _dt.datetime) -> _dt.datetime:
    """Naive datetimes are taken as UTC."""
    return t.replace(tzinfo=_dt.timezone.utc) if t.tzinfo is None else t.astimezone(_dt.timezone.utc)
