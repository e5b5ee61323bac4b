"""The augment flow's realism gate: a ``realism`` column in ``dataset.csv``, and ``min_realism``
leaving out exactly the augmented rows below it (reported in the summary, images kept)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from i2score.data import storage

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"
SCHEDULE = "3+3/2+2"

pytestmark = pytest.mark.usefixtures("prefect_api")


def _manifest(tmp_path, n: int):
    """An augment manifest of the first ``n`` demo portraits, inside its own folder."""
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for i in range(n):
        (folder / "images" / f"h{i}.png").write_bytes((DEMO / "images" / f"heldout-0{i}.png").read_bytes())
    manifest = folder / "aug.csv"
    manifest.write_text("id,image\n" + "".join(f"h{i},images/h{i}.png\n" for i in range(n)))
    return manifest


def _dataset(result: dict) -> list[dict[str, str]]:
    text = storage.read_bytes(storage.join(result["run_url"], "dataset.csv")).decode()
    return list(csv.DictReader(io.StringIO(text)))


def test_augment_scores_every_row_and_min_realism_drops_exactly_those_below(tmp_path):
    from i2score.flows.augment import augment

    manifest = _manifest(tmp_path, 3)
    root = str(tmp_path / "store")
    # Three images: k = 2 (the default k = 3 needs four reference images).
    common: dict[str, Any] = {"root": root, "n_per_image": 1, "ops": ["noise", "jitter"], "schedule": SCHEDULE,
                              "device": "cpu", "realism_k": 2}

    first = augment(str(manifest), min_realism=0.0, **common)
    assert first["failed"] == 0 and first["realism_dropped"] == 0 and first["realism_not_scored"] is None
    rows = _dataset(first)
    assert [r["augmentation"] for r in rows].count("original") == 3 and len(rows) == 6
    scores = {r["id"]: float(r["realism"]) for r in rows}  # every row, the originals too
    assert all(s > 0 for s in scores.values())
    augmented = sorted((scores[r["id"]], r["id"]) for r in rows if r["augmentation"] != "original")
    assert augmented[0][0] < augmented[1][0]
    threshold = (augmented[0][0] + augmented[1][0]) / 2
    lowest = augmented[0][1]

    second = augment(str(manifest), min_realism=threshold, **common)
    assert second["run_id"] != first["run_id"]  # the threshold is part of the job
    assert second["failed"] == 0 and second["realism_dropped"] == 1
    kept = _dataset(second)
    assert {r["id"] for r in kept} == set(scores) - {lowest}
    # The same images against the same reference: the same scores.
    assert {r["id"]: float(r["realism"]) for r in kept} == pytest.approx({i: scores[i] for i in scores if i != lowest})
    summary = json.loads(storage.read_bytes(second["summary"]))
    gate = summary["realism"]
    assert gate["dropped"] == 1 and gate["min_realism"] == threshold and gate["k"] == 2
    (dropped,) = gate["dropped_rows"]
    assert dropped["id"] == lowest and dropped["reason_code"] == "below_min_realism"
    assert dropped["realism"] == pytest.approx(scores[lowest], abs=1e-6)
    assert summary["rows"]["failed"] == 0
    # The dropped image stays a valid file of the run; only dataset.csv leaves it out.
    image = next(r["image"] for r in rows if r["id"] == lowest)
    assert storage.exists(storage.join(second["run_url"], image))
    assert "## Realism gate" in storage.read_bytes(storage.join(second["run_url"], "report.md")).decode()


def test_too_few_reference_images_leave_the_column_empty_and_say_so(tmp_path):
    from i2score.flows.augment import augment

    manifest = _manifest(tmp_path, 2)
    res = augment(str(manifest), root=str(tmp_path / "store"), n_per_image=1, ops=["jitter"], schedule=SCHEDULE,
                  device="cpu")
    assert res["failed"] == 0 and "needs at least k + 1 = 4 reference images" in res["realism_not_scored"]
    assert [r["realism"] for r in _dataset(res)] == [""] * 4
    with pytest.raises(ValueError, match="min_realism 0.5 needs realism scores"):
        augment(str(manifest), root=str(tmp_path / "store"), n_per_image=1, ops=["jitter"], schedule=SCHEDULE,
                device="cpu", min_realism=0.5)


def test_realism_heldout_renders_demo_portraits_past_the_sample_data_once(tmp_path):
    import typer
    from PIL import Image

    from i2score.demo.portraits import render_portrait
    from i2score.flows.cli import _heldout_reference

    folder = _heldout_reference(str(tmp_path / "root"), None, 2)
    files = sorted(p.name for p in Path(folder).iterdir())
    assert files == ["heldout-1000016.png", "heldout-1000017.png"]
    assert (Image.open(Path(folder) / files[0]).tobytes() == Image.fromarray(render_portrait(1_000_016, 64)).tobytes())
    mtime = (Path(folder) / files[0]).stat().st_mtime_ns
    assert _heldout_reference(str(tmp_path / "root"), "demo-faces-64", 2) == folder
    assert (Path(folder) / files[0]).stat().st_mtime_ns == mtime  # not rewritten
    with pytest.raises(typer.BadParameter, match="only for the demo models"):
        _heldout_reference(str(tmp_path / "root"), "ffhq-1024", 2)
