"""A run's files and the records a run writes: where they live, how they are (de)serialised.

One run of a job lives under ``<root>/runs/<run-id>/``::

    plan.json                  the plan: digest, job, generator, schedule, phases, counts
    lease/<generation>.json    the run lease, one object per attempt (:mod:`i2score.runs.lease`)
    plan/<batch-id>.json       the batch specs (written by :func:`i2score.runs.plan.plan_run`)
    batches/<batch-id>.json    one record per finished batch: outputs, errors, steps run
    batches/validation-<attempt>.json  the rows an attempt's validation rejected
    outputs/<id>.png           images (written before the record that points at them)
    manifest.parquet           output manifest with lineage (one row per output)
    errors.parquet             every rejected row with its reason (validation and execution)
    summary.json               counts, metric distributions, steps, cache hits
    report.md, report.html     what a person reads; sheet.png, a contact sheet of outputs
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from i2score.data import storage
from i2score.data.manifest import ManifestRow

#: Reason code of a row whose batch computation raised (the message carries the exception).
FAILED = "processing_failed"
#: Reason code of an edit/augment row whose source image could not be embedded.
SOURCE_FAILED = "source_failed"
#: Reason code of an output that was computed but is not an image: NaN/infinite values or one
#: flat colour (see :func:`i2score.runs.outputs.check_output_image`); it is not written.
DEGENERATE_OUTPUT = "degenerate_output"

#: The reason codes a run adds to the validation ones
#: (:data:`i2score.data.manifest.REASON_DESCRIPTIONS`), one line on each.
RUN_REASON_DESCRIPTIONS: dict[str, str] = {
    FAILED: "the batch's computation raised (the message carries the exception); the batch's other "
            "work is kept",
    SOURCE_FAILED: "an edit or augmentation whose source image (or a row its params name) has no "
                   "embedding, because that embedding failed",
    DEGENERATE_OUTPUT: "the output is not finite (NaN or infinite values) or is one flat colour (per-image "
                       "std below one 8-bit level): it is not written and never counted as a success",
}


class GeneratorRecord(TypedDict):
    """The generator a run was planned with, as ``plan.json`` and every batch spec hold it."""

    id: str
    sha256: str
    resolution: int
    num_ws: int


@dataclass(frozen=True)
class RunPaths:
    """URLs of one run's files."""

    root: str
    run_id: str

    @property
    def run_url(self) -> str:
        return storage.join(self.root, "runs", self.run_id)

    def url(self, *parts: str) -> str:
        return storage.join(self.run_url, *parts)

    def spec_url(self, batch_id: str) -> str:
        return self.url("plan", f"{batch_id}.json")

    def record_url(self, batch_id: str) -> str:
        return self.url("batches", f"{batch_id}.json")


def write_json(url: str, obj: Any) -> None:
    """Write ``obj`` as JSON in one PUT (sorted keys, so equal objects give equal bytes), every
    string redacted (:func:`i2score.data.storage.write_json`): plans, batch specs and records
    never hold a credential, whatever URLs or messages they carry."""
    storage.write_json(url, obj)


def read_json(url: str) -> Any:
    """A JSON object written by :func:`write_json`."""
    return json.loads(storage.read_bytes(url))


def digest(parts: Iterable[Any]) -> str:
    """SHA-256 hex of ``parts`` (bytes as they are, anything else as sorted-key JSON), each
    length-prefixed so that no two sequences of parts collide."""
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode()
        h.update(len(b).to_bytes(8, "big") + b)
    return h.hexdigest()


def row_to_json(r: ManifestRow) -> dict[str, Any]:
    """A manifest row as it travels in batch specs."""
    return {"id": r.id, "image": r.image, "op": r.op, "mask": r.mask, "ref": r.ref,
            "params": r.params, "row": r.row}


def row_from_json(d: Mapping[str, Any]) -> ManifestRow:
    """The inverse of :func:`row_to_json`."""
    return ManifestRow(id=d["id"], image=d["image"], op=d["op"], mask=d.get("mask"), ref=d.get("ref"),
                       params=dict(d.get("params") or {}), row=int(d.get("row", 0)))


def error_record(row: Mapping[str, Any] | ManifestRow, code: str, message: str, fld: str | None = None,
                 url: str | None = None) -> dict[str, Any]:
    """A row's error as batch records hold it (:func:`write_json` redacts it when it is written)."""
    if isinstance(row, ManifestRow):
        return {"row": row.row, "id": row.id, "reason_code": code, "message": message, "field": fld, "url": url}
    return {"row": int(row.get("row", 0)), "id": row.get("id"), "reason_code": code, "message": message,
            "field": fld, "url": url}


def jsonable_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics as JSON values: non-finite floats become None, tensors and numpy scalars floats."""
    out: dict[str, Any] = {}
    for k, v in m.items():
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            out[k] = v
        elif isinstance(v, float):
            out[k] = v if math.isfinite(v) else None
        else:
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                out[k] = str(v)
    return out


def batch_records(paths: RunPaths) -> list[dict[str, Any]]:
    """Every batch record of the run (any attempt)."""
    urls = list(storage.list_files(paths.url("batches"), ".json"))
    got = storage.read_many(urls)
    out = []
    for u in urls:
        data = got[u]
        if isinstance(data, BaseException):
            raise data
        out.append(json.loads(data))
    return out


def finished_rows(paths: RunPaths) -> set[str]:
    """Ids of input rows with an output record in this run (from any attempt)."""
    done: set[str] = set()
    for rec in batch_records(paths):
        for o in rec.get("outputs", []):
            done.add(o.get("row_id") or o["id"])
    return done
