"""``i2s align``: FFHQ-align every image of a folder, glob or manifest (no Prefect, no generator).

Writes ``OUT/<id>.png`` (the aligned faces), ``OUT/aligned.csv`` (a reconstruct manifest of them,
``id,image`` plus the lineage columns ``source``, ``faces`` and ``alignment``: the transform as
JSON, :meth:`i2score.data.align.FaceAlignment.to_dict`) and ``OUT/errors.csv`` (every rejected
row: its id, reason code and message; ``no_face`` for an image without a face). A row that
fails never stops the others.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from i2score.data import storage
from i2score.data.align import AlignUnavailableError, NoFaceError, align_face
from i2score.data.inputs import policy_for_manifest
from i2score.data.manifest import Manifest, Rejection, RowError, validate_manifest
from i2score.data.manifest.load import decode_row
from i2score.runs.ops import CATALOG

__all__ = ["AlignResult", "align_images"]

#: Columns of ``aligned.csv`` (a reconstruct manifest; the rest are lineage a run keeps).
ALIGNED_COLUMNS = ("id", "image", "source", "faces", "alignment")


@dataclass
class AlignResult:
    """What :func:`align_images` wrote: the aligned rows, the rejected ones, where, how long."""

    out: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def manifest_url(self) -> str:
        return storage.join(self.out, "aligned.csv")

    @property
    def errors_url(self) -> str:
        return storage.join(self.out, "errors.csv")


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def align_images(src: str, out: str, *, size: int = 1024, allowed: Sequence[str] | None = None,
                 upsample: int = 1) -> AlignResult:
    """FFHQ-align the images of ``src`` into the folder ``out``.

    Args:
        src: a manifest (CSV/TSV/Parquet/JSONL with ``id``, ``image``), a folder or a glob of
            images (README "Your own images"), local or any fsspec URL.
        out: the output folder (local or fsspec URL); existing files of the same name are
            overwritten.
        size: the aligned side in pixels (FFHQ: 1024; a generator's resolution for a run).
        allowed: URL prefixes the rows' files may come from (default: ``src``'s folder).
        upsample: the detector's upsampling steps (1 finds faces down to about 40 px).

    Returns:
        :class:`AlignResult`; ``rows`` hold the ``aligned.csv`` values, ``rejected`` the
        per-row errors (``no_face`` and the manifest's own reason codes).

    Raises:
        AlignUnavailableError: dlib or the landmark weights are not installed.
    """
    started = time.perf_counter()
    policy = policy_for_manifest(src, allowed)
    checked = validate_manifest(Manifest.read(src, mask_column=False), CATALOG, kind="reconstruct", inputs=policy)
    result = AlignResult(out=out, rejected=list(checked.rejected))
    for row in checked.rows:
        try:
            decoded = decode_row(row, inputs=policy)
            aligned, al = align_face(decoded.image, size, upsample=upsample)
        except RowError as e:
            result.rejected.append(Rejection(row.row, row.id, e.reason_code, e.message, e.field, e.url))
            continue
        except NoFaceError as e:
            result.rejected.append(Rejection(row.row, row.id, NoFaceError.reason, f"{row.id}: {e}", "image",
                                             storage.redact(row.image)))
            continue
        except AlignUnavailableError:
            raise
        buf = io.BytesIO()
        aligned.save(buf, "PNG")
        storage.write_bytes(storage.join(out, f"{row.id}.png"), buf.getvalue())
        result.rows.append({"id": row.id, "image": f"{row.id}.png", "source": storage.redact(row.image),
                            "faces": al.faces, "alignment": json.dumps(al.to_dict(), separators=(",", ":"))})
    result.rejected.sort(key=lambda r: r.row)
    storage.write_text(result.manifest_url,
                       _csv(ALIGNED_COLUMNS, [[r[c] for c in ALIGNED_COLUMNS] for r in result.rows]))
    storage.write_text(result.errors_url, _csv(("id", "row", "reason_code", "message"),
                                               [[r.id, r.row, r.reason_code, r.message] for r in result.rejected]))
    result.seconds = time.perf_counter() - started
    return result
