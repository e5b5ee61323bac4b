"""The realism gate of an augmentation run: a realism score per image of ``dataset.csv``, and
the augmented rows below ``min_realism`` left out of it (reported, never silently lost).

The score is :mod:`i2score.features.realism` (Kynkäänniemi et al. 2019) against a reference set
made of the run's original images (every row of its manifest that validates and loads), plus
the images of ``realism_reference`` when the job names one (e.g. held-out demo portraits,
``i2s augment --realism-heldout N``). An original is scored against the other references
(leave-one-out: against itself it would be an exact copy). Only augmented rows are gated: the
originals are the user's own data and keep their place in ``dataset.csv`` whatever their score.

A dropped augmentation's image stays in ``outputs/`` (a valid PNG, listed in ``manifest.parquet``
with its lineage); it is only left out of ``dataset.csv``, and ``summary.json`` (``realism``)
and the report list it with its score and the reason code :data:`BELOW_MIN_REALISM`. The run's
``failed`` count does not include it: the image was made; the gate chose not to hand it on.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from i2score.data.images import decode_image, fit_to_resolution, to_tensor
from i2score.data.inputs import InputPolicy
from i2score.data.manifest import LoadedRow, ManifestRow, RowError, load_row
from i2score.features import load_vgg16
from i2score.features.realism import (
    REALISM_FEATURE,
    build_reference,
    realism_features,
    realism_scores,
)
from i2score.runs.config import DEFAULT_MIN_REALISM
from i2score.runs.prefetch import read_all

__all__ = ["BELOW_MIN_REALISM", "DEFAULT_MIN_REALISM", "RealismGate", "gate_rows", "score_augment_run"]

BELOW_MIN_REALISM = "below_min_realism"
"""Reason code of an augmented row the gate left out of ``dataset.csv``."""



@dataclass
class RealismGate:
    """The scores of a run's images and what the gate did with them.

    Attributes:
        scores: ``id -> realism`` for every original and augmented image that could be read.
        dropped: one dict per augmented row left out (``id``, ``augmentation``, ``realism``,
            ``reason_code``, ``message``), in output order.
        info: the ``realism`` block of ``summary.json`` (settings, counts, medians per op).
    """

    scores: dict[str, float]
    dropped: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def gate_rows(scores: Mapping[str, float], rows: Sequence[tuple[str, str]],
              min_realism: float) -> list[dict[str, Any]]:
    """The augmented rows below ``min_realism``, as drop records.

    Args:
        scores: ``id -> realism``.
        rows: ``(id, augmentation op)`` of the augmented rows, in dataset order.
        min_realism: the threshold; a row is dropped when its score is strictly below it.

    Raises:
        ValueError: a row without a score (the gate never passes an unscored row silently).
    """
    missing = [i for i, _ in rows if i not in scores]
    if missing:
        raise ValueError(f"no realism score for augmented rows {missing[:10]} ({len(missing)} rows)")
    return [{"id": i, "augmentation": op, "realism": round(scores[i], 6), "reason_code": BELOW_MIN_REALISM,
             "message": f"realism {scores[i]:.4f} < min_realism {min_realism:g}"}
            for i, op in rows if scores[i] < min_realism]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def score_augment_run(originals: Sequence[ManifestRow], outputs: Sequence[Mapping[str, Any]], *,
                      resolution: int, policy: InputPolicy, output_policy: InputPolicy, min_realism: float,
                      k: int, extra_reference: Sequence[ManifestRow] = (), device: str = "cpu") -> RealismGate:
    """Score the originals and the augmented outputs of a run, and gate the outputs.

    Args:
        originals: the run manifest's validated rows (the reference set, leave-one-out).
        outputs: the run's output records (``id``, ``op`` = ``augment/<name>``, ``output_url``).
        resolution: the generator's resolution (originals are fitted to it as the run did).
        policy: what the originals and ``extra_reference`` may be read under.
        output_policy: what the output images may be read under (the run folder).
        min_realism: augmented rows scoring below it are dropped (0 keeps all).
        k: the neighbour rank of the score.
        extra_reference: more real images for the reference set (not scored, not in the dataset).
        device: where VGG16 runs.

    Raises:
        ValueError: fewer than ``k + 1`` readable reference images while ``min_realism > 0``
            (the message says how to get more or lower ``k``), or an output that cannot be read
            back. With ``min_realism == 0`` and too few references nothing is scored: the result
            has no scores and ``info["not_scored"]`` says why (summary, report and CLI show it).
    """
    refs = list(originals) + list(extra_reference)
    n_given = len(originals)
    fetched = read_all([r.image for r in refs], policy)
    loaded: list[tuple[int, LoadedRow]] = []
    for n, r in enumerate(refs):
        try:
            loaded.append((n, load_row(r, resolution=resolution, fetched=fetched, inputs=policy)))
        except RowError:
            continue  # the run reported this row already; it is not part of the reference
    # A reference image given twice (an original also in extra_reference) would score the other
    # copy as an exact match: keep the first of equal pixels.
    seen: set[bytes] = set()
    ref_rows: list[ManifestRow] = []
    ref_images: list[torch.Tensor] = []
    orig_pos: list[int] = []  # positions of the originals in the reference set
    for n, lr in loaded:
        digest = hashlib.sha256(lr.image.numpy().tobytes()).digest()
        if digest not in seen:
            seen.add(digest)
            if n < n_given:
                orig_pos.append(len(ref_rows))
            ref_rows.append(refs[n])
            ref_images.append(lr.image)
    n_orig = len(orig_pos)
    if len(ref_images) < k + 1:
        why = (f"the realism score needs at least k + 1 = {k + 1} reference images; this run has {len(ref_images)} "
               f"({n_orig} readable originals, {len(ref_images) - n_orig} extra)")
        if min_realism > 0:
            raise ValueError(f"{why}, so min_realism {min_realism:g} cannot be applied. Augment more images, add "
                             "a reference (--realism-reference FOLDER, or --realism-heldout N on the demo model), "
                             "lower --realism-k, or pass --min-realism 0")
        # Nothing to gate (min_realism 0): the run keeps its rows without scores, and says so.
        return RealismGate({}, [], {"k": k, "min_realism": min_realism, "reference_images": len(ref_images),
                                    "scored": 0, "dropped": 0, "dropped_rows": [],
                                    "not_scored": f"{why}: no realism scores (the realism column is empty)"})
    vgg = load_vgg16(device=device)
    ref_feats = realism_features(torch.stack(ref_images), vgg)
    reference = build_reference(ref_feats, k)
    scores: dict[str, float] = {}
    if orig_pos:
        s = realism_scores(reference, ref_feats[orig_pos], exclude=orig_pos)
        scores.update({ref_rows[j].id: float(v) for j, v in zip(orig_pos, s, strict=True)})

    got = read_all([o["output_url"] for o in outputs], output_policy)
    out_images = []
    for o in outputs:
        data = got.get(o["output_url"])
        if not isinstance(data, bytes):
            raise ValueError(f"augmented image {o['id']} cannot be read back from {o['output_url']}: {data}")
        out_images.append(to_tensor(fit_to_resolution(decode_image(data), resolution)))
    if out_images:
        s = realism_scores(reference, realism_features(torch.stack(out_images), vgg))
        scores.update({o["id"]: float(v) for o, v in zip(outputs, s, strict=True)})

    ops = [(o["id"], o["op"].split("/", 1)[-1]) for o in outputs]
    dropped = gate_rows(scores, ops, min_realism)
    by_op: dict[str, list[float]] = {}
    for i, op in ops:
        by_op.setdefault(op, []).append(scores[i])
    orig_scores = [scores[ref_rows[j].id] for j in orig_pos]
    medians = {"original": round(_median(orig_scores), 4)} if orig_scores else {}
    medians.update({op: round(_median(v), 4) for op, v in sorted(by_op.items())})
    info = {"feature": REALISM_FEATURE, "k": k, "min_realism": min_realism,
            "reference_images": reference.size, "reference_originals": n_orig,
            "reference_extra": reference.size - n_orig, "scored": len(scores), "dropped": len(dropped),
            "median_by_op": medians, "dropped_rows": dropped, "not_scored": None}
    return RealismGate(scores, dropped, info)
