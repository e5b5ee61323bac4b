"""``i2s reconstruct --align --paste-back`` through the Prefect flow (tiny schedule, demo model)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from i2score.data.align import FaceAlignment, quad_mask

pytestmark = pytest.mark.usefixtures("prefect_api")


def _table(path: Path) -> list[dict]:
    return pq.read_table(io.BytesIO(path.read_bytes())).to_pylist()


def test_the_reconstruct_flow_aligns_pastes_back_and_reports_no_face(tmp_path):
    from i2score.flows.cli import app

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.LANCZOS).save(photos / "astro.png")
    Image.fromarray(data.coffee()).resize((150, 100)).save(photos / "cup.jpg")
    root = tmp_path / "store"
    result = CliRunner().invoke(app, ["reconstruct", str(photos), "--root", str(root), "--schedule", "2+2",
                                      "--device", "cpu", "--align", "--paste-back"])
    assert result.exit_code == 1, result.output  # the cup is a failed row: exit 1, the face is done
    run = next((root / "runs").iterdir())
    errors = _table(run / "errors.parquet")
    assert [(e["id"], e["reason_code"]) for e in errors] == [("cup", "no_face")]
    (out,) = _table(run / "manifest.parquet")
    lineage = json.loads(out["alignment"])
    assert lineage["faces"] >= 1 and lineage["size"] == 64
    photo = np.asarray(Image.open(photos / "astro.png").convert("RGB"))
    pasted = np.asarray(Image.open(run / "outputs" / "astro.png").convert("RGB"))
    inside = quad_mask(FaceAlignment.from_dict(lineage))
    np.testing.assert_array_equal(pasted[~inside], photo[~inside])
    assert Image.open(run / "outputs" / "astro.aligned.png").size == (64, 64)
    assert "no_face" in (run / "report.md").read_text()
